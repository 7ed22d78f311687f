"""Compressed deployment with real numerics: int8/fp16 weight quantization and magnitude pruning.

`deploy(chain, dtype, prune)` returns a deep copy of a trained chain whose
Linear, Conv2d and attention weights are *stored* as a device would hold them
(int8 + per-channel scale and zero-point, float16, or CSR when pruning makes
that smaller) and computed from those arrays, so accuracy changes are measured,
and `param_bytes()` / `cost()` see the stored width. Biases, norms and
embeddings stay float32. Deployed layers are inference-only.
Knows layers and chains; knows nothing of devices or time (the simulator reads
`chain.dtype` for the kernel rate and `chain.density` for sparse kernels).
"""
from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any, Callable, Iterator

import numpy as np

from simdl.errors import SimdlError
from simdl.nn.attention import SelfAttention
from simdl.nn.chain import Block, Chain
from simdl.nn.compose import Composite, Sequential
from simdl.nn.conv import Conv2d
from simdl.nn.core import Cache, Cost, Layer, Shape
from simdl.nn.data import Dataset
from simdl.nn.dense import Linear, numel
from simdl.nn.fit import predict, scores

__all__ = ["DTYPES", "Compressed", "quantize", "prune", "deploy", "density", "accuracy_change",
           "quantize_int8", "dequantize_int8", "fake_quant", "magnitude_prune"]

DTYPES = ("fp32", "fp16", "int8")
STORED = {"fp32": np.float32, "fp16": np.float16, "int8": np.int8}
INDEX_BYTES = 4          # CSR column indices and row pointers are int32
QMIN, QMAX = -128, 127   # int8
# FLOPs per input value to quantize a layer's input on the fly: the range (min and
# max, 2) and scale-and-round (2) for int8; one conversion for fp16.
ACT_FLOPS = {"fp32": 0, "fp16": 1, "int8": 4}


# -- the numerics ----------------------------------------------------------------
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


def magnitude_prune(w: np.ndarray, fraction: float) -> np.ndarray:
    """A copy of w with its round(fraction * w.size) smallest-|w| entries set to zero.

    Ties go by position (a stable sort), so the count is exact and repeatable.
    """
    flat = w.reshape(-1).copy()
    k = int(np.floor(fraction * flat.size + 0.5))
    if k:
        flat[np.argsort(np.abs(flat), kind="stable")[:k]] = 0
    return flat.reshape(w.shape)


# -- the deployed layer ----------------------------------------------------------
def _targets(layer: Layer) -> tuple[tuple[str, ...], int] | None:
    """The weight matrices a deployment compresses in `layer` and their output-channel axis."""
    if isinstance(layer, Compressed):
        return layer.weights, layer.axis
    if isinstance(layer, Conv2d):
        return ("W",), 0                              # (C_out, C_in/g, k, k)
    if isinstance(layer, Linear):
        return ("W",), 1                              # (n_in, n_out): y = x @ W
    if isinstance(layer, SelfAttention):
        return ("Wq", "Wk", "Wv", "Wo"), 1            # (d, d) each, used as x @ W
    return None


