"""How compressed weights are stored and computed, as plain arrays: int8 affine
quantization per output channel, float16, magnitude pruning (stored as CSR when that is
smaller) and 2:4 pruning (NVIDIA's compressed format: the kept half and 2 bits of
position each), and the formats LLM runtimes store weights in (bf16 and llama.cpp's
Q8_0, Q4_0 and Q4_K blocks, `encode` / `decode`). `stored_bytes` is the one storage
rule. Knows arrays only.
"""
from __future__ import annotations

import math

import numpy as np

from simdl.nn.core import Shape
from simdl.nn.dense import numel

DTYPES = ("fp32", "fp16", "int8")
#: Storage formats of weights, beside the compute dtypes: bf16 and llama.cpp's blocks.
ENCODED = ("bf16", "q8_0", "q4_0", "q4_k")
WEIGHT_FORMATS = DTYPES + ENCODED
#: unstructured: the smallest |w| of each tensor; 2:4: 2 of every 4 along the input axis.
PATTERNS = ("unstructured", "2:4")
STORED = {"fp32": np.float32, "fp16": np.float16, "int8": np.int8}
WIDTH = {dtype: np.dtype(t).itemsize for dtype, t in STORED.items()}   # bytes per value
INDEX_BYTES = 4          # CSR column indices and row pointers are int32
META_BITS = 2            # 2:4 metadata: a kept value's position in its group of 4
QMIN, QMAX = -128, 127   # int8
# Weights per block and bytes per block as stored (ggml/src/ggml-common.h of llama.cpp:
# block_q8_0 = fp16 d + 32 int8; block_q4_0 = fp16 d + 16 bytes of nibbles; block_q4_K =
# fp16 d + fp16 dmin + 12 bytes of 6-bit sub-block scales and mins + 128 bytes of nibbles).
BLOCK = {"bf16": (1, 2), "q8_0": (32, 34), "q4_0": (32, 18), "q4_k": (256, 144)}
#: Bits a weight takes as stored: the closed forms (8.5, 4.5 and 4.5 for the blocks).
BITS_PER_WEIGHT = {"fp32": 32.0, "fp16": 16.0, "int8": 8.0,
                   **{f: 8.0 * b / n for f, (n, b) in BLOCK.items()}}
# FLOPs per input value to quantize a layer's input on the fly: the range (min and
# max, 2) and scale-and-round (2) for int8; one conversion for fp16.
ACT_FLOPS = {"fp32": 0, "fp16": 1, "int8": 4}


def _rows(w: np.ndarray, axis: int) -> np.ndarray:
    """w with its output-channel `axis` first, flattened to (channels, weights per channel)."""
    return np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)


def _unrows(m: np.ndarray, shape: Shape, axis: int) -> np.ndarray:
    """Inverse of `_rows`: (channels, rest) back to `shape`, C-contiguous."""
    moved = (shape[axis], *(d for i, d in enumerate(shape) if i != axis))
    return np.ascontiguousarray(np.moveaxis(m.reshape(moved), 0, axis))


