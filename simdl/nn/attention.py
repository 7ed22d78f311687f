"""Multi-head self-attention: the transformer's token-mixing kernel.

Heads are contiguous column blocks of Wq/Wk/Wv and row blocks of Wo, so a
tensor-parallel plan can cut the layer by heads without reshuffling weights.
Knows numpy and `core`; knows nothing of devices, time or composite layers.
"""
from __future__ import annotations

import math

import numpy as np

from simdl.nn.core import DTYPE, Cache, Cost, Layer, Shape, nbytes
from simdl.nn.dense import kernel_cost, normal

SOFTMAX_FWD_FLOPS = 5   # per score: max, subtract, exp (as 1), sum, divide
SOFTMAX_BWD_FLOPS = 4   # per score: dP * P, row sum, subtract, multiply by P


def _softmax_rows(s: np.ndarray) -> np.ndarray:
    """Stable softmax over the last axis, in place on `s` (a fresh scores array)."""
    s -= s.max(axis=-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    return s


class SelfAttention(Layer):
    """Scaled dot-product multi-head self-attention (Vaswani et al. 2017). (N, T, d) -> (N, T, d).

    q, k, v = x Wq + bq, x Wk + bk, x Wv + bv, split into h heads of dh = d / h;
    per head P = softmax(q k^T / sqrt(dh)) (future positions masked when
    causal), then y = concat_heads(P v) Wo + bo. Weights N(0, 1/d) (LeCun), biases 0.
    The arithmetic holds for any h heads of width dh (inner width h dh) and an
    optional bo, which is what a tensor-parallel member's share of the heads is.
    """

    def __init__(self, d: int, n_heads: int, rng: np.random.Generator, causal: bool = False):
        super().__init__()
        if d % n_heads:
            raise ValueError(f"SelfAttention: n_heads={n_heads} must divide d={d}")
        self.d, self.n_heads, self.dh, self.causal = d, n_heads, d // n_heads, causal
        std = math.sqrt(1.0 / d)
        for name in ("q", "k", "v", "o"):
            self.params["W" + name] = normal(rng, (d, d), std)
        for name in ("q", "k", "v", "o"):
            self.params["b" + name] = np.zeros(d, DTYPE)
        self._init_grads()

    def forward(self, x: np.ndarray, train: bool = False) -> tuple[np.ndarray, Cache]:
        n, t, d = x.shape
        h, dh, p = self.n_heads, self.dh, self.params
        x2 = x.reshape(n * t, d)
        # One GEMM for q, k and v: (N*T, d) @ (d, 3hd); columns are [q heads | k heads | v heads].
        w = np.concatenate([p["Wq"], p["Wk"], p["Wv"]], axis=1)
        qkv = x2 @ w
        qkv += np.concatenate([p["bq"], p["bk"], p["bv"]])
        q, k, v = qkv.reshape(n, t, 3, h, dh).transpose(2, 0, 3, 1, 4)   # each (N, h, T, dh), views
        q *= 1.0 / math.sqrt(dh)             # scale q once instead of the T x T scores
        s = q @ k.transpose(0, 1, 3, 2)      # (N, h, T, T)
        if self.causal:                      # position i may not look at j > i
            s += np.triu(np.full((t, t), -np.inf, s.dtype), 1)
        a = _softmax_rows(s)
        ctx = (a @ v).transpose(0, 2, 1, 3).reshape(n * t, h * dh)  # heads back side by side
        y = ctx @ p["Wo"]
        if "bo" in p:
            y += p["bo"]
        return y.reshape(n, t, d), (x2, q, k, v, a, ctx)

    def backward(self, dy: np.ndarray, cache: Cache) -> np.ndarray:
        x2, q, k, v, a, ctx = cache
        n, h, t, dh = q.shape
        d, hd = x2.shape[1], h * dh
        p, g = self.params, self.grads
        dy2 = dy.reshape(n * t, d)
        g["Wo"] += ctx.T @ dy2
        if "bo" in p:
            g["bo"] += dy2.sum(axis=0)
        dctx = (dy2 @ p["Wo"].T).reshape(n, t, h, dh).transpose(0, 2, 1, 3)
        da = dctx @ v.transpose(0, 1, 3, 2)                       # (N, h, T, T)
        dqkv = np.empty((n, t, 3, h, dh), dy.dtype)
        dqkv[:, :, 2] = (a.transpose(0, 1, 3, 2) @ dctx).transpose(0, 2, 1, 3)
        # softmax backward: ds = P * (dP - rowsum(dP * P)); masked entries have P = 0.
        ds = a * (da - (da * a).sum(axis=-1, keepdims=True))
        # q holds q / sqrt(dh), so d(raw q) = (ds @ k) / sqrt(dh) and dk = ds^T @ (scaled q).
        dqkv[:, :, 0] = ((ds @ k) * (1.0 / math.sqrt(dh))).transpose(0, 2, 1, 3)
        dqkv[:, :, 1] = (ds.transpose(0, 1, 3, 2) @ q).transpose(0, 2, 1, 3)
        dqkv2 = dqkv.reshape(n * t, 3 * hd)
        dw = x2.T @ dqkv2                                         # (d, 3hd)
        db = dqkv2.sum(axis=0)
        for i, name in enumerate("qkv"):
            g["W" + name] += dw[:, i * hd:(i + 1) * hd]
            g["b" + name] += db[i * hd:(i + 1) * hd]
        w = np.concatenate([p["Wq"], p["Wk"], p["Wv"]], axis=1)
        return (dqkv2 @ w.T).reshape(n, t, d)

    def cost(self, in_shape: Shape) -> Cost:
        """FLOPs with M = N*T tokens and inner width hd = h dh (= d for the whole layer;
        biases and the q scaling are not counted):

        q, k, v and output projections: 4 GEMMs of (M, d) @ (d, hd) = 8 M d hd;
        scores q k^T and weighted sum P v: 2 * 2 N h T^2 dh = 4 N T^2 hd;
        softmax: 5 per score, 5 N h T^2 (causal still computes the full T x T).
        Backward: each GEMM twice (16 M d hd + 8 N T^2 hd) plus 4 N h T^2 for softmax.
        Every term is linear in h, so members holding shares of the heads sum to the layer.
        """
        n, t, d = in_shape
        h = self.n_heads
        hd, m = h * self.dh, n * t
        gemm = 8 * m * d * hd + 4 * n * t * t * hd
        scores = n * h * t * t
        fwd = gemm + SOFTMAX_FWD_FLOPS * scores
        bwd = 2 * gemm + SOFTMAX_BWD_FLOPS * scores
        # Kept: x (M x d), q, k, v and the merged context (M x hd each) and P (N h T T).
        saved = nbytes((m, d)) + nbytes((4, m, hd)) + nbytes((n, h, t, t))
        return kernel_cost(in_shape, in_shape, fwd, bwd, self.params, saved_bytes=saved)