class Compressed(Layer):
    """A Linear, Conv2d or SelfAttention deployed with compressed weights (inference only).

    Stored, for each weight matrix W (rows = output channels):
      params["W"]  dense in W's shape as float32 / float16 / int8, or, when smaller,
                   the CSR values (1-D, row-major, one row per output channel);
      buffers["W_indices"], ["W_indptr"]  the CSR column indices and row pointers (int32);
      buffers["W_scale"] (float32), ["W_zero"] (int8)  per channel, int8 only.
    Biases stay float32 params. A zero weight is 0 (float) or q = Z (int8);
    CSR keeps the others. forward rebuilds each W as float32 (S (q - Z) for int8,
    an exact widening for fp16), optionally rounds the input the same way
    (`activations`), and runs the wrapped kernel's own forward in float32.
    """

    def __init__(self, kernel: Layer, dense: dict[str, np.ndarray], dtype: str,
                 activations: bool):
        super().__init__()
        self.weights, self.axis = _targets(kernel)  # type: ignore[misc]
        self.kernel, self.dtype, self.activations = kernel, dtype, activations
        self.shapes = {k: tuple(dense[k].shape) for k in self.weights}
        for name, w in dense.items():
            if name in self.weights:
                self._store(name, w)
            else:
                self.params[name] = np.asarray(w, np.float32).copy()

    def _store(self, name: str, w: np.ndarray) -> None:
        m = _rows(np.asarray(w, np.float32), self.axis)          # (C, K)
        empty: Any = 0
        if self.dtype == "int8":
            m, scale, zero = _affine(m)
            self.buffers[name + "_scale"], self.buffers[name + "_zero"] = scale, zero
            empty = zero[:, None]
        else:
            m = m.astype(STORED[self.dtype])
        nz = m != empty
        csr = int(nz.sum()) * (m.itemsize + INDEX_BYTES) + (m.shape[0] + 1) * INDEX_BYTES
        if csr < m.nbytes:
            self.params[name] = m[nz]
            self.buffers[name + "_indices"] = np.nonzero(nz)[1].astype(np.int32)
            self.buffers[name + "_indptr"] = np.concatenate(
                [[0], np.cumsum(nz.sum(axis=1))]).astype(np.int32)
        else:
            self.params[name] = _unrows(m, self.shapes[name], self.axis)

    def sparse(self, name: str) -> bool:
        """Is weight `name` stored in CSR?"""
        return name + "_indptr" in self.buffers

    def weight(self, name: str) -> np.ndarray:
        """Weight `name` as the kernel computes with it: float32, its layer's shape."""
        v, shape = self.params[name], self.shapes[name]
        if not self.sparse(name) and self.dtype == "fp32":
            return v                                              # stored as computed
        if self.sparse(name):
            indptr = self.buffers[name + "_indptr"]
            m = np.zeros((shape[self.axis], numel(shape) // shape[self.axis]), v.dtype)
            if self.dtype == "int8":
                m[...] = self.buffers[name + "_zero"][:, None]
            rows = np.repeat(np.arange(m.shape[0]), np.diff(indptr))
            m[rows, self.buffers[name + "_indices"]] = v
        else:
            m = _rows(v, self.axis)
        if self.dtype == "int8":
            m = dequantize_int8(m, self.buffers[name + "_scale"], self.buffers[name + "_zero"], 0)
        return _unrows(m.astype(np.float32), shape, self.axis)

    def nonzeros(self, name: str) -> int:
        """Weights of `name` that are not zero as stored (q != Z for int8)."""
        if self.sparse(name):
            return int(self.params[name].size)
        return int(np.count_nonzero(self.weight(name)))

    def _groups(self, x: np.ndarray) -> int:
        """Activation ranges: one per sample for a conv, one per GEMM row otherwise."""
        return x.shape[0] if isinstance(self.kernel, Conv2d) else numel(x.shape[:-1])

    def forward(self, x: np.ndarray, train: bool = False) -> tuple[np.ndarray, Cache]:
        shadow = copy.copy(self.kernel)   # a fresh params dict: nothing shared is mutated
        shadow.params = {k: self.weight(k) if k in self.weights else v
                         for k, v in self.params.items()}
        if self.activations:
            x = fake_quant(x, self.dtype, self._groups(x))
        y, _ = shadow.forward(x, train)
        return y, None

    def backward(self, dy: np.ndarray, cache: Cache) -> np.ndarray:
        raise SimdlError(f"{type(self.kernel).__name__}.backward", f"deployed as {self.dtype}",
                         "a deployed layer is inference-only; train the fp32 chain, then deploy")

    def cost(self, in_shape: Shape) -> Cost:
        """The wrapped kernel's cost with weights at their stored bytes.

        FLOPs are the dense kernel's (a device times them at its `dtype` rate;
        sparsity is `density`'s business), plus ACT_FLOPS per input value with
        `activations`. param_bytes and the weights forward reads are the stored
        bytes (values, scales, zero-points, CSR indices); activations stay float32
        bytes. Backward numbers are the fp32 kernel's (it cannot run here).
        """
        stand_in = copy.copy(self.kernel)   # shapes only, no memory: kernel_cost reads .shape
        stand_in.params = {k: np.broadcast_to(np.float32(0), self.shapes.get(k, v.shape))
                           for k, v in self.params.items()}
        c = stand_in.cost(in_shape)
        stored = self.param_bytes()
        act = ACT_FLOPS[self.dtype] * numel(in_shape) if self.activations else 0
        return replace(c, fwd_flops=c.fwd_flops + act, param_bytes=stored,
                       fwd_bytes=c.fwd_bytes - c.param_bytes + stored)

    def __repr__(self) -> str:
        return f"Compressed[{self.dtype}]({self.kernel!r})"


def _compress(layer: Layer, dtype: str | None = None, activations: bool | None = None,
              fraction: float = 0.0) -> Compressed:
    """`layer` (plain or already deployed) stored as `dtype` (default: as it is), pruned by `fraction`."""
    names, _ = _targets(layer)  # type: ignore[misc]
    if isinstance(layer, Compressed):
        kernel, old_dtype, old_act = layer.kernel, layer.dtype, layer.activations
        dense = {k: layer.weight(k) if k in names else v for k, v in layer.params.items()}
    else:
        kernel, old_dtype, old_act = copy.copy(layer), "fp32", False
        kernel.params, kernel.grads, kernel.buffers = {}, {}, {}   # code and sizes only
        dense = dict(layer.params)
    if fraction:
        dense = {k: magnitude_prune(v, fraction) if k in names else v for k, v in dense.items()}
    return Compressed(kernel, dense, dtype or old_dtype,
                      old_act if activations is None else activations)


def _replace(layer: Layer, fn: Callable[[Layer], Layer]) -> Layer:
    """`layer` with every compressible layer in its tree replaced by fn(it), in place."""
    if _targets(layer) is not None:
        return fn(layer)
    if isinstance(layer, Composite):
        for name, child in list(layer.children.items()):
            new = _replace(child, fn)
            if new is not child:
                layer.children[name] = new
                if isinstance(layer, Sequential):
                    layer.layers[int(name)] = new
                elif getattr(layer, name, None) is child:     # Residual's body/shortcut/post
                    setattr(layer, name, new)
    return layer


def _leaves(layer: Layer) -> Iterator[Layer]:
    """The compressible layers in `layer`'s tree, in order."""
    if _targets(layer) is not None:
        yield layer
    elif isinstance(layer, Composite):
        for child in layer.children.values():
            yield from _leaves(child)


def _transform(chain: Chain, fn: Callable[[Layer], Layer], dtype: str) -> Chain:
    out = copy.deepcopy(chain)                                # the original is never touched
    out.blocks = [Block(b.name, _replace(b.layer, fn)) for b in out.blocks]
    out.dtype = dtype            # type: ignore[attr-defined]
    out.density = density(out)   # type: ignore[attr-defined]
    return out


# -- the public API --------------------------------------------------------------
def _check_dtype(where: str, dtype: str) -> None:
    if dtype not in DTYPES:
        raise SimdlError(where, dtype, f"choose one of: {', '.join(DTYPES)}")


def quantize(chain: Chain, dtype: str, activations: bool = False) -> Chain:
    """A deep copy of `chain` with Linear/Conv2d/attention weights stored as `dtype`.

    fp16: weights rounded to nearest float16 and stored so; compute widens them
    exactly to float32. int8: per-output-channel affine (`_affine`); compute is
    float32 on S (q - Z). fp32: stored and computed as is (bitwise the original).
    `activations`: also round each such layer's input the same way (int8: a
    dynamic range per sample or token). Sets `dtype` and `density` on the copy.
    """
    _check_dtype("quantize.dtype", dtype)
    return _transform(chain, lambda layer: _compress(layer, dtype, activations), dtype)


def prune(chain: Chain, fraction: float) -> Chain:
    """A deep copy of `chain` with each Linear/Conv2d/attention weight matrix magnitude-pruned.

    Per tensor, not global: each matrix loses exactly round(fraction * size) of its
    smallest-|w| entries (He-init scales differ by fan-in, so one global threshold
    would strip the widest layers and spare the head). Keeps the chain's dtype.
    """
    if not 0.0 <= fraction < 1.0:
        raise SimdlError("prune.fraction", fraction, "a fraction in [0, 1)")
    dtype = getattr(chain, "dtype", "fp32")
    return _transform(chain, lambda layer: _compress(layer, fraction=fraction), dtype)


_prune = prune


def deploy(chain: Chain, dtype: str = "fp32", prune: float = 0.0,
           activations: bool = False) -> Chain:
    """Prune (magnitude, per tensor), then quantize: the chain a device would run."""
    _check_dtype("deploy.dtype", dtype)
    return quantize(_prune(chain, prune) if prune else chain, dtype, activations)


def density(chain: Chain) -> list[float]:
    """Per block, the fraction of Linear/Conv2d/attention weights not zero as stored.

    1.0 for a block without such weights. Quantization alone can lower it a
    little: an int8 weight within S/2 of zero is stored as Z, an exact zero.
    """
    out = []
    for b in chain.blocks:
        nonzero = total = 0
        for layer in _leaves(b.layer):
            names, _ = _targets(layer)  # type: ignore[misc]
            for k in names:
                if isinstance(layer, Compressed):
                    nonzero += layer.nonzeros(k)
                    total += numel(layer.shapes[k])
                else:
                    nonzero += int(np.count_nonzero(layer.params[k]))
                    total += int(layer.params[k].size)
        out.append(nonzero / total if total else 1.0)
    return out


def accuracy_change(reference: Chain, deployed: Chain, data: Dataset,
                    batch: int = 256) -> dict[str, float]:
    """How deployment changed the model on `data` (labelled positions only).

    accuracy_change = deployed - reference accuracy (negative: a drop);
    mean_abs_logit_diff = mean |deployed - reference logits| over all logits;
    agreement = fraction of positions where both predict the same class.
    """
    ref, dep = predict(reference, data.x, batch), predict(deployed, data.x, batch)
    ref_loss, ref_acc = scores(ref, data.y)
    dep_loss, dep_acc = scores(dep, data.y)
    mask = np.asarray(data.y) >= 0
    same = (ref.argmax(axis=-1) == dep.argmax(axis=-1)) & mask
    return {
        "reference_accuracy": ref_acc,
        "deployed_accuracy": dep_acc,
        "accuracy_change": dep_acc - ref_acc,
        "reference_loss": ref_loss,
        "deployed_loss": dep_loss,
        "mean_abs_logit_diff": float(np.mean(np.abs(dep - ref))),
        "agreement": float(same.sum() / max(int(mask.sum()), 1)),
    }
