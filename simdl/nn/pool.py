"""Pooling on NCHW tensors: MaxPool, AvgPool (k x k windows) and GlobalAvgPool.

Windows are strided views of the input (`conv.windows`), never a k*k-fold copy;
MaxPool keeps only each output's winning offset for its gradient. Knows numpy and
`core`; knows nothing of devices, time or composite layers.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from simdl.nn.conv import out_size, windows
from simdl.nn.core import Cache, Cost, Layer, Shape, nbytes
from simdl.nn.dense import kernel_cost, numel, put


class _Pool(Layer):
    """Shared window geometry of MaxPool and AvgPool: k x k windows, stride defaults to k."""

    def __init__(self, k: int, stride: int | None = None):
        super().__init__()
        self.k, self.stride = k, stride or k

    def _out(self, shape: Shape) -> tuple[int, int]:
        oh = out_size(shape[2], self.k, self.stride, 0)
        ow = out_size(shape[3], self.k, self.stride, 0)
        if oh < 1 or ow < 1:
            raise ValueError(f"{type(self).__name__}: input {tuple(shape[2:])} is smaller "
                             f"than the {self.k}x{self.k} window")
        return oh, ow

    def _scatter(self, part: Callable[[int], np.ndarray], shape: Shape,
                 dtype: np.dtype) -> np.ndarray:
        """Adjoint of the windows: add part(r) (N, C, OH, OW), for each offset r = i k + j
        in order, back where window offset (i, j) was read, into zeros (N, C, H, W)."""
        dx = np.zeros(shape, dtype)
        for r, view in enumerate(self._offsets(dx)):
            view += part(r)
        return dx

    def _offsets(self, x: np.ndarray) -> list[np.ndarray]:
        """x's strided views (N, C, OH, OW), one per window offset (i, j) in row-major order."""
        k, s = self.k, self.stride
        oh, ow = self._out(x.shape)
        return [x[:, :, i:i + s * oh:s, j:j + s * ow:s] for i in range(k) for j in range(k)]


class MaxPool(_Pool):
    """Max over k x k windows. (N, C, H, W) -> (N, C, OH, OW), OH = (H - k) // stride + 1.

    Caches the winning offset per output in the smallest unsigned dtype that
    holds k*k offsets (uint8 up to 16x16 windows); the gradient goes to that one
    input (the first maximum on ties, like argmax).
    """

    def _arg_dtype(self) -> np.dtype:
        """The narrowest unsigned dtype holding offsets 0 .. k*k - 1: uint8, uint16, uint32."""
        return np.min_scalar_type(self.k * self.k - 1)

    def forward(self, x: np.ndarray, train: bool = False) -> tuple[np.ndarray, Cache]:
        # argmax over the window, offset by offset on strided views (no k*k-fold copy):
        # a later offset wins only if strictly larger, or NaN over a number (the first
        # NaN wins, as in argmax). The value is copied, never recomputed.
        views = self._offsets(x)
        y = views[0].copy()
        arg = np.zeros(y.shape, self._arg_dtype())
        for r, v in enumerate(views[1:], 1):
            take = v > y
            if x.dtype.kind == "f":
                take |= np.isnan(v) & ~np.isnan(y)
            put(y, take, v)
            np.putmask(arg, take, r)
        return y, (arg, x.shape)

    def backward(self, dy: np.ndarray, cache: Cache) -> np.ndarray:
        arg, shape = cache
        return self._scatter(lambda r: (arg == r) * dy, shape, dy.dtype)

    def cost(self, in_shape: Shape) -> Cost:
        out = (*in_shape[:2], *self._out(in_shape))
        m = numel(out)
        return kernel_cost(in_shape, out, m * self.k * self.k, m * self.k * self.k,
                           saved_bytes=nbytes(out, self._arg_dtype().itemsize))


class AvgPool(_Pool):
    """Mean over k x k windows. (N, C, H, W) -> (N, C, OH, OW); caches only the shape."""

    def forward(self, x: np.ndarray, train: bool = False) -> tuple[np.ndarray, Cache]:
        oh, ow = self._out(x.shape)
        y = windows(x, self.k, self.stride, oh, ow).mean(axis=(2, 3))
        return y, x.shape

    def backward(self, dy: np.ndarray, cache: Cache) -> np.ndarray:
        d = dy * (1.0 / (self.k * self.k))
        return self._scatter(lambda r: d, cache, dy.dtype)

    def cost(self, in_shape: Shape) -> Cost:
        out = (*in_shape[:2], *self._out(in_shape))
        m = numel(out)
        return kernel_cost(in_shape, out, m * self.k * self.k, m * self.k * self.k)


class GlobalAvgPool(Layer):
    """Mean over H and W: (N, C, H, W) -> (N, C). 1 FLOP per input value each way."""

    def forward(self, x: np.ndarray, train: bool = False) -> tuple[np.ndarray, Cache]:
        return x.mean(axis=(2, 3)), x.shape

    def backward(self, dy: np.ndarray, cache: Cache) -> np.ndarray:
        h, w = cache[2:]
        return np.broadcast_to((dy * (1.0 / (h * w)))[:, :, None, None], cache).copy()

    def cost(self, in_shape: Shape) -> Cost:
        n = numel(in_shape)
        return kernel_cost(in_shape, in_shape[:2], n, n)
