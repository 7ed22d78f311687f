"""The kernels of a Llama-style decoder: RMSNorm, rotary positions, grouped-query
attention with a KV cache, the SwiGLU MLP and a head tied to the embedding.

Each keeps the `core` contract (`forward` / `backward` / `cost`); grouped-query
attention also has `infer(x, caches)`, the inference path that appends to and reads
from one `KVCache` per sequence (see `nn.kv` for the chain-level API).
Knows numpy and `core`; knows nothing of devices, time or composite layers.
"""
from __future__ import annotations

import math

import numpy as np

from simdl.nn.core import DTYPE, Cache, Cost, Layer, Shape, nbytes
from simdl.nn.dense import Embedding, kernel_cost, normal, numel

RMS_FWD_FLOPS = 4     # per value: square, sum, scale by 1/rms, gain
RMS_BWD_FLOPS = 7     # per value: dgain (2), g*dy, the dot with x (2), the combination (2)
ROPE_FLOPS = 3        # per rotated value: two products and a sum
SOFTMAX_FWD_FLOPS = 5  # per score, as in nn.attention
SOFTMAX_BWD_FLOPS = 4
SWIGLU_FWD_FLOPS = 6  # per hidden value: sigmoid (4), a * s, times the up projection
SWIGLU_BWD_FLOPS = 10


class RMSNorm(Layer):
    """y = x / sqrt(mean(x^2) + eps) * gamma over the last axis (Zhang & Sennrich 2019).

    No centring and no shift, as in Llama. Backward with r = 1 / rms and g = dy gamma:
    dx = r g - x r^3 mean(g x).
    """

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.d, self.eps = d, eps
        self.params["gamma"] = np.ones(d, DTYPE)
        self._init_grads()

    def forward(self, x: np.ndarray, train: bool = False) -> tuple[np.ndarray, Cache]:
        r = 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps)
        return x * r * self.params["gamma"], (x, r)

    def backward(self, dy: np.ndarray, cache: Cache) -> np.ndarray:
        x, r = cache
        self.grads["gamma"] += (dy * x * r).reshape(-1, self.d).sum(axis=0)
        g = dy * self.params["gamma"]
        return r * g - x * (r ** 3) * np.mean(g * x, axis=-1, keepdims=True)

    def cost(self, in_shape: Shape) -> Cost:
        n = numel(in_shape)
        saved = nbytes(in_shape) + nbytes(in_shape[:-1])      # x and one 1/rms per position
        return kernel_cost(in_shape, in_shape, RMS_FWD_FLOPS * n, RMS_BWD_FLOPS * n,
                           self.params, saved_bytes=saved)


