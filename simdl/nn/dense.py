"""Per-position kernels: Linear, activations, Flatten, Embedding, softmax and the loss.

Also the two helpers every kernel module shares: seeded initialisers and
`kernel_cost`, the one place the byte conventions of `Cost` are applied.
Knows numpy and `core`; knows nothing of devices, time or composite layers.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from simdl.nn.core import DTYPE, Cache, Cost, Layer, Shape, nbytes


def normal(rng: np.random.Generator, shape: Shape, std: float) -> np.ndarray:
    """float32 N(0, std^2) drawn from `rng` (never the global numpy state)."""
    x = rng.standard_normal(shape, dtype=DTYPE)
    x *= DTYPE(std)  # in place: the same products without a second array
    return x


def kernel_cost(in_shape: Shape, out_shape: Shape, fwd_flops: float, bwd_flops: float,
                params: dict[str, np.ndarray] | None = None,
                buffers: dict[str, np.ndarray] | None = None,
                saved_bytes: int = 0, tokens: bool = False) -> Cost:
    """A Cost with the byte conventions shared by all kernels (float32, 4 B per value).

    forward reads the input and the parameters and writes the output; backward
    reads dy, the saved activations and the parameters, writes dx and
    read-modify-writes each gradient (it accumulates). Buffers are stored and
    read by forward but have no gradient. `tokens`: the input is int64 token
    ids (8 B each) and gets no gradient.
    """
    p_bytes = sum(nbytes(v.shape) for v in (params or {}).values())
    b_bytes = sum(nbytes(v.shape) for v in (buffers or {}).values())
    i_bytes, o_bytes = nbytes(in_shape, 8 if tokens else 4), nbytes(out_shape)
    dx_bytes = 0 if tokens else i_bytes
    return Cost(
        out_shape=tuple(int(d) for d in out_shape),
        fwd_flops=float(fwd_flops), bwd_flops=float(bwd_flops),
        param_bytes=p_bytes + b_bytes, in_bytes=i_bytes, out_bytes=o_bytes,
        fwd_bytes=i_bytes + p_bytes + b_bytes + o_bytes,
        bwd_bytes=o_bytes + saved_bytes + dx_bytes + 3 * p_bytes,  # W read, dW read+written
        saved_bytes=int(saved_bytes),
    )


def numel(shape: Shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _bitmask(keep: np.ndarray, ints: np.dtype) -> np.ndarray:
    """A new array of `ints`: all bits set where `keep`, none elsewhere (keep's layout)."""
    mask = keep.view(np.int8).astype(ints)
    return np.negative(mask, out=mask)


def kept(keep: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """np.where(keep, dy, 0), bit for bit (+0.0 where not kept; NaNs kept as they are).

    An integer AND of dy's bits with a mask of all ones or all zeros: numpy's
    masked select branches on every value and runs about 15x slower on a random
    mask. A non-contiguous `keep` takes np.where itself, so the result's memory
    layout is always np.where's.
    """
    if not keep.flags.c_contiguous:
        return np.where(keep, dy, 0)
    ints = np.dtype(f"i{dy.itemsize}")
    mask = _bitmask(keep, ints)
    np.bitwise_and(dy.view(ints), mask, out=mask)
    return mask.view(dy.dtype)


def put(dst: np.ndarray, take: np.ndarray, src: np.ndarray) -> None:
    """dst[take] = src[take] in place (C-contiguous dst of src's dtype), without a branch
    per value: dst ^= (dst ^ src) & mask."""
    ints = np.dtype(f"i{dst.itemsize}")
    bits = dst.view(ints)
    diff = np.bitwise_xor(bits, src.view(ints))
    np.bitwise_and(diff, _bitmask(take, ints), out=diff)
    np.bitwise_xor(bits, diff, out=bits)


class Linear(Layer):
    """Fully connected, y = x @ W + b.  x: (..., n_in) -> y: (..., n_out).

    Leading axes are flattened into one GEMM ((N, n_in) and (N, T, n_in) alike).
    W is He-normal (std sqrt(2 / n_in), He et al. 2015); b starts at zero.
    """

    def __init__(self, n_in: int, n_out: int, rng: np.random.Generator, bias: bool = True):
        super().__init__()
        self.n_in, self.n_out = n_in, n_out
        self.params["W"] = normal(rng, (n_in, n_out), math.sqrt(2.0 / n_in))
        if bias:
            self.params["b"] = np.zeros(n_out, DTYPE)
        self._init_grads()

    def forward(self, x: np.ndarray, train: bool = False) -> tuple[np.ndarray, Cache]:
        x2 = x.reshape(-1, self.n_in)            # (M, n_in), a view when x is contiguous
        y = x2 @ self.params["W"]                # (M, n_out)
        if "b" in self.params:
            y += self.params["b"]                # in place: no second output array
        return y.reshape(*x.shape[:-1], self.n_out), x

    def backward(self, dy: np.ndarray, cache: Cache) -> np.ndarray:
        dy2 = self._param_grads(dy, cache)
        return (dy2 @ self.params["W"].T).reshape(cache.shape)

    def backward_params(self, dy: np.ndarray, cache: Cache) -> None:
        self._param_grads(dy, cache)

    def _param_grads(self, dy: np.ndarray, cache: Cache) -> np.ndarray:
        x2 = cache.reshape(-1, self.n_in)
        dy2 = dy.reshape(-1, self.n_out)
        self.grads["W"] += x2.T @ dy2            # (n_in, M) @ (M, n_out)
        if "b" in self.params:
            self.grads["b"] += dy2.sum(axis=0)
        return dy2

    def cost(self, in_shape: Shape) -> Cost:
        m = numel(in_shape[:-1])
        out = (*in_shape[:-1], self.n_out)
        fwd = 2 * m * self.n_in * self.n_out     # the GEMM; the bias add is bytes, not FLOPs
        return kernel_cost(in_shape, out, fwd, 2 * fwd, self.params, saved_bytes=nbytes(in_shape))


class ReLU(Layer):
    """max(x, 0). Caches its output: dx = dy where y > 0. 1 FLOP per value each way."""

    def forward(self, x: np.ndarray, train: bool = False) -> tuple[np.ndarray, Cache]:
        y = np.maximum(x, 0)
        return y, y

    def backward(self, dy: np.ndarray, cache: Cache) -> np.ndarray:
        return kept(cache > 0, dy)

    def cost(self, in_shape: Shape) -> Cost:
        n = numel(in_shape)
        return kernel_cost(in_shape, in_shape, n, n, saved_bytes=nbytes(in_shape))


class ReLU6(Layer):
    """min(max(x, 0), 6) (MobileNetV2's activation). Caches its output; 2 FLOPs per value."""

    def forward(self, x: np.ndarray, train: bool = False) -> tuple[np.ndarray, Cache]:
        y = np.clip(x, 0, 6)
        return y, y

    def backward(self, dy: np.ndarray, cache: Cache) -> np.ndarray:
        return kept((cache > 0) & (cache < 6), dy)

    def cost(self, in_shape: Shape) -> Cost:
        n = numel(in_shape)
        return kernel_cost(in_shape, in_shape, 2 * n, 2 * n, saved_bytes=nbytes(in_shape))


class GELU(Layer):
    """GELU, tanh approximation (Hendrycks & Gimpel 2016, as in GPT-2):

    y = 0.5 x (1 + tanh(u)),  u = c (x + 0.044715 x^3),  c = sqrt(2/pi).
    dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3 * 0.044715 x^2),  t = tanh(u).
    Caches x. About 8 FLOPs per value forward (tanh counted as 1), 12 backward.
    """

    _C = math.sqrt(2.0 / math.pi)  # a Python float: keeps float32 arrays float32 (NEP 50)
    _A = 0.044715

    def forward(self, x: np.ndarray, train: bool = False) -> tuple[np.ndarray, Cache]:
        t = np.tanh(self._C * (x + self._A * x * x * x))
        return 0.5 * x * (1.0 + t), x

    def backward(self, dy: np.ndarray, cache: Cache) -> np.ndarray:
        x = cache
        t = np.tanh(self._C * (x + self._A * x * x * x))
        dudx = self._C * (1.0 + 3.0 * self._A * x * x)
        return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dudx)

    def cost(self, in_shape: Shape) -> Cost:
        n = numel(in_shape)
        return kernel_cost(in_shape, in_shape, 8 * n, 12 * n, saved_bytes=nbytes(in_shape))


class Flatten(Layer):
    """(N, ...) -> (N, prod(...)). A reshape: no FLOPs; caches only the input shape."""

    def forward(self, x: np.ndarray, train: bool = False) -> tuple[np.ndarray, Cache]:
        return x.reshape(x.shape[0], -1), x.shape

    def backward(self, dy: np.ndarray, cache: Cache) -> np.ndarray:
        return dy.reshape(cache)

    def cost(self, in_shape: Shape) -> Cost:
        return kernel_cost(in_shape, (in_shape[0], numel(in_shape[1:])), 0, 0)


class Embedding(Layer):
    """Token lookup, plus learned positions when `max_len` is given (GPT-2 layout).

    tokens: (N, T) int -> (N, T, d);  y[n, t] = E[tokens[n, t]] + P[t].
    E and P are N(0, 0.02^2) as in GPT-2. backward returns None: integer tokens
    have no gradient; a row of E used several times gets the sum (np.add.at).
    """

    def __init__(self, vocab: int, d: int, rng: np.random.Generator, max_len: int | None = None):
        super().__init__()
        self.vocab, self.d, self.max_len = vocab, d, max_len
        self.params["E"] = normal(rng, (vocab, d), 0.02)
        if max_len is not None:
            self.params["P"] = normal(rng, (max_len, d), 0.02)
        self._init_grads()

    def forward(self, x: np.ndarray, train: bool = False) -> tuple[np.ndarray, Cache]:
        if not np.issubdtype(x.dtype, np.integer):
            raise TypeError(f"Embedding takes integer tokens, got {x.dtype}")
        t = x.shape[-1]
        if self.max_len is not None and t > self.max_len:
            raise ValueError(f"Embedding: sequence length {t} exceeds max_len {self.max_len}")
        y = self.params["E"][x]                  # (N, T, d), a gather (always a copy)
        if "P" in self.params:
            y += self.params["P"][:t]
        return y, x

    def backward(self, dy: np.ndarray, cache: Cache) -> None:
        # Sum this call's rows per distinct token first, then add each row once, so
        # the grads of two micro-batches add up the same in either order.
        used, where = np.unique(cache.reshape(-1), return_inverse=True)
        rows = np.zeros((used.size, self.d), dy.dtype)
        np.add.at(rows, where, dy.reshape(-1, self.d))
        self.grads["E"][used] += rows
        if "P" in self.params:
            t = cache.shape[-1]
            self.grads["P"][:t] += dy.reshape(-1, t, self.d).sum(axis=0)
        return None

    def cost(self, in_shape: Shape) -> Cost:
        out = (*in_shape, self.d)
        n = numel(out)
        adds = n if self.max_len is not None else 0
        c = kernel_cost(in_shape, out, adds, n + adds, self.params,
                        saved_bytes=nbytes(in_shape, 8), tokens=True)
        # Only the gathered rows of E (and of dE) are touched, not the whole table.
        return replace(c, fwd_bytes=c.in_bytes + 2 * c.out_bytes,
                       bwd_bytes=c.in_bytes + 3 * c.out_bytes)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """exp(x) / sum(exp(x)) along `axis`, shifted by the max so exp never overflows."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


class SoftmaxCrossEntropy:
    """Mean cross-entropy of softmax(logits) against integer labels.

    logits (N, C) with labels (N,), or (N, T, C) with labels (N, T). Labels < 0
    are unlabelled positions: they add nothing and do not count in the mean.
    dlogits = (softmax(logits) - onehot(labels)) / n_labelled.
    """

    def forward(self, logits: np.ndarray, labels: np.ndarray) -> tuple[float, Cache]:
        c = logits.shape[-1]
        z = logits.reshape(-1, c)
        y = np.asarray(labels).reshape(-1)
        if y.shape[0] != z.shape[0]:
            raise ValueError(f"labels {np.shape(labels)} do not match logits {logits.shape}")
        mask = y >= 0
        count = max(int(mask.sum()), 1)
        z = z - z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z).sum(axis=1))                  # log-sum-exp of shifted logits
        yi = np.where(mask, y, 0)
        nll = lse - z[np.arange(z.shape[0]), yi]             # -log softmax at the label
        loss = float(np.sum(nll * mask) / count)
        probs = np.exp(z - lse[:, None])
        return loss, (probs, yi, mask, count, logits.shape)

    def backward(self, cache: Cache) -> np.ndarray:
        probs, yi, mask, count, shape = cache
        d = probs.copy()
        d[np.arange(d.shape[0]), yi] -= 1
        d *= (mask / count).astype(d.dtype)[:, None]
        return d.reshape(shape)

    def cost(self, in_shape: Shape) -> Cost:
        """About 5 FLOPs per logit forward (max, shift, exp, sum, prob), 2 backward."""
        n = numel(in_shape)
        return kernel_cost(in_shape, (), 5 * n, 2 * n, saved_bytes=nbytes(in_shape))
