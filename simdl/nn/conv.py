"""Image kernels on NCHW tensors: Conv2d (grouped, depthwise) and the pools.

Conv2d is im2col + GEMM, run over the batch in chunks so the column buffer
stays cache-sized and is reused; the GEMM writes NCHW output directly.
Knows numpy and `core`; knows nothing of devices, time or composite layers.
"""
from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from simdl.nn.core import DTYPE, Cache, Cost, Layer, Shape, nbytes
from simdl.nn.dense import kernel_cost, normal, numel

# Column-buffer size (values) one chunk of the batch may use: ~4 MiB of float32
# stays in the L3 cache between the im2col copy and the GEMM that reads it.
COL_BUDGET = 1 << 20
# Chunks grow to at least this many output pixels so the GEMMs are not skinny.
MIN_GEMM_COLS = 1024


def out_size(size: int, k: int, stride: int, padding: int) -> int:
    """floor((size + 2 padding - k) / stride) + 1: output length along one axis."""
    return (size + 2 * padding - k) // stride + 1


def windows(xp: np.ndarray, k: int, s: int, oh: int, ow: int) -> np.ndarray:
    """A read-only view (N, C, k, k, OH, OW) of xp (N, C, H, W).

    [n, c, i, j, a, b] = xp[n, c, s a + i, s b + j]: no copy is made.
    """
    sn, sc, sh, sw = xp.strides
    return as_strided(xp, (xp.shape[0], xp.shape[1], k, k, oh, ow),
                      (sn, sc, sh, sw, sh * s, sw * s), writeable=False)


