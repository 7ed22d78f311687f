"""MobileBERT's own kernels (Sun et al. 2020, "MobileBERT: a Compact Task-Agnostic BERT
for Resource-Limited Devices", sec. 3): NoNorm, the trigram input embedding, learned
positions and token types, and the bottlenecked self-attention.

Layouts follow the reference implementation as HuggingFace transformers'
`modeling_mobilebert.py` has it (key_query_shared_bottleneck: queries and keys from
the attention bottleneck, values from the full-width input). Knows numpy and the
kernels; knows nothing of devices or time.
"""
from __future__ import annotations

import math

import numpy as np

from simdl.nn.attention import SOFTMAX_BWD_FLOPS, SOFTMAX_FWD_FLOPS, _softmax_rows
from simdl.nn.compose import Composite, Sequential
from simdl.nn.core import DTYPE, Cache, Cost, Layer, Shape, nbytes
from simdl.nn.dense import Linear, kernel_cost, normal, numel


class NoNorm(Layer):
    """y = x * gamma + beta over the last axis: MobileBERT's replacement for LayerNorm
    (no statistics). 2 FLOPs per value each way (backward: dx and the two grads 3)."""

    def __init__(self, d: int):
        super().__init__()
        self.d = d
        self.params["gamma"] = np.ones(d, DTYPE)
        self.params["beta"] = np.zeros(d, DTYPE)
        self._init_grads()

    def forward(self, x: np.ndarray, train: bool = False) -> tuple[np.ndarray, Cache]:
        y = x * self.params["gamma"]
        y += self.params["beta"]
        return y, x

    def backward(self, dy: np.ndarray, cache: Cache) -> np.ndarray:
        lead = tuple(range(dy.ndim - 1))
        self.grads["gamma"] += (dy * cache).sum(axis=lead)
        self.grads["beta"] += dy.sum(axis=lead)
        return dy * self.params["gamma"]

    def cost(self, in_shape: Shape) -> Cost:
        n = numel(in_shape)
        return kernel_cost(in_shape, in_shape, 2 * n, 3 * n, self.params,
                           saved_bytes=nbytes(in_shape))


class Trigram(Layer):
    """(N, T, e) -> (N, T, 3e): each position's next, own and previous embedding side by
    side (zeros past either end), which MobileBERT projects to the hidden width."""

    def forward(self, x: np.ndarray, train: bool = False) -> tuple[np.ndarray, Cache]:
        n, t, e = x.shape
        y = np.zeros((n, t, 3 * e), x.dtype)
        y[:, :-1, :e] = x[:, 1:]
        y[:, :, e:2 * e] = x
        y[:, 1:, 2 * e:] = x[:, :-1]
        return y, None

    def backward(self, dy: np.ndarray, cache: Cache) -> np.ndarray:
        e = dy.shape[2] // 3
        dx = dy[:, :, e:2 * e].copy()
        dx[:, 1:] += dy[:, :-1, :e]
        dx[:, :-1] += dy[:, 1:, 2 * e:]
        return dx

    def cost(self, in_shape: Shape) -> Cost:
        n = numel(in_shape)
        return kernel_cost(in_shape, (*in_shape[:-1], 3 * in_shape[-1]), 0, 2 * n)


class AddPositions(Layer):
    """x (N, T, d) + P[t] + S[0]: learned positions (max_len of them) and the token type
    table (segment 0 for every token: inputs here are one sequence). N(0, 0.02^2)."""

    def __init__(self, max_len: int, d: int, rng: np.random.Generator, n_types: int = 2):
        super().__init__()
        self.max_len, self.d = max_len, d
        self.params["P"] = normal(rng, (max_len, d), 0.02)
        self.params["S"] = normal(rng, (n_types, d), 0.02)
        self._init_grads()

    def forward(self, x: np.ndarray, train: bool = False) -> tuple[np.ndarray, Cache]:
        t = x.shape[1]
        if t > self.max_len:
            raise ValueError(f"AddPositions: sequence length {t} exceeds max_len {self.max_len}")
        return x + (self.params["P"][:t] + self.params["S"][0]), t

    def backward(self, dy: np.ndarray, cache: Cache) -> np.ndarray:
        per_position = dy.sum(axis=0)
        self.grads["P"][:cache] += per_position
        self.grads["S"][0] += per_position.sum(axis=0)
        return dy

    def cost(self, in_shape: Shape) -> Cost:
        n = numel(in_shape)
        return kernel_cost(in_shape, in_shape, 2 * n, n, self.params)


def attend(q: np.ndarray, k: np.ndarray, v: np.ndarray, heads: int) -> tuple[np.ndarray, Cache]:
    """Bidirectional scaled dot-product attention of (N, T, w) q, k, v over `heads` heads
    of w / heads: ctx = concat_heads(softmax(q k^T / sqrt(dh)) v), (N, T, w)."""
    n, t, w = q.shape
    dh = w // heads

    def split(a: np.ndarray) -> np.ndarray:
        return a.reshape(n, t, heads, dh).transpose(0, 2, 1, 3)

    qh, kh, vh = split(q) * (1.0 / math.sqrt(dh)), split(k), split(v)
    p = _softmax_rows(qh @ kh.transpose(0, 1, 3, 2))
    ctx = (p @ vh).transpose(0, 2, 1, 3).reshape(n, t, w)
    return ctx, (qh, kh, vh, p)


