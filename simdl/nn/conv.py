"""Image kernels on NCHW tensors: Conv2d (grouped, depthwise); the pools are `nn.pool`.

Conv2d is im2col + GEMM, run over the batch in chunks so the column buffer
stays cache-sized and is reused; with stride 1 its dx is the same kernel run
on dy (a transposed convolution) instead of a col2im scatter, and depthwise dx
sums its k*k offsets directly; strided dx adds the columns' gradient back one
stride class at a time. Each path sums in the order of the plain formulation,
so every result is the same to the bit (tests/nn/test_exact_kernels.py).
Knows numpy and `core`; knows nothing of devices, time or composite layers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import as_strided

from simdl.nn.core import DTYPE, Cache, Cost, Layer, Shape, nbytes, scratch
from simdl.nn.dense import kernel_cost, normal

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


@dataclass(frozen=True)
class Geometry:
    """One correlation's shapes: C channels in k x k windows, stride s, padding p, g groups.

    Wq is the GEMM's row length: Wp with stride 1 (each GEMM row is then one
    contiguous slab of the padded image, with Wp - OW junk columns per output
    row cropped after the GEMM), OW otherwise. `chunk` samples share a GEMM.
    """

    c: int
    k: int
    s: int
    p: int
    g: int
    h: int
    w: int
    oh: int
    ow: int
    wp: int
    wq: int
    chunk: int

    @staticmethod
    def of(shape: Shape, k: int, s: int, p: int, g: int) -> Geometry:
        n, c, h, w = shape
        oh, ow = out_size(h, k, s, p), out_size(w, k, s, p)
        if oh < 1 or ow < 1:
            raise ValueError(f"Conv2d: input {h}x{w} is smaller than kernel {k} with padding {p}")
        wp = w + 2 * p
        wq = wp if s == 1 else ow
        # Samples per chunk: enough GEMM columns to be fat, few enough to stay in cache.
        per_sample = oh * wq
        chunk = max(COL_BUDGET // (c * k * k * per_sample), -(-MIN_GEMM_COLS // per_sample))
        return Geometry(c, k, s, p, g, h, w, oh, ow, wp, wq, max(1, min(n, chunk)))

    def scratch(self, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        """Buffers every chunk reuses: padded images (zero, + a spare zero row), columns."""
        pad = scratch("pad", (self.chunk, self.c, self.h + 2 * self.p + 1, self.wp), dtype)
        pad.fill(0)
        return pad, scratch("cols", (self.c * self.k * self.k * self.chunk * self.oh * self.wq,),
                            dtype)

    def columns(self, x: np.ndarray, pad: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """im2col of a chunk x (m, C, H, W) -> (g, C/g*k*k, m*OH*Wq), one copy into `cols`."""
        m = x.shape[0]
        p, k, s = self.p, self.k, self.s
        pad = pad[:m]
        pad[:, :, p:p + self.h, p:p + self.w] = x        # borders and spare row stay zero
        sm, sc, sh, sw = pad.strides
        # [c, i, j, n, a, b] = pad[n, c, s a + i, s b + j]: rows of the GEMM are (c, i, j).
        win = as_strided(pad, (self.c, k, k, m, self.oh, self.wq),
                         (sc, sh, sw, sm, sh * s, sw * s), writeable=False)
        out = cols[:win.size].reshape(win.shape)
        np.copyto(out, win)
        return out.reshape(self.g, -1, m * self.oh * self.wq)


def pointwise(k: int, stride: int, padding: int) -> bool:
    """A 1x1, stride-1, unpadded conv: one batched GEMM over samples, NCHW in and out, no copy."""
    return k == 1 and stride == 1 and padding == 0


def correlate(x: np.ndarray, w: np.ndarray, stride: int, padding: int, groups: int,
              b: np.ndarray | None = None) -> np.ndarray:
    """Grouped 2-D cross-correlation, x (N, C, H, W) * w (O, C/g, k, k) (+ b) -> (N, O, OH, OW).

    im2col + one GEMM per batch chunk (batched over groups); the output needs
    no transpose when a chunk is one sample.
    """
    n, o, k = x.shape[0], w.shape[0], w.shape[2]
    w3 = w.reshape(groups, o // groups, -1)                  # (g, O/g, C/g*k*k)
    bias = None if b is None else b[:, None, None]
    if pointwise(k, stride, padding):                        # x is already the GEMM operand
        h, wd = x.shape[2:]
        y = np.matmul(w3, x.reshape(n, groups, -1, h * wd)).reshape(n, o, h, wd)
        if bias is not None:
            y += bias
        return y
    geo = Geometry.of(x.shape, k, stride, padding, groups)
    oh, ow, wq = geo.oh, geo.ow, geo.wq
    dtype = np.result_type(x, w)
    y = np.empty((n, o, oh, ow), dtype)
    pad, cols = geo.scratch(dtype)
    for n0 in range(0, n, geo.chunk):
        xc = x[n0:n0 + geo.chunk]
        m = xc.shape[0]
        a = geo.columns(xc, pad, cols)                       # (g, C/g*k*k, m*OH*Wq)
        if m == 1 and wq == ow:                              # GEMM straight into y
            np.matmul(w3, a, out=y[n0].reshape(w3.shape[0], w3.shape[1], oh * ow))
            if bias is not None:
                y[n0] += bias
            continue
        out = np.matmul(w3, a, out=scratch("gemm", (*w3.shape[:2], a.shape[2]), dtype))
        out = out.reshape(o, m * oh * wq)
        if b is not None:
            out += b[:, None]                                # contiguous rows: cheap broadcast
        # (O, m, OH, Wq) -> crop the junk columns and move m first, in one copy.
        y[n0:n0 + m] = out.reshape(o, m, oh, wq)[..., :ow].transpose(1, 0, 2, 3)
    return y


class Conv2d(Layer):
    """2-D convolution (cross-correlation, as in every DL framework), NCHW.

    x: (N, C_in, H, W) -> y: (N, C_out, OH, OW), OH = out_size(H, k, stride, padding).
    W: (C_out, C_in/groups, k, k); output channel o sees input group o // (C_out/groups).
    groups = C_in = C_out is depthwise. W is He-normal over fan-in C_in/groups*k*k.
    Caches only x; backward rebuilds the columns (one copy) rather than keeping
    k*k times the input alive.
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

    def _geometry(self, shape: Shape) -> Geometry:
        if len(shape) != 4 or shape[1] != self.c_in:
            raise ValueError(f"Conv2d: input {tuple(shape)} is not (N, {self.c_in}, H, W)")
        return Geometry.of(shape, self.k, self.stride, self.padding, self.groups)

    def forward(self, x: np.ndarray, train: bool = False) -> tuple[np.ndarray, Cache]:
        self._geometry(x.shape)
        return correlate(x, self.params["W"], self.stride, self.padding, self.groups,
                         self.params.get("b")), x

    def backward(self, dy: np.ndarray, cache: Cache) -> np.ndarray:
        return self._backward(dy, cache, True)

    def backward_params(self, dy: np.ndarray, cache: Cache) -> None:
        self._backward(dy, cache, False)

    def _backward(self, dy: np.ndarray, cache: Cache, need_dx: bool) -> np.ndarray | None:
        x = cache
        wt = self.params["W"]
        g, og, k, p = self.groups, self.c_out // self.groups, self.k, self.padding
        if "b" in self.params:
            self.grads["b"] += dy.sum(axis=(0, 2, 3))
        # With stride 1, dx is a correlation of dy (padded k-1-p) with W flipped in
        # space and its in/out channels swapped per group: the forward kernel again.
        transposed = self.stride == 1 and p <= k - 1
        if not need_dx:  # no col2im inside the dW loop either
            transposed = True
        if pointwise(k, self.stride, p):
            n, hw = x.shape[0], x.shape[2] * x.shape[3]
            x4, dy4 = x.reshape(n, g, -1, hw), dy.reshape(n, g, og, hw)
            dw, dx = np.matmul(dy4, x4.transpose(0, 1, 3, 2)).sum(axis=0), None
        else:
            dw, dx = self._gemm_backward(x, dy, wt.reshape(g, og, -1), transposed)
        self.grads["W"] += dw.reshape(wt.shape)
        if not need_dx:
            return None
        if dx is None and og == 1 and self.c_in == g and k > 1:
            dx = self._transposed_depthwise(dy)
        elif dx is None:
            wf = wt.reshape(g, og, -1, k, k).transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]
            dx = correlate(dy, wf.reshape(self.c_in, og, k, k), 1, k - 1 - p, g)
        return dx

    def _transposed_depthwise(self, dy: np.ndarray) -> np.ndarray:
        """Depthwise dx by the transposed correlation, summed exactly as correlate() sums it.

        There each channel's flipped weights reach numpy's matmul as a negative-stride
        (1, k*k) vector, which numpy does not hand to BLAS: it sums each value itself,
        0 + w_0 y_0 + w_1 y_1 + ..., each product rounded, over the k*k offsets in order.
        This does the same sums, offset by offset over whole rows of the padded dy: no
        im2col and no per-value loop.
        """
        k, c, q = self.k, self.c_in, self.k - 1 - self.padding
        geo = Geometry.of(dy.shape, k, 1, q, c)           # dy's geometry: OH, OW are dx's
        dtype = np.result_type(dy, self.params["W"])
        wf = self.params["W"].reshape(c, k, k)[:, ::-1, ::-1]
        n, h, w, wp = dy.shape[0], geo.oh, geo.ow, geo.wp
        dx = np.empty((n, c, h, w), dtype)
        pad = scratch("pad", (geo.chunk, c, geo.h + 2 * q + 1, wp), dtype)
        pad.fill(0)                                       # borders and spare row stay zero
        acc = scratch("acc", (geo.chunk, c, h * wp), dtype)
        prod = scratch("prod", acc.shape, dtype)
        for n0 in range(0, n, geo.chunk):
            m = min(geo.chunk, n - n0)
            pad[:m, :, q:q + geo.h, q:q + geo.w] = dy[n0:n0 + m]
            rows = pad[:m].reshape(m, c, -1)
            a, t = acc[:m], prod[:m]
            for i in range(k):
                for j in range(k):
                    start = i * wp + j                    # each output row runs Wp wide
                    np.multiply(rows[..., start:start + h * wp], wf[:, i, j, None], out=t)
                    if i == j == 0:
                        np.add(t, 0.0, out=a)             # 0 + the first product
                    else:
                        a += t
            dx[n0:n0 + m] = a.reshape(m, c, h, wp)[..., :w]
        return dx

    def _gemm_backward(self, x: np.ndarray, dy: np.ndarray, w3: np.ndarray,
                       transposed: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """dW = sum over chunks of dy @ columns^T; dx by col2im unless `transposed` covers it."""
        geo = self._geometry(x.shape)
        g, og = w3.shape[:2]
        dtype = np.result_type(x, w3, dy)
        pad, cols = geo.scratch(dtype)
        m_max, oh, ow, wq = geo.chunk, geo.oh, geo.ow, geo.wq
        dwt = np.zeros((g, w3.shape[2], og), dtype)             # dW^T: see below
        dx = None if transposed else np.empty(x.shape, dtype)
        for n0 in range(0, x.shape[0], m_max):
            xc = x[n0:n0 + m_max]
            m = xc.shape[0]
            a = geo.columns(xc, pad, cols)                      # (g, C_in/g*k*k, m*OH*Wq)
            d = scratch("dy", (self.c_out, m, oh, wq), dtype)
            d[..., :ow] = dy[n0:n0 + m].transpose(1, 0, 2, 3)
            d[..., ow:] = 0                                     # junk columns add nothing
            d = d.reshape(g, og, m * oh * wq)
            # dW^T += columns @ dy^T: the same products summed in the same order as
            # dy @ columns^T, with the long side first, which OpenBLAS runs 1.2-1.8x faster.
            dwt += np.matmul(a, d.transpose(0, 2, 1), out=scratch("dw", dwt.shape, dtype))
            if dx is not None:
                self._col2im(geo, w3, d, dx[n0:n0 + m])
        return dwt.transpose(0, 2, 1), dx

    def _col2im(self, geo: Geometry, w3: np.ndarray, d: np.ndarray, dx: np.ndarray) -> None:
        """dx (m, C, H, W) of one chunk from d = dy (g, C_out/g, m*OH*Wq): the columns'
        gradient da = W^T d, then the adjoint of Geometry.columns, in which each kernel
        offset (i, j) adds its slab of da where the columns were read, in (i, j) order
        onto zeros.

        Padded positions are split into s x s classes by their residues mod the stride,
        each class a dense (C, m, U, V) buffer, and da's rows are made V wide, so each
        slab is one contiguous run per channel and sample and every add runs at full
        speed. A run's last V - OW columns spill into the next row (or the spare row);
        they add +0, which changes no sum: every sum starts at +0, so it is never -0.
        (With stride 1, V = Wq and those columns are da's own junk, as in the forward.)
        """
        k, s, p = self.k, self.stride, self.padding
        m, c = dx.shape[:2]
        g, og = w3.shape[:2]
        oh, ow, wq = geo.oh, geo.ow, geo.wq
        u = max(-(-(geo.h + 2 * p) // s), oh + (k - 1) // s) + 1     # class rows + a spare
        v = max(-(-geo.wp // s), ow + (k - 1) // s) if s > 1 else wq  # class columns
        if v != wq:                                       # widen d's rows to V, zero-padded
            dv = scratch("dy_wide", (g * og, m, oh, v), d.dtype)
            dv[..., :ow] = d.reshape(g * og, m, oh, wq)[..., :ow]
            dv[..., ow:] = 0
            d = dv.reshape(g, og, m * oh * v)
        # With one output channel per group (depthwise) this GEMM has K = 1: each value
        # is one rounded product, so a broadcast multiply gives the same values 5x
        # faster (only a zero's sign may differ, which the sums onto +0 never keep).
        da = (np.multiply if og == 1 else np.matmul)(
            w3.transpose(0, 2, 1), d, out=scratch("gemm", (g, w3.shape[2], m * oh * v), d.dtype))
        da = da.reshape(c, k, k, m, oh, v)
        if v != wq:
            da[..., ow:] = 0                              # exactly +0, whatever W holds
        da = da.reshape(c, k, k, m, oh * v)
        classes = scratch("col2im", (s, s, c, m, u, v), da.dtype)
        classes.fill(0)
        runs = classes.reshape(s, s, c, m, u * v)
        for i in range(k):
            for j in range(k):
                start = (i // s) * v + j // s
                runs[i % s, j % s, :, :, start:start + oh * v] += da[:, i, j]
        for ri in range(s):
            h0 = (ri - p) % s                                 # first row of dx in this class
            for rj in range(s):
                w0 = (rj - p) % s
                part = dx[:, :, h0::s, w0::s]
                u0, v0 = (h0 + p) // s, (w0 + p) // s
                part[...] = classes[ri, rj, :, :, u0:u0 + part.shape[2],
                                    v0:v0 + part.shape[3]].transpose(1, 0, 2, 3)

    def cost(self, in_shape: Shape) -> Cost:
        geo = self._geometry(in_shape)
        n = in_shape[0]
        out = (n, self.c_out, geo.oh, geo.ow)
        # One multiply-add (2 FLOPs) per weight per output pixel; backward is dW and dx.
        fwd = 2 * n * self.c_out * (self.c_in // self.groups) * self.k ** 2 * geo.oh * geo.ow
        return kernel_cost(in_shape, out, fwd, 2 * fwd, self.params, saved_bytes=nbytes(in_shape))