def rope_angles(positions: np.ndarray, dh: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of the rotary angles, shape (len(positions), dh).

    RoPE (Su et al. 2021) in the layout of Hugging Face's Llama: value i of a head is
    paired with value i + dh/2 and turned by angle pos * theta^(-2i/dh) (Meta's
    interleaved pairs are the same rotation after permuting the q and k columns).
    """
    inv = theta ** (-np.arange(0, dh, 2, dtype=np.float64) / dh)
    ang = np.asarray(positions, np.float64)[:, None] * inv[None, :]
    ang = np.concatenate([ang, ang], axis=1)
    return np.cos(ang), np.sin(ang)


def rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, inverse: bool = False) -> np.ndarray:
    """x (..., T, dh) turned by the angles (T, dh); `inverse` turns back (the transpose,
    which is also the backward of the rotation)."""
    half = x.shape[-1] // 2
    swapped = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos, sin = cos.astype(x.dtype), sin.astype(x.dtype)
    return x * cos - swapped * sin if inverse else x * cos + swapped * sin


class KVCache:
    """One sequence's keys and values for one attention layer, after rotation.

    k, v: (n_kv_heads, length, head_dim). `append` returns the whole cache; the arrays
    grow by concatenation (a runtime preallocates; the numbers are the same).
    """

    def __init__(self, n_kv_heads: int, head_dim: int, dtype: np.dtype = np.dtype(DTYPE)):
        self.k = np.zeros((n_kv_heads, 0, head_dim), dtype)
        self.v = np.zeros((n_kv_heads, 0, head_dim), dtype)

    @property
    def length(self) -> int:
        return int(self.k.shape[1])

    @property
    def nbytes(self) -> int:
        return int(self.k.nbytes + self.v.nbytes)

    def append(self, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.k = np.concatenate([self.k, k.astype(self.k.dtype)], axis=1)
        self.v = np.concatenate([self.v, v.astype(self.v.dtype)], axis=1)
        return self.k, self.v


def _causal_softmax(s: np.ndarray, offset: int) -> np.ndarray:
    """Softmax over the last axis of scores (..., T, S) where query i sits at position
    offset + i and may see keys 0..offset + i. In place."""
    t, length = s.shape[-2:]
    s += np.where(np.arange(length)[None, :] > offset + np.arange(t)[:, None], -np.inf, 0.0
                  ).astype(s.dtype)
    s -= s.max(axis=-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    return s


class GQAttention(Layer):
    """Causal grouped-query self-attention with rotary positions (Ainslie et al. 2023).

    (N, T, d) -> (N, T, d). q = x Wq (h heads), k = x Wk and v = x Wv (kv heads each,
    h % kv == 0); query head j reads kv head j // (h / kv) (Hugging Face's repeat_kv
    order). q and k are rotated (`rope_angles`), P = softmax(q k^T / sqrt(dh)) causal,
    y = concat_heads(P v) Wo. `bias` adds bq, bk, bv (Qwen2); Wo has none. With kv == h
    this is plain multi-head attention. Weights N(0, 1/d).
    """

    def __init__(self, d: int, n_heads: int, n_kv_heads: int, head_dim: int,
                 rng: np.random.Generator, theta: float = 10000.0, bias: bool = False):
        super().__init__()
        if n_heads % n_kv_heads:
            raise ValueError(f"GQAttention: n_kv_heads={n_kv_heads} must divide "
                             f"n_heads={n_heads}")
        if head_dim % 2:
            raise ValueError(f"GQAttention: head_dim={head_dim} must be even (RoPE turns pairs)")
        self.d, self.h, self.kv, self.dh, self.theta = d, n_heads, n_kv_heads, head_dim, theta
        std = math.sqrt(1.0 / d)
        self.params["Wq"] = normal(rng, (d, n_heads * head_dim), std)
        self.params["Wk"] = normal(rng, (d, n_kv_heads * head_dim), std)
        self.params["Wv"] = normal(rng, (d, n_kv_heads * head_dim), std)
        self.params["Wo"] = normal(rng, (n_heads * head_dim, d), math.sqrt(1.0 / (n_heads * head_dim)))
        if bias:
            for name, width in (("bq", n_heads), ("bk", n_kv_heads), ("bv", n_kv_heads)):
                self.params[name] = np.zeros(width * head_dim, DTYPE)
        self._init_grads()

    # -- shared pieces -------------------------------------------------------
    def _project(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """q (N, h, T, dh), k and v (N, kv, T, dh), before rotation."""
        n, t, _ = x.shape
        p, x2 = self.params, x.reshape(n * t, self.d)
        out = []
        for name, heads in (("q", self.h), ("k", self.kv), ("v", self.kv)):
            y = x2 @ p["W" + name]
            if "b" + name in p:
                y += p["b" + name]
            out.append(y.reshape(n, t, heads, self.dh).transpose(0, 2, 1, 3))
        return out[0], out[1], out[2]

    def _attend(self, q: np.ndarray, k: np.ndarray, v: np.ndarray,
                offset: int) -> tuple[np.ndarray, np.ndarray]:
        """q (..., h, T, dh) rotated, k and v (..., kv, S, dh): (context (..., h, T, dh), P)."""
        g = self.h // self.kv
        qg = q.reshape(*q.shape[:-3], self.kv, g, *q.shape[-2:])
        s = (qg @ np.swapaxes(k, -1, -2)[..., None, :, :]) * (1.0 / math.sqrt(self.dh))
        a = _causal_softmax(s, offset)
        return (a @ v[..., None, :, :]).reshape(q.shape), a

    # -- training --------------------------------------------------------------
    def forward(self, x: np.ndarray, train: bool = False) -> tuple[np.ndarray, Cache]:
        n, t, _ = x.shape
        q, k, v = self._project(x)
        cos, sin = rope_angles(np.arange(t), self.dh, self.theta)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        ctx, a = self._attend(q, k, v, 0)
        ctx2 = ctx.transpose(0, 2, 1, 3).reshape(n * t, self.h * self.dh)
        y = (ctx2 @ self.params["Wo"]).reshape(n, t, self.d)
        return y, (x, q, k, v, a, ctx2)

    def backward(self, dy: np.ndarray, cache: Cache) -> np.ndarray:
        x, q, k, v, a, ctx2 = cache
        n, t, d = x.shape
        p, gr, g = self.params, self.grads, self.h // self.kv
        dy2 = dy.reshape(n * t, d)
        gr["Wo"] += ctx2.T @ dy2
        dctx = (dy2 @ p["Wo"].T).reshape(n, t, self.h, self.dh).transpose(0, 2, 1, 3)
        dctx = dctx.reshape(n, self.kv, g, t, self.dh)
        da = dctx @ np.swapaxes(v, -1, -2)[:, :, None]                     # (N, kv, g, T, S)
        dv = (np.swapaxes(a, -1, -2) @ dctx).sum(axis=2)                   # (N, kv, S, dh)
        ds = a * (da - (da * a).sum(axis=-1, keepdims=True)) * (1.0 / math.sqrt(self.dh))
        qg = q.reshape(n, self.kv, g, t, self.dh)
        dq = (ds @ k[:, :, None]).reshape(n, self.h, t, self.dh)
        dk = (np.swapaxes(ds, -1, -2) @ qg).sum(axis=2)
        cos, sin = rope_angles(np.arange(t), self.dh, self.theta)
        dq, dk = rotate(dq, cos, sin, inverse=True), rotate(dk, cos, sin, inverse=True)
        x2, dx = x.reshape(n * t, d), np.zeros((n * t, d), dy.dtype)
        for name, dz in (("q", dq), ("k", dk), ("v", dv)):
            dz2 = dz.transpose(0, 2, 1, 3).reshape(n * t, -1)
            gr["W" + name] += x2.T @ dz2
            if "b" + name in p:
                gr["b" + name] += dz2.sum(axis=0)
            dx += dz2 @ p["W" + name].T
        return dx.reshape(n, t, d)

    # -- inference with a cache -----------------------------------------------
    def new_cache(self, dtype: np.dtype = np.dtype(DTYPE)) -> KVCache:
        return KVCache(self.kv, self.dh, dtype)

    def infer(self, x: np.ndarray, caches: list[KVCache]) -> np.ndarray:
        """x (N, T, d): T new tokens of each of N sequences, sequence i continuing at
        position caches[i].length; their rotated k and v are appended to caches[i]."""
        n, t, _ = x.shape
        if len(caches) != n:
            raise ValueError(f"GQAttention.infer: {len(caches)} caches for {n} sequences")
        q, k, v = self._project(x)
        ctx = np.empty_like(q)
        for i, cache in enumerate(caches):
            past = cache.length
            cos, sin = rope_angles(np.arange(past, past + t), self.dh, self.theta)
            keys, values = cache.append(rotate(k[i], cos, sin), v[i])
            ctx[i] = self._attend(rotate(q[i], cos, sin), keys, values, past)[0]
        ctx2 = ctx.transpose(0, 2, 1, 3).reshape(n * t, self.h * self.dh)
        return (ctx2 @ self.params["Wo"]).reshape(n, t, self.d)

    # -- costs -------------------------------------------------------------------
    def cost(self, in_shape: Shape) -> Cost:
        """Training cost of a whole sequence (no cache): `infer_cost` with past = 0 and no
        cache traffic, plus the backward (every GEMM twice, softmax backward)."""
        n, t, _ = in_shape
        fwd, part = self.flops(n, t, 0)
        # Kept: x, rotated q, k, v and the merged context, and P (N h T T).
        inner = (2 * self.h + 2 * self.kv) * self.dh
        saved = nbytes(in_shape) + nbytes((n, t, inner)) + nbytes((n, self.h, t, t))
        bwd = (2 * (part["proj"] + part["mix"]) + part["rope"]
               + SOFTMAX_BWD_FLOPS * n * self.h * t * t)
        return kernel_cost(in_shape, in_shape, fwd, bwd, self.params, saved_bytes=saved)

    def flops(self, n: int, t: int, past: int) -> tuple[float, dict[str, float]]:
        """Forward FLOPs for T new tokens of N sequences with `past` cached each:
        projections 2 M d (h + 2 kv) dh + 2 M h dh d (M = N T), rotation of q and k,
        scores and weighted sum 2 * 2 N h T S dh and softmax 5 N h T S (S = past + T;
        the masked part of a block of new tokens is computed too)."""
        return attention_flops(n * t, n * t * (past + t), self.d, self.h, self.kv, self.dh)


def attention_flops(rows: int, pairs: int, d: int, h: int, kv: int,
                    dh: int) -> tuple[float, dict[str, float]]:
    """`GQAttention.flops` from the sizes alone, also what `nn.llm_shapes` charges: `rows`
    new tokens (n t), `pairs` (query, key) pairs scored (n t (past + t), or their sum
    over sequences of different lengths)."""
    parts = {"proj": 2.0 * rows * d * (2 * h + 2 * kv) * dh,
             "rope": float(ROPE_FLOPS * rows * (h + kv) * dh),
             "mix": 4.0 * h * pairs * dh,
             "softmax": float(SOFTMAX_FWD_FLOPS * h * pairs)}
    return sum(parts.values()), parts


class SwiGLU(Layer):
    """The gated MLP of Llama (Shazeer 2020): y = (silu(x W1) * (x W3)) W2.

    W1 (gate) and W3 (up) are (d, f), W2 (down) is (f, d); no biases. silu(a) = a s(a),
    silu'(a) = s (1 + a (1 - s)) with s the logistic sigmoid.
    """

    def __init__(self, d: int, hidden: int, rng: np.random.Generator):
        super().__init__()
        self.d, self.f = d, hidden
        self.params["W1"] = normal(rng, (d, hidden), math.sqrt(1.0 / d))
        self.params["W3"] = normal(rng, (d, hidden), math.sqrt(1.0 / d))
        self.params["W2"] = normal(rng, (hidden, d), math.sqrt(1.0 / hidden))
        self._init_grads()

    def forward(self, x: np.ndarray, train: bool = False) -> tuple[np.ndarray, Cache]:
        x2 = x.reshape(-1, self.d)
        a, u = x2 @ self.params["W1"], x2 @ self.params["W3"]
        s = 1.0 / (1.0 + np.exp(-a))
        hid = a * s * u
        return (hid @ self.params["W2"]).reshape(x.shape), (x, a, u, s, hid)

    def backward(self, dy: np.ndarray, cache: Cache) -> np.ndarray:
        x, a, u, s, hid = cache
        p, g = self.params, self.grads
        x2, dy2 = x.reshape(-1, self.d), dy.reshape(-1, self.d)
        g["W2"] += hid.T @ dy2
        dh = dy2 @ p["W2"].T
        da = dh * u * (s * (1.0 + a * (1.0 - s)))
        du = dh * a * s
        g["W1"] += x2.T @ da
        g["W3"] += x2.T @ du
        return (da @ p["W1"].T + du @ p["W3"].T).reshape(x.shape)

    def cost(self, in_shape: Shape) -> Cost:
        m = numel(in_shape[:-1])
        gemm = 6.0 * m * self.d * self.f
        fwd = gemm + SWIGLU_FWD_FLOPS * m * self.f
        bwd = 2 * gemm + SWIGLU_BWD_FLOPS * m * self.f
        saved = nbytes(in_shape) + nbytes((4, m, self.f))
        return kernel_cost(in_shape, in_shape, fwd, bwd, self.params, saved_bytes=saved)


class TiedHead(Layer):
    """Logits from the embedding table itself: y = x E^T (Press & Wolf 2017).

    Holds the `Embedding` layer, not a copy: the table is trained once, under the
    embedding's name, and this layer adds its gradient there. The head's block still
    stores the table, shown as its (untrained) buffer "E": a device running the head
    needs it, so a chain's bytes count a tied table twice (once per block holding it).
    """

    def __init__(self, embedding: Embedding):
        super().__init__()
        self.embedding = embedding

    @property
    def table(self) -> np.ndarray:
        return self.embedding.params["E"]

    @property  # type: ignore[override]
    def buffers(self) -> dict[str, np.ndarray]:
        """A fresh view each time: casting it (astype) leaves the embedding's own table."""
        return {"E": self.table}

    @buffers.setter
    def buffers(self, value: dict[str, np.ndarray]) -> None:
        pass

    def forward(self, x: np.ndarray, train: bool = False) -> tuple[np.ndarray, Cache]:
        return x @ self.table.T, x

    def backward(self, dy: np.ndarray, cache: Cache) -> np.ndarray:
        v, d = self.table.shape
        self.embedding.grads["E"] += dy.reshape(-1, v).T @ cache.reshape(-1, d)
        return dy @ self.table

    def cost(self, in_shape: Shape) -> Cost:
        m = numel(in_shape[:-1])
        v, d = self.table.shape
        fwd = 2.0 * m * d * v
        return kernel_cost(in_shape, (*in_shape[:-1], v), fwd, 2 * fwd, {"E": self.table},
                           saved_bytes=nbytes(in_shape))