def attend_backward(dctx: np.ndarray, cache: Cache) -> tuple[np.ndarray, ...]:
    """d(q), d(k), d(v) of `attend` from d(ctx)."""
    qh, kh, vh, p = cache
    n, heads, t, dh = qh.shape

    def merge(a: np.ndarray) -> np.ndarray:
        return a.transpose(0, 2, 1, 3).reshape(n, t, heads * dh)

    dc = dctx.reshape(n, t, heads, dh).transpose(0, 2, 1, 3)
    dp = dc @ vh.transpose(0, 1, 3, 2)
    dv = p.transpose(0, 1, 3, 2) @ dc
    ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True))
    dq = (ds @ kh) * (1.0 / math.sqrt(dh))
    dk = ds.transpose(0, 1, 3, 2) @ qh
    return merge(dq), merge(dk), merge(dv)


def attend_cost(n: int, t: int, w: int, heads: int) -> Cost:
    """Scores and the weighted sum, 2 N T^2 w multiply-adds; softmax per score; backward
    four such GEMMs. Keeps q, k, v and the N h T T weights."""
    gemm, scores = 4 * n * t * t * w, n * heads * t * t
    return kernel_cost((n, t, 3 * w), (n, t, w), gemm + SOFTMAX_FWD_FLOPS * scores,
                       2 * gemm + SOFTMAX_BWD_FLOPS * scores,
                       saved_bytes=nbytes((3, n, t, w)) + nbytes((n, heads, t, t)))


class BottleneckAttention(Composite):
    """MobileBERT's attention sub-block, (N, T, hidden) -> (N, T, inner):

    li = NoNorm(h W_in), s = NoNorm(h W_att) (two bottlenecks to `inner`);
    q = s Wq, k = s Wk, v = h Wv; a = NoNorm(attend(q, k, v) Wo + li).
    Children "bottleneck_in", "bottleneck_att", "q", "k", "v", "o", "norm".
    """

    def __init__(self, hidden: int, inner: int, heads: int, rng: np.random.Generator):
        if inner % heads:
            raise ValueError(f"BottleneckAttention: heads={heads} must divide inner={inner}")
        self.heads = heads
        self.parts = {
            "bottleneck_in": Sequential([Linear(hidden, inner, rng), NoNorm(inner)]),
            "bottleneck_att": Sequential([Linear(hidden, inner, rng), NoNorm(inner)]),
            "q": Linear(inner, inner, rng), "k": Linear(inner, inner, rng),
            "v": Linear(hidden, inner, rng), "o": Linear(inner, inner, rng),
            "norm": NoNorm(inner)}
        super().__init__(dict(self.parts))

    def forward(self, x: np.ndarray, train: bool = False) -> tuple[np.ndarray, Cache]:
        c = self.parts
        li, c_in = c["bottleneck_in"].forward(x, train)
        s, c_att = c["bottleneck_att"].forward(x, train)
        q, cq = c["q"].forward(s)
        k, ck = c["k"].forward(s)
        v, cv = c["v"].forward(x)
        ctx, cc = attend(q, k, v, self.heads)
        o, co = c["o"].forward(ctx)
        y, cn = c["norm"].forward(o + li)
        return y, (c_in, c_att, cq, ck, cv, cc, co, cn)

    def backward(self, dy: np.ndarray, cache: Cache) -> np.ndarray:
        c = self.parts
        c_in, c_att, cq, ck, cv, cc, co, cn = cache
        dz = c["norm"].backward(dy, cn)
        dq, dk, dv = attend_backward(c["o"].backward(dz, co), cc)
        ds = c["q"].backward(dq, cq) + c["k"].backward(dk, ck)
        dx = c["bottleneck_att"].backward(ds, c_att) + c["v"].backward(dv, cv)
        return dx + c["bottleneck_in"].backward(dz, c_in)

    def cost(self, in_shape: Shape) -> Cost:
        """Each child at its input, the attention core, the residual add (1 FLOP per value
        each way), summed in the order forward runs them."""
        c = self.parts
        n, t, _ = in_shape
        inner = c["q"].n_in
        narrow = (n, t, inner)
        total = c["bottleneck_in"].cost(in_shape)
        for part in (c["bottleneck_att"].cost(in_shape), c["q"].cost(narrow),
                     c["k"].cost(narrow), c["v"].cost(in_shape),
                     attend_cost(n, t, inner, self.heads), c["o"].cost(narrow),
                     kernel_cost(narrow, narrow, numel(narrow), numel(narrow)),
                     c["norm"].cost(narrow)):
            total = total.then(part)
        return total