class Conv2d(Layer):
    """2-D convolution (cross-correlation, as in every DL framework), NCHW.

    x: (N, C_in, H, W) -> y: (N, C_out, OH, OW), OH = out_size(H, k, stride, padding).
    W: (C_out, C_in/groups, k, k); output channel o sees input group o // (C_out/groups).
    groups = C_in = C_out is depthwise. W is He-normal over fan-in C_in/groups*k*k.
    Caches only x; backward rebuilds the columns (one copy) rather than keeping
    k*k times the input alive.

    Layout: the padded chunk gets one spare zero row per plane. With stride 1
    each GEMM row is then a contiguous slab of the padded image, OH*Wp long
    (Wp - OW junk columns per output row, cropped after the GEMM), so im2col is
    k*k*C memcpy-speed copies instead of k*k*C*OH short ones.
    """

    def __init__(self, c_in: int, c_out: int, k: int, rng: np.random.Generator, stride: int = 1,
                 padding: int = 0, groups: int = 1, bias: bool = True):
        super().__init__()
        if c_in % groups or c_out % groups:
            raise ValueError(f"Conv2d: groups={groups} must divide c_in={c_in} and c_out={c_out}")
        self.c_in, self.c_out, self.k = c_in, c_out, k
        self.stride, self.padding, self.groups = stride, padding, groups
        fan_in = c_in // groups * k * k
        self.params["W"] = normal(rng, (c_out, c_in // groups, k, k), math.sqrt(2.0 / fan_in))
        if bias:
            self.params["b"] = np.zeros(c_out, DTYPE)
        self._init_grads()

    def _plan(self, shape: Shape) -> tuple[int, int, int, int, int]:
        """(OH, OW, Wq, chunk, Wp): Wq is the GEMM's row length (Wp with stride 1, else OW)."""
        _, c, h, w = shape
        if c != self.c_in:
            raise ValueError(f"Conv2d: input has {c} channels, layer expects {self.c_in}")
        oh = out_size(h, self.k, self.stride, self.padding)
        ow = out_size(w, self.k, self.stride, self.padding)
        if oh < 1 or ow < 1:
            raise ValueError(f"Conv2d: input {h}x{w} is smaller than kernel {self.k} "
                             f"with padding {self.padding}")
        wp = w + 2 * self.padding
        wq = wp if self.stride == 1 else ow
        # Samples per chunk: enough GEMM columns to be fat, few enough to stay in cache.
        per_sample = oh * wq
        chunk = max(COL_BUDGET // (c * self.k * self.k * per_sample), -(-MIN_GEMM_COLS // per_sample))
        return oh, ow, wq, max(1, min(shape[0], chunk)), wp

    def _direct(self, m: int) -> bool:
        """A 1x1, stride-1, unpadded conv of one sample: x itself is the GEMM operand."""
        return m == 1 and self.k == 1 and self.stride == 1 and self.padding == 0

    def _columns(self, x: np.ndarray, pad: np.ndarray, cols: np.ndarray, oh: int,
                 wq: int) -> np.ndarray:
        """im2col of a chunk x (m, C, H, W) -> (groups, C/groups*k*k, m*OH*Wq), one copy."""
        m, c, h, w = x.shape
        if self._direct(m):
            return x.reshape(self.groups, -1, h * w)
        p, k, s = self.padding, self.k, self.stride
        pad = pad[:m]
        pad[:, :, p:p + h, p:p + w] = x           # borders and spare row stay zero
        sm, sc, sh, sw = pad.strides
        # [c, i, j, n, a, b] = pad[n, c, s a + i, s b + j]: rows of the GEMM are (c, i, j).
        win = as_strided(pad, (c, k, k, m, oh, wq), (sc, sh, sw, sm, sh * s, sw * s),
                         writeable=False)
        out = cols[:win.size].reshape(win.shape)
        np.copyto(out, win)
        return out.reshape(self.groups, -1, m * oh * wq)

    def _scratch(self, x: np.ndarray, chunk: int, wp: int, wq: int, oh: int,
                 dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        """Per-call buffers reused by every chunk: the padded images and the columns."""
        h = x.shape[2] + 2 * self.padding + 1                   # + the spare zero row
        pad = np.zeros((chunk, self.c_in, h, wp), dtype)
        cols = np.empty(self.c_in * self.k * self.k * chunk * oh * wq, dtype)
        return pad, cols

    def forward(self, x: np.ndarray, train: bool = False) -> tuple[np.ndarray, Cache]:
        n = x.shape[0]
        oh, ow, wq, chunk, wp = self._plan(x.shape)
        wt = self.params["W"]
        g, og = self.groups, self.c_out // self.groups
        w3 = wt.reshape(g, og, -1)                              # (g, C_out/g, C_in/g*k*k)
        dtype = np.result_type(x, wt)
        y = np.empty((n, self.c_out, oh, ow), dtype)
        pad, cols = self._scratch(x, chunk, wp, wq, oh, dtype)
        b = self.params["b"][:, None, None] if "b" in self.params else None
        for n0 in range(0, n, chunk):
            xc = x[n0:n0 + chunk]
            m = xc.shape[0]
            a = self._columns(xc, pad, cols, oh, wq)            # (g, C_in/g*k*k, m*OH*Wq)
            if m == 1 and wq == ow:                             # GEMM straight into y
                np.matmul(w3, a, out=y[n0].reshape(g, og, oh * ow))
                if b is not None:
                    y[n0] += b
                continue
            # (C_out, m, OH, Wq) -> crop junk columns, move m first, add bias: one pass.
            out = np.matmul(w3, a).reshape(self.c_out, m, oh, wq)[..., :ow].transpose(1, 0, 2, 3)
            if b is None:
                y[n0:n0 + m] = out
            else:
                np.add(out, b, out=y[n0:n0 + m])
        return y, x

    def backward(self, dy: np.ndarray, cache: Cache) -> np.ndarray:
        x = cache
        n, _, h, w = x.shape
        oh, ow, wq, chunk, wp = self._plan(x.shape)
        k, s, p = self.k, self.stride, self.padding
        wt = self.params["W"]
        g, og = self.groups, self.c_out // self.groups
        w3t = wt.reshape(g, og, -1).transpose(0, 2, 1)          # (g, C_in/g*k*k, C_out/g)
        dtype = np.result_type(x, wt, dy)
        pad, cols = self._scratch(x, chunk, wp, wq, oh, dtype)
        dyq = np.zeros(self.c_out * chunk * oh * wq, dtype)     # junk columns stay zero
        dw = np.zeros((g, og, w3t.shape[1]), dtype)
        dx = np.empty(x.shape, dtype)
        for n0 in range(0, n, chunk):
            xc = x[n0:n0 + chunk]
            m = xc.shape[0]
            a = self._columns(xc, pad, cols, oh, wq)
            d = dyq[:self.c_out * m * oh * wq].reshape(self.c_out, m, oh, wq)
            d[..., :ow] = dy[n0:n0 + m].transpose(1, 0, 2, 3)
            d = d.reshape(g, og, m * oh * wq)
            dw += d @ a.transpose(0, 2, 1)                      # (g, C_out/g, C_in/g*k*k)
            da = np.matmul(w3t, d).reshape(self.c_in, k, k, m, oh, wq)
            if self._direct(m):
                dx[n0] = da.reshape(x.shape[1:])
                continue
            # col2im: each kernel offset (i, j) adds its slab back where _columns read it.
            dpad = np.zeros((self.c_in, m, h + 2 * p + 1, wp), dtype)
            sc, sm, sh, sw = dpad.strides
            flat = dpad.reshape(-1)
            for i in range(k):
                for j in range(k):
                    view = as_strided(flat[i * wp + j:], (self.c_in, m, oh, wq),
                                      (sc, sm, sh * s, sw * s))
                    view += da[:, i, j]
            dx[n0:n0 + m] = dpad[:, :, p:p + h, p:p + w].transpose(1, 0, 2, 3)
        self.grads["W"] += dw.reshape(wt.shape)
        if "b" in self.params:
            self.grads["b"] += dy.sum(axis=(0, 2, 3))
        return dx

    def cost(self, in_shape: Shape) -> Cost:
        oh, ow = self._plan(in_shape)[:2]
        n = in_shape[0]
        out = (n, self.c_out, oh, ow)
        # One multiply-add (2 FLOPs) per weight per output pixel; backward is dW and dx.
        fwd = 2 * n * self.c_out * (self.c_in // self.groups) * self.k ** 2 * oh * ow
        return kernel_cost(in_shape, out, fwd, 2 * fwd, self.params, saved_bytes=nbytes(in_shape))


class _Pool(Layer):
    """Shared window geometry of MaxPool and AvgPool: k x k windows, stride defaults to k."""

    def __init__(self, k: int, stride: int | None = None):
        super().__init__()
        self.k, self.stride = k, stride or k

    def _out(self, shape: Shape) -> tuple[int, int]:
        oh, ow = out_size(shape[2], self.k, self.stride, 0), out_size(shape[3], self.k, self.stride, 0)
        if oh < 1 or ow < 1:
            raise ValueError(f"{type(self).__name__}: input {shape[2:]} smaller than window {self.k}")
        return oh, ow

    def _scatter(self, d: np.ndarray, shape: Shape, dtype: np.dtype) -> np.ndarray:
        """Adjoint of windows(): add d (N, C, k, k, OH, OW) back into an (N, C, H, W) array."""
        k, s = self.k, self.stride
        oh, ow = d.shape[-2:]
        dx = np.zeros(shape, dtype)
        for i in range(k):
            for j in range(k):
                dx[:, :, i:i + s * oh:s, j:j + s * ow:s] += d[:, :, i, j]
        return dx


class MaxPool(_Pool):
    """Max over k x k windows. (N, C, H, W) -> (N, C, OH, OW), OH = (H - k) // stride + 1.

    Caches the winning offset per output (uint8, k*k <= 256); the gradient goes
    to that one input (the first maximum on ties, like argmax).
    """

    def forward(self, x: np.ndarray, train: bool = False) -> tuple[np.ndarray, Cache]:
        oh, ow = self._out(x.shape)
        n, c = x.shape[:2]
        win = windows(x, self.k, self.stride, oh, ow).reshape(n, c, self.k * self.k, oh, ow)
        arg = win.argmax(axis=2).astype(np.uint8)             # (N, C, OH, OW)
        y = np.take_along_axis(win, arg[:, :, None].astype(np.intp), axis=2)[:, :, 0]
        return y, (arg, x.shape)

    def backward(self, dy: np.ndarray, cache: Cache) -> np.ndarray:
        arg, shape = cache
        kk = self.k * self.k
        onehot = arg[:, :, None] == np.arange(kk, dtype=np.uint8)[None, None, :, None, None]
        d = (onehot * dy[:, :, None]).reshape(*dy.shape[:2], self.k, self.k, *dy.shape[2:])
        return self._scatter(d, shape, dy.dtype)

    def cost(self, in_shape: Shape) -> Cost:
        out = (*in_shape[:2], *self._out(in_shape))
        m = numel(out)
        return kernel_cost(in_shape, out, m * self.k * self.k, m * self.k * self.k,
                           saved_bytes=nbytes(out, 1))


class AvgPool(_Pool):
    """Mean over k x k windows. (N, C, H, W) -> (N, C, OH, OW); caches only the shape."""

    def forward(self, x: np.ndarray, train: bool = False) -> tuple[np.ndarray, Cache]:
        oh, ow = self._out(x.shape)
        y = windows(x, self.k, self.stride, oh, ow).mean(axis=(2, 3))
        return y, x.shape

    def backward(self, dy: np.ndarray, cache: Cache) -> np.ndarray:
        d = dy * (1.0 / (self.k * self.k))
        full = np.broadcast_to(d[:, :, None, None], (*d.shape[:2], self.k, self.k, *d.shape[2:]))
        return self._scatter(full, cache, dy.dtype)

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
