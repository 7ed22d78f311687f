"""Normalisation kernels: BatchNorm (over the batch, per channel) and LayerNorm (per position).

Both cache the normalised input and the inverse standard deviation, so backward
is the closed form below and never recomputes statistics.
Knows numpy and `core`; knows nothing of devices, time or composite layers.
"""
from __future__ import annotations

import numpy as np

from simdl.nn.core import DTYPE, Cache, Cost, Layer, Shape, nbytes, scratch
from simdl.nn.dense import kernel_cost, numel

# FLOPs per value (a sqrt or divide counts as 1). Forward: mean (1), centre (1),
# square + sum (2), scale (1), affine (2) = 7, plus 1 spare for the statistics.
NORM_FWD_FLOPS = 8
# Backward: dgamma, dbeta sums (3), dxhat (1), the two sums and the combination (6).
NORM_BWD_FLOPS = 10


def _norm_backward(dy: np.ndarray, xhat: np.ndarray, inv: np.ndarray, gamma: np.ndarray,
                   axes: tuple[int, ...]) -> np.ndarray:
    """d(input) of xhat = (x - mean) * inv, with mean and var taken over `axes`.

    With g = dy * gamma and m values per statistic (Ioffe & Szegedy 2015, sec. 3):
    dx = inv / m * (m g - sum(g) - xhat * sum(g * xhat)).
    One new array (dx) and one scratch array, both reused in place: each value sees
    the same operations in the same order as the formula written out, so the bits
    are the formula's.
    """
    m = numel(tuple(dy.shape[a] for a in axes))
    g = dy * gamma
    s1 = g.sum(axis=axes, keepdims=True)
    t = np.multiply(g, xhat, out=scratch("norm", g.shape, np.result_type(g, xhat)))
    s2 = t.sum(axis=axes, keepdims=True)
    if g.dtype != np.result_type(g, xhat, inv):        # a wider xhat or inv: no in place
        return (inv * (1.0 / m)) * (m * g - s1 - xhat * s2)
    np.multiply(xhat, s2, out=t)
    np.multiply(g, m, out=g)
    np.subtract(g, s1, out=g)
    np.subtract(g, t, out=g)
    return np.multiply(g, inv * (1.0 / m), out=g)


def _product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a * b into scratch: a temporary that only feeds a sum."""
    return np.multiply(a, b, out=scratch("norm", np.broadcast_shapes(a.shape, b.shape),
                                         np.result_type(a, b)))


def _square(a: np.ndarray) -> np.ndarray:
    return _product(a, a)


def _affine(xhat: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """xhat * gamma + beta in one new array."""
    y = np.multiply(xhat, gamma)
    return np.add(y, beta, out=y)


class BatchNorm(Layer):
    """Batch normalisation over axis 1 (Ioffe & Szegedy 2015). (N, C, H, W) or (N, C), same out.

    train=True: normalise by this batch's mean and (biased) variance and move the
    running stats: r <- (1 - momentum) r + momentum * batch_stat, with the
    unbiased variance n/(n-1) as PyTorch does. train=False: use the running
    stats, which are then constants (backward is a per-channel scale).
    """

    def __init__(self, c: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.c, self.momentum, self.eps = c, momentum, eps
        self.params["gamma"] = np.ones(c, DTYPE)
        self.params["beta"] = np.zeros(c, DTYPE)
        self.buffers["mean"] = np.zeros(c, DTYPE)
        self.buffers["var"] = np.ones(c, DTYPE)
        self._init_grads()

    def _bshape(self, x: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Broadcast shape of per-channel values and the reduction axes for this input."""
        if x.ndim < 2 or x.shape[1] != self.c:
            raise ValueError(f"BatchNorm: input {x.shape} has no axis 1 of size {self.c}")
        return (1, self.c) + (1,) * (x.ndim - 2), (0, *range(2, x.ndim))

    def forward(self, x: np.ndarray, train: bool = False) -> tuple[np.ndarray, Cache]:
        shape, axes = self._bshape(x)
        if train:
            mean = x.mean(axis=axes, keepdims=True)
            xhat = x - mean                      # centred now, normalised below in place
            var = _square(xhat).mean(axis=axes, keepdims=True)
            inv = 1.0 / np.sqrt(var + self.eps)
            m, mom = x.size // self.c, self.momentum
            self.buffers["mean"] *= 1.0 - mom
            self.buffers["mean"] += mom * mean.reshape(-1)
            self.buffers["var"] *= 1.0 - mom
            self.buffers["var"] += (mom * m / max(m - 1, 1)) * var.reshape(-1)
        else:
            inv = 1.0 / np.sqrt(self.buffers["var"].reshape(shape) + self.eps)
            xhat = x - self.buffers["mean"].reshape(shape)
        np.multiply(xhat, inv, out=xhat)
        y = _affine(xhat, self.params["gamma"].reshape(shape), self.params["beta"].reshape(shape))
        return y, (xhat, inv, train)

    def backward(self, dy: np.ndarray, cache: Cache) -> np.ndarray:
        xhat, inv, train = cache
        shape, axes = self._bshape(dy)
        gamma = self.params["gamma"].reshape(shape)
        self.grads["gamma"] += _product(dy, xhat).sum(axis=axes)
        self.grads["beta"] += dy.sum(axis=axes)
        if train:
            return _norm_backward(dy, xhat, inv, gamma, axes)
        return dy * (gamma * inv)                # running stats are constants here

    def cost(self, in_shape: Shape) -> Cost:
        """Train-mode counts (the larger); inference folds to one multiply-add per value."""
        n = numel(in_shape)
        saved = nbytes(in_shape) + nbytes((self.c,))          # xhat and one inv per channel
        return kernel_cost(in_shape, in_shape, NORM_FWD_FLOPS * n, NORM_BWD_FLOPS * n,
                           self.params, self.buffers, saved_bytes=saved)


class LayerNorm(Layer):
    """Layer normalisation over the last axis (Ba et al. 2016). (..., d) -> (..., d).

    Same statistics in training and inference; no running state.
    """

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.d, self.eps = d, eps
        self.params["gamma"] = np.ones(d, DTYPE)
        self.params["beta"] = np.zeros(d, DTYPE)
        self._init_grads()

    def forward(self, x: np.ndarray, train: bool = False) -> tuple[np.ndarray, Cache]:
        mean = x.mean(axis=-1, keepdims=True)
        xhat = x - mean
        var = _square(xhat).mean(axis=-1, keepdims=True)
        inv = 1.0 / np.sqrt(var + self.eps)
        np.multiply(xhat, inv, out=xhat)
        return _affine(xhat, self.params["gamma"], self.params["beta"]), (xhat, inv)

    def backward(self, dy: np.ndarray, cache: Cache) -> np.ndarray:
        xhat, inv = cache
        lead = tuple(range(dy.ndim - 1))
        self.grads["gamma"] += _product(dy, xhat).sum(axis=lead)
        self.grads["beta"] += dy.sum(axis=lead)
        return _norm_backward(dy, xhat, inv, self.params["gamma"], (dy.ndim - 1,))

    def cost(self, in_shape: Shape) -> Cost:
        n = numel(in_shape)
        saved = nbytes(in_shape) + nbytes(in_shape[:-1])   # xhat and one inv per position
        return kernel_cost(in_shape, in_shape, NORM_FWD_FLOPS * n, NORM_BWD_FLOPS * n,
                           self.params, saved_bytes=saved)
