"""Gradient compression with real numerics and exact bytes on the wire.

A worker's `Compressor` turns a gradient (or model delta) into a `Packet`: the
arrays that travel, their exact byte count, and nothing else. With error
feedback it keeps, per parameter name, what compression has not yet sent and
adds it to the next gradient. Knows arrays and names; nothing of layers,
devices, networks or time (the simulator charges `Packet.nbytes` to a link).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from simdl.errors import SimdlError
from simdl.nn.formats import dequantize_int8, quantize_int8

__all__ = ["Packet", "Compressor", "KINDS", "make", "wire_bytes", "decompress", "topk_count"]

Wire = tuple[np.ndarray, ...]
F16_MAX = float(np.finfo(np.float16).max)   # 65504


@dataclass(frozen=True, eq=False)   # eq=False: arrays have no truth value; compare fields
class Packet:
    """One compressed tensor as it travels.

    `data` holds exactly the arrays put on the wire (read-only) and `nbytes` is
    the sum of their sizes. `kind` and `shape` are not counted: both ends know
    them from the parameter's name and the plan. An empty tensor sends nothing.
    """

    kind: str
    shape: tuple[int, ...]
    nbytes: int
    data: tuple


def topk_count(size: int, ratio: float) -> int:
    """k = max(1, round(ratio * size)), rounding half up; at most `size` (0 for an empty tensor)."""
    return min(size, max(1, int(math.floor(ratio * size + 0.5))))


# -- one codec per kind: encode (flat float32 -> wire arrays), decode, bytes from the size --
def _enc_none(x: np.ndarray, ratio: float) -> Wire:
    return (x.copy(),)


def _dec_none(data: Wire, size: int) -> np.ndarray:
    return data[0].copy()


def _enc_fp16(x: np.ndarray, ratio: float) -> Wire:
    # Saturate instead of overflowing to inf, so error feedback can carry the excess.
    return (np.clip(x, -F16_MAX, F16_MAX).astype(np.float16),)


def _dec_fp16(data: Wire, size: int) -> np.ndarray:
    return data[0].astype(np.float32)


def _enc_int8(x: np.ndarray, ratio: float) -> Wire:
    # One range for the whole tensor: compress.py's affine scheme with the tensor as one "row".
    q, scale, zero = quantize_int8(x.reshape(1, -1), 0)
    return q.reshape(-1), scale, zero


def _dec_int8(data: Wire, size: int) -> np.ndarray:
    q, scale, zero = data
    return dequantize_int8(q.reshape(1, -1), scale, zero, 0).reshape(-1)


def _enc_topk(x: np.ndarray, ratio: float) -> Wire:
    k = topk_count(x.size, ratio)
    idx = np.argpartition(np.abs(x), x.size - k)[x.size - k:]   # the k largest |x|, O(size)
    idx.sort()                                                  # ascending: a canonical packet
    return x[idx], idx.astype(np.int32)


def _dec_topk(data: Wire, size: int) -> np.ndarray:
    values, idx = data
    out = np.zeros(size, np.float32)
    out[idx] = values
    return out


def _enc_sign(x: np.ndarray, ratio: float) -> Wire:
    # Scaled sign (Karimireddy et al. 2019, alg. 1): ||x||_1 / d * sign(x). Bit 1 means
    # +scale; 1 bit has no zero, so x == 0 is sent as +scale (error feedback repays it).
    scale = np.array([np.abs(x).mean(dtype=np.float64)], np.float32)
    return np.packbits(x >= 0), scale


def _dec_sign(data: Wire, size: int) -> np.ndarray:
    bits, scale = data
    return np.where(np.unpackbits(bits, count=size).astype(bool), scale[0], -scale[0])


@dataclass(frozen=True)
class Codec:
    """One wire format: a kind is one Codec plus one CODECS entry (KINDS follows the dict).

    Every format's size depends on the element count alone (int8 is per tensor, not
    per row, for that reason), so `wire_bytes` can plan without data or shapes.
    """

    encode: Callable[[np.ndarray, float], Wire]
    decode: Callable[[Wire, int], np.ndarray]
    nbytes: Callable[[int, float], int]   # size >= 1, ratio -> bytes, without the data


CODECS: dict[str, Codec] = {
    # float32 values as they are: 4 B per element.
    "none": Codec(_enc_none, _dec_none, lambda n, r: 4 * n),
    # IEEE half, round to nearest, saturating at +-65504: 2 B per element.
    "fp16": Codec(_enc_fp16, _dec_fp16, lambda n, r: 2 * n),
    # Per-tensor affine int8 (Jacob et al. 2018; formats._affine): 1 B per element,
    # plus one float32 scale and one int8 zero-point: n + 5 B.
    "int8": Codec(_enc_int8, _dec_int8, lambda n, r: n + 5),
    # Top-k by magnitude (Aji & Heafield 2017; Lin et al. 2018): k float32 values and
    # k int32 indices: 8k B.
    "topk": Codec(_enc_topk, _dec_topk, lambda n, r: 8 * topk_count(n, r)),
    # 1-bit sign (Seide et al. 2014), packed 8 per byte, plus one float32 scale = mean |x|
    # (Karimireddy et al. 2019): ceil(n / 8) + 4 B.
    "sign": Codec(_enc_sign, _dec_sign, lambda n, r: (n + 7) // 8 + 4),
}
KINDS: tuple[str, ...] = tuple(CODECS)


def _check(kind: str, ratio: float) -> None:
    if kind not in CODECS:
        raise SimdlError("gradcomp.kind", kind, f"choose one of: {', '.join(KINDS)}")
    if not (isinstance(ratio, (int, float, np.floating)) and 0.0 < ratio < 1.0):
        raise SimdlError("gradcomp.ratio", ratio, "a fraction in (0, 1)")


def wire_bytes(kind: str, size: int, ratio: float = 0.01) -> int:
    """Bytes of a `size`-element tensor sent as `kind`: `Packet.nbytes`, without the data."""
    _check(kind, ratio)
    if int(size) != size or size < 0:
        raise SimdlError("gradcomp.size", size, "an integer >= 0")
    return CODECS[kind].nbytes(int(size), float(ratio)) if size else 0


def decompress(p: Packet) -> np.ndarray:
    """What a receiver rebuilds from `p`: a new float32 array of `p.shape`."""
    if not p.data:
        return np.zeros(p.shape, np.float32)
    return CODECS[p.kind].decode(p.data, math.prod(p.shape)).reshape(p.shape)


class Compressor:
    """One per worker: holds its error-feedback residuals by parameter name.

    With error feedback (Stich et al. 2018; Karimireddy et al. 2019) a call sends
    c = C(g + e[name]) and keeps e[name] = (g + e[name]) - D(c), so after t calls
    sum(g) - sum(D(c)) = e[name] exactly: nothing is lost, only delayed. Residuals
    are float32, one per name (memory: `state_bytes`). "none" is exact and keeps none.
    """

    def __init__(self, kind: str = "none", ratio: float = 0.01, error_feedback: bool = True):
        _check(kind, ratio)
        self.kind, self.ratio, self.error_feedback = kind, float(ratio), bool(error_feedback)
        self.residuals: dict[str, np.ndarray] = {}
        self._codec = CODECS[kind]

    def _send(self, name: str, g: np.ndarray) -> tuple[Packet, np.ndarray]:
        """The packet for gradient `g` of `name` and what the receiver decodes from it (flat)."""
        g = np.asarray(g, np.float32)
        shape = tuple(int(d) for d in g.shape)
        if g.size == 0:
            return Packet(self.kind, shape, 0, ()), np.zeros(0, np.float32)
        x = g.reshape(-1)
        feedback = self.error_feedback and self.kind != "none"
        if feedback and name in self.residuals:
            e = self.residuals[name]
            if e.size != x.size:
                raise SimdlError(f"compressor.{name}", shape,
                                 f"this name had {e.size} values before; one name, one shape")
            x = x + e
        data = self._codec.encode(x, self.ratio)
        for a in data:
            a.setflags(write=False)   # one packet may reach several receivers
        sent = self._codec.decode(data, x.size)
        if feedback:
            self.residuals[name] = x - sent
        return Packet(self.kind, shape, sum(int(a.nbytes) for a in data), data), sent

    def compress(self, name: str, g: np.ndarray) -> Packet:
        """Compress gradient `g` of parameter `name` (with EF: g plus what is still owed)."""
        return self._send(name, g)[0]

    def decompress(self, p: Packet) -> np.ndarray:
        """float32, the gradient's shape (needs no residual: any worker can decode any packet)."""
        return decompress(p)

    def roundtrip(self, name: str, g: np.ndarray) -> tuple[np.ndarray, int]:
        """(what a receiver sees, bytes sent): compress then decompress, decoding once."""
        p, sent = self._send(name, g)
        return sent.reshape(p.shape), p.nbytes

    def state_bytes(self) -> int:
        """Bytes held by the error-feedback residuals now."""
        return sum(int(e.nbytes) for e in self.residuals.values())

    def __repr__(self) -> str:
        ratio = f", ratio={self.ratio}" if self.kind == "topk" else ""
        return f"Compressor({self.kind!r}{ratio}, error_feedback={self.error_feedback})"


def make(kind: str, ratio: float = 0.01, error_feedback: bool = True) -> Compressor:
    """A fresh compressor (no residuals) for one worker; SimdlError for an unknown kind or ratio."""
    return Compressor(kind, ratio, error_feedback)
