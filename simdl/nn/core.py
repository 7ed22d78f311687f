"""The contract every kernel keeps: explicit caches, grads by name, cost beside the math.

`forward(x, train)` returns `(y, cache)`; `backward(dy, cache)` returns `dx` and
*adds* into `grads[name]`. Nothing about an input hides in the layer, so several
micro-batches can be in flight through one layer at once. `cost(in_shape)` gives
the FLOPs and bytes of one call without running it (timing-only mode).
Knows nothing of devices or time.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

Shape = tuple[int, ...]
Cache = Any
DTYPE = np.float32
ITEMSIZE = 4  # bytes per float32 activation


@dataclass(frozen=True)
class Cost:
    """What one forward (and its backward) of a layer or block costs for one input shape.

    FLOPs count a multiply-add as 2. Bytes are what a roofline needs: the memory
    moved by the kernel (inputs + parameters read, outputs written).
    """

    out_shape: Shape
    fwd_flops: float = 0.0
    bwd_flops: float = 0.0
    param_bytes: int = 0     # parameters (and buffers) stored
    in_bytes: int = 0        # input activation
    out_bytes: int = 0       # output activation
    fwd_bytes: int = 0       # bytes read + written by forward
    bwd_bytes: int = 0       # bytes read + written by backward
    saved_bytes: int = 0     # activations kept from forward for backward
    sparse_flops: float = 0.0  # of fwd_flops: products with pruned weights, the only
    #                            part a unit's sparse mode for their pattern speeds up

    def then(self, nxt: Cost) -> Cost:
        """The cost of running `self` and then `nxt` on its output."""
        return Cost(
            out_shape=nxt.out_shape,
            fwd_flops=self.fwd_flops + nxt.fwd_flops,
            bwd_flops=self.bwd_flops + nxt.bwd_flops,
            param_bytes=self.param_bytes + nxt.param_bytes,
            in_bytes=self.in_bytes,
            out_bytes=nxt.out_bytes,
            fwd_bytes=self.fwd_bytes + nxt.fwd_bytes,
            bwd_bytes=self.bwd_bytes + nxt.bwd_bytes,
            saved_bytes=self.saved_bytes + nxt.saved_bytes,
            sparse_flops=self.sparse_flops + nxt.sparse_flops,
        )

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def nbytes(shape: Shape, itemsize: int = ITEMSIZE) -> int:
    """Bytes of a dense tensor of `shape`."""
    return int(np.prod(shape, dtype=np.int64)) * itemsize


class _Scratch(threading.local):
    """Each thread's work buffers, one flat array per (slot, dtype)."""

    def __init__(self) -> None:
        self.arrays: dict[tuple[str, np.dtype], np.ndarray] = {}


_SCRATCH = _Scratch()


def scratch(slot: str, shape: Shape, dtype: np.dtype) -> np.ndarray:
    """An uninitialised C-contiguous array of `shape` that `slot` reuses from call to call.

    A fresh multi-MiB array pays a page fault per 4 KiB on first touch, which costs
    about as much as the copy that fills it; one buffer per slot, grown on demand, is
    touched once. Its contents last until the next request for the same slot, so a
    kernel never returns one or keeps one in a cache.
    """
    dtype = np.dtype(dtype)
    size = math.prod(shape)  # Python ints: exact, and a tenth of np.prod's call
    buf = _SCRATCH.arrays.get((slot, dtype))
    if buf is None or buf.size < size:
        buf = _SCRATCH.arrays[slot, dtype] = np.empty(size, dtype)
    return buf[:size].reshape(shape)


class Layer:
    """Base of all kernels. Subclasses set `params` and call `_init_grads()`.

    `params` and `grads` map a name to an array; composite layers (a residual
    block) expose their children's arrays under dotted names ("body.0.W") so a
    whole chain has one flat namespace of parameters.
    """

    params: dict[str, np.ndarray]
    grads: dict[str, np.ndarray]
    buffers: dict[str, np.ndarray]  # state that is not trained (BatchNorm running stats)

    def __init__(self) -> None:
        self.params, self.grads, self.buffers = {}, {}, {}

    def _init_grads(self) -> None:
        # np.zeros, not zeros_like: fresh zero pages are mapped when first written, so a
        # model that never trains (inference, timing-only) does not pay for its grads.
        self.grads = {k: np.zeros(v.shape, v.dtype) for k, v in self.params.items()}

    def forward(self, x: np.ndarray, train: bool = False) -> tuple[np.ndarray, Cache]:
        raise NotImplementedError

    def backward(self, dy: np.ndarray, cache: Cache) -> np.ndarray:
        raise NotImplementedError

    def backward_params(self, dy: np.ndarray, cache: Cache) -> None:
        """Only the parameter gradients, for a caller with no use for d(input) (the first
        layer of a model: nothing is upstream). The same bits in `grads` as `backward`;
        layers whose d(input) costs real work (Linear, Conv2d) leave it out."""
        self.backward(dy, cache)

    def cost(self, in_shape: Shape) -> Cost:
        raise NotImplementedError

    def zero_grad(self) -> None:
        for g in self.grads.values():
            g.fill(0)

    def param_bytes(self) -> int:
        return sum(int(p.nbytes) for p in self.params.values()) + sum(
            int(b.nbytes) for b in self.buffers.values())

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}={tuple(v.shape)}" for k, v in self.params.items())
        return f"{type(self).__name__}({shapes})"