def _affine(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric int8 quantization of each row of m: (q int8, scale float32, zero int8).

    Jacob et al. 2018, sec. 2.1: r = S (q - Z), with the range [min(r, 0), max(r, 0)]
    spread over all 256 levels (S = (hi - lo) / 255) and Z = round(-128 - lo / S),
    an integer, so r = 0 is exact (pruned zeros stay zeros); q = clip(round(r / S) + Z).
    With Z rounded, the top and bottom of the range land at most half a level
    outside [-128, 127], so the error is at most S / 2 everywhere (clipped or not).
    Asymmetric rather than symmetric (Z = 0, S = max|r| / 127, TFLite's weight
    choice): a lopsided channel keeps all 256 levels, up to half the step; the
    Z_w * sum(x) term it costs an integer kernel is absent here (we dequantize)
    and within the roofline's noise.
    """
    lo = np.minimum(m.min(axis=1), 0.0).astype(np.float64)
    hi = np.maximum(m.max(axis=1), 0.0).astype(np.float64)
    scale = ((hi - lo) / (QMAX - QMIN)).astype(np.float32)
    scale[scale == 0] = 1.0                  # an all-zero row: q = Z everywhere, any scale
    s = scale.astype(np.float64)[:, None]
    zero = np.clip(np.round(QMIN - lo[:, None] / s), QMIN, QMAX)
    q = np.clip(np.round(m / s) + zero, QMIN, QMAX)
    return q.astype(np.int8), scale, zero[:, 0].astype(np.int8)


def quantize_int8(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-output-channel affine int8 quantization of w along `axis` (see `_affine`).

    Returns q (w.shape, int8), scale (C,) float32 and zero-point (C,) int8.
    """
    q, scale, zero = _affine(_rows(w, axis))
    return _unrows(q, w.shape, axis), scale, zero


def dequantize_int8(q: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int) -> np.ndarray:
    """W = S (q - Z) per channel, float32. (q - Z) is an exact integer in float32: one rounding."""
    shape = [1] * q.ndim
    shape[axis] = -1
    return (q.astype(np.float32) - zero.astype(np.float32).reshape(shape)) * scale.reshape(shape)


def fake_quant(x: np.ndarray, dtype: str, groups: int) -> np.ndarray:
    """x rounded as `dtype` would store it, then back to x's dtype.

    int8: asymmetric, one dynamic range per group of x.reshape(groups, -1),
    taken from this call's values (a GEMM row: one sample, or one token).
    Ranges never span samples, so a sample's numbers do not depend on the rest
    of its batch (micro-batching and sharding reproduce the single-device run)
    and a token's do not depend on later tokens. fp16: round to nearest float16.
    """
    if dtype == "fp16":
        return x.astype(np.float16).astype(x.dtype)
    if dtype != "int8":
        return x
    m = x.reshape(groups, -1)
    q, scale, zero = _affine(m)
    return ((q.astype(x.dtype) - zero.astype(x.dtype)[:, None])
            * scale.astype(x.dtype)[:, None]).reshape(x.shape)


def stored_bytes(dtype: str, sparsity: str, size: float, kept: float,
                 rows: int | None = None) -> float:
    """Bytes that hold one weight matrix: values and their index, not int8 scales.

    `size` weights, `kept` of them not pruned, `rows` output channels.
    unstructured: dense (size x width), or CSR when that is smaller: per kept weight
      its value and a 4-byte column index, plus a 4-byte pointer per row and one more.
    2:4: NVIDIA's compressed format, always: the kept half's values plus 2 bits
      (META_BITS) per kept value for its position in the group, rounded up to a byte.
    rows=None leaves out the per-matrix terms (row pointers, rounding): the rate of a
    large matrix, which is what a plan estimates with (`simdl.plan.plan.stored_fraction`).
    An `ENCODED` format is stored dense (kept = size): BITS_PER_WEIGHT each, or with `rows`
    whole blocks per row (a short row's last block padded, as `encode` stores it).
    """
    if dtype in ENCODED:
        if rows is None:
            return size * BITS_PER_WEIGHT[dtype] / 8
        n, block = BLOCK[dtype]
        return rows * math.ceil(size / rows / n) * block
    width = WIDTH[dtype]
    if sparsity == "2:4":
        meta = kept * META_BITS / 8
        return kept * width + (meta if rows is None else math.ceil(meta))
    pointers = 0 if rows is None else (rows + 1) * INDEX_BYTES
    return min(size * width, kept * (width + INDEX_BYTES) + pointers)


def magnitude_prune(w: np.ndarray, fraction: float) -> np.ndarray:
    """A copy of w with its round(fraction * w.size) smallest-|w| entries set to zero.

    Ties go by position (a stable sort), so the count is exact and repeatable. The k-th
    smallest |w| is found by partition (linear time, not a sort): every entry below it
    goes, and of those equal to it the first ones until k are gone.
    """
    flat = w.reshape(-1).copy()
    k = int(np.floor(fraction * flat.size + 0.5))
    if not k:
        return flat.reshape(w.shape)
    size = np.abs(flat)
    threshold = np.partition(size, k - 1)[k - 1]
    if np.isnan(threshold):  # NaNs sort last: fewer than k numbers, so NaNs go by position
        flat[np.argsort(size, kind="stable")[:k]] = 0
        return flat.reshape(w.shape)
    below = size < threshold
    ties = np.flatnonzero(size == threshold)[:k - int(np.count_nonzero(below))]
    flat[below] = 0
    flat[ties] = 0
    return flat.reshape(w.shape)


def prune_2_4(w: np.ndarray, axis: int) -> np.ndarray:
    """A copy of w that keeps, in every group of 4 consecutive weights along `axis` (the
    input, reduction axis), the 2 of largest |w| and zeroes the other 2.

    Ties go to the earlier position. w.shape[axis] must be a multiple of 4. This is
    the pattern Ampere's sparse tensor cores multiply at twice the dense rate.
    """
    return np.where(_mask_2_4(w, axis), w, np.zeros((), w.dtype))


def _mask_2_4(w: np.ndarray, axis: int) -> np.ndarray:
    """True where `prune_2_4` keeps a weight of w."""
    groups = np.moveaxis(np.abs(w), axis, -1)
    flat = groups.reshape(-1, 4)
    keep = np.zeros(flat.shape, bool)
    np.put_along_axis(keep, np.argsort(-flat, axis=1, kind="stable")[:, :2], True, axis=1)
    return np.moveaxis(keep.reshape(groups.shape), -1, axis)


def _pack_positions(keep: np.ndarray, axis: int) -> np.ndarray:
    """2:4 metadata: each kept weight's position (0-3) in its group along `axis`,
    META_BITS each, packed into uint8."""
    pos = np.nonzero(np.moveaxis(keep, axis, -1).reshape(-1, 4))[1].astype(np.uint8)
    return np.packbits(np.stack([pos >> 1, pos & 1], axis=-1).reshape(-1))


def _unpack_positions(meta: np.ndarray, shape: Shape, axis: int) -> np.ndarray:
    """Inverse of `_pack_positions`: the keep mask of a weight of `shape`."""
    n = numel(shape) // 4                                      # groups of 4
    bits = np.unpackbits(meta, count=n * 2 * META_BITS).reshape(-1, 2)
    keep = np.zeros((n, 4), bool)
    keep[np.repeat(np.arange(n), 2), (bits[:, 0] << 1) | bits[:, 1]] = True
    moved = (*(d for i, d in enumerate(shape) if i != axis), shape[axis])
    return np.moveaxis(keep.reshape(moved), -1, axis)




# -- LLM runtime formats: bf16 and llama.cpp's blocks ----------------------------------
# Layouts from llama.cpp's ggml/src/ggml-common.h (block_q8_0, block_q4_0, block_q4_K) and
# the nibble and 6-bit scale order of its ggml-quants.c dequantizers (get_scale_min_k4);
# the quantizers are ours: Q8_0 and Q4_0 follow the reference rule (Q4_0: d = the value of
# largest |x| over -8), Q4_K takes each sub-block's range in one pass (llama.cpp searches
# for a better scale and min). Blocks run along each row, the reduction axis of the
# product; a row whose length is not a multiple of the block is padded with zeros.
_F16 = np.dtype("<f2")


def _half_bytes(x: np.ndarray) -> np.ndarray:
    """float16 values as their 2 little-endian bytes each: (..., 2) uint8."""
    return x.astype(_F16)[..., None].view(np.uint8)


def _half(b: np.ndarray) -> np.ndarray:
    """Inverse of `_half_bytes`, as float32."""
    return np.ascontiguousarray(b).view(_F16)[..., 0].astype(np.float32)


def _nibbles(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return (lo.astype(np.uint8) | (hi.astype(np.uint8) << 4)).astype(np.uint8)


def _q8_0(x: np.ndarray) -> np.ndarray:
    d = (np.abs(x).max(axis=-1) / 127.0).astype(_F16)
    inv = np.divide(1.0, d.astype(np.float32), out=np.zeros(d.shape, np.float32), where=d != 0)
    q = np.clip(np.round(x * inv[..., None]), -128, 127).astype(np.int8)
    return np.concatenate([_half_bytes(d), q.view(np.uint8)], axis=-1)


def _q4_0(x: np.ndarray) -> np.ndarray:
    at = np.abs(x).argmax(axis=-1)[..., None]
    d = (np.take_along_axis(x, at, axis=-1)[..., 0] / -8.0).astype(_F16)
    inv = np.divide(1.0, d.astype(np.float32), out=np.zeros(d.shape, np.float32), where=d != 0)
    q = np.clip(np.floor(x * inv[..., None] + 8.5), 0, 15)
    return np.concatenate([_half_bytes(d), _nibbles(q[..., :16], q[..., 16:])], axis=-1)


def _q4_k(x: np.ndarray) -> np.ndarray:
    sub = x.reshape(*x.shape[:-1], 8, 32)
    lo = np.minimum(sub.min(axis=-1), 0.0)
    scale, low = (sub.max(axis=-1) - lo) / 15.0, -lo          # per sub-block, both >= 0
    d = (scale.max(axis=-1) / 63.0).astype(_F16)
    dmin = (low.max(axis=-1) / 63.0).astype(_F16)
    df, dminf = d.astype(np.float32)[..., None], dmin.astype(np.float32)[..., None]
    sc = np.clip(np.round(np.divide(scale, df, out=np.zeros_like(scale), where=df != 0)), 0, 63)
    mn = np.clip(np.round(np.divide(low, dminf, out=np.zeros_like(low), where=dminf != 0)), 0, 63)
    step, offset = (df * sc)[..., None], (dminf * mn)[..., None]
    q = np.clip(np.round(np.divide(sub + offset, step, out=np.zeros_like(sub),
                                   where=step != 0)), 0, 15).reshape(x.shape)
    sc, mn = sc.astype(np.uint8), mn.astype(np.uint8)
    packed = np.concatenate([sc[..., :4] | ((sc[..., 4:] >> 4) << 6),
                             mn[..., :4] | ((mn[..., 4:] >> 4) << 6),
                             (sc[..., 4:] & 0xF) | ((mn[..., 4:] & 0xF) << 4)], axis=-1)
    chunks = q.reshape(*x.shape[:-1], 4, 2, 32)        # 64 weights: low nibbles, then high
    qs = _nibbles(chunks[..., 0, :], chunks[..., 1, :]).reshape(*x.shape[:-1], 128)
    return np.concatenate([_half_bytes(d), _half_bytes(dmin), packed, qs], axis=-1)


def _scales_q4_k(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 8 six-bit scales and mins of each super-block from its 12 bytes."""
    a, b, c = packed[..., 0:4], packed[..., 4:8], packed[..., 8:12]
    sc = np.concatenate([a & 63, (c & 0xF) | ((a >> 6) << 4)], axis=-1)
    mn = np.concatenate([b & 63, (c >> 4) | ((b >> 6) << 4)], axis=-1)
    return sc.astype(np.float32), mn.astype(np.float32)


def encode(fmt: str, rows: np.ndarray) -> np.ndarray:
    """rows (R, K) float32 stored as `fmt`: uint8 (R, blocks x bytes per block)."""
    n, nbytes_ = BLOCK[fmt]
    rows = np.asarray(rows, np.float32)
    r, k = rows.shape
    if fmt == "bf16":                            # round to nearest even on the top 16 bits
        u = rows.view(np.uint32).astype(np.uint64)
        top = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")
        return np.ascontiguousarray(top).view(np.uint8).reshape(r, 2 * k)
    pad = -k % n
    blocks = np.pad(rows, ((0, 0), (0, pad))).reshape(r, -1, n)
    coded = {"q8_0": _q8_0, "q4_0": _q4_0, "q4_k": _q4_k}[fmt](blocks)
    assert coded.shape[-1] == nbytes_, (fmt, coded.shape)
    return coded.reshape(r, -1)


def decode(fmt: str, packed: np.ndarray, k: int) -> np.ndarray:
    """Inverse of `encode`: float32 (R, k) as a runtime computes with them."""
    n, nbytes_ = BLOCK[fmt]
    r = packed.shape[0]
    if fmt == "bf16":
        top = np.ascontiguousarray(packed).view("<u2").astype(np.uint32)
        return (top << 16).view(np.float32).reshape(r, k)
    b = packed.reshape(r, -1, nbytes_)
    if fmt == "q8_0":
        w = _half(b[..., :2])[..., None] * b[..., 2:].view(np.int8).astype(np.float32)
    elif fmt == "q4_0":
        q = np.concatenate([b[..., 2:] & 0xF, b[..., 2:] >> 4], axis=-1).astype(np.float32)
        w = _half(b[..., :2])[..., None] * (q - 8.0)
    else:
        d, dmin = _half(b[..., 0:2])[..., None], _half(b[..., 2:4])[..., None]
        sc, mn = _scales_q4_k(b[..., 4:16])
        qs = b[..., 16:].reshape(r, -1, 4, 32)
        q = np.stack([qs & 0xF, qs >> 4], axis=-2).reshape(r, -1, 8, 32).astype(np.float32)
        w = (d * sc)[..., None] * q - (dmin * mn)[..., None]
    return w.reshape(r, -1)[:, :k].astype(np.float32)
