"""Compressed deployment with real numerics: int8/fp16 weight quantization and pruning
(the array formats are `nn.formats`; this module puts them into layers and chains).

`deploy(chain, dtype, prune, sparsity=...)` returns a deep copy of a trained chain
whose Linear, Conv2d and attention weights are *stored* as a device would hold them
(int8 + per-channel scale and zero-point, float16; pruned unstructured as CSR when
that is smaller, pruned 2:4 in NVIDIA's compressed format) and computed from those
arrays, so accuracy changes are measured, and `param_bytes()` / `cost()` see the
stored bytes (`stored_bytes` is the one storage rule). Biases, norms and embeddings
stay float32. Deployed layers are inference-only. `dtype` may also be a storage-only
format of `nn.formats.ENCODED` (bf16, llama.cpp's Q8_0, Q4_0, Q4_K): the weights are
encoded for real and decoded to compute in fp32 (the copy's `dtype` is then "fp32"
and its `weights` the format).
Knows layers and chains; knows nothing of devices or time (the simulator reads
`chain.dtype` for the kernel rate and `Cost.sparse_flops` for what a sparse unit speeds up).
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
from simdl.nn.formats import (ACT_FLOPS, DTYPES, ENCODED, PATTERNS, STORED, WEIGHT_FORMATS,
                              _affine, _mask_2_4, _pack_positions, _rows, _unpack_positions,
                              _unrows, decode, dequantize_int8, encode, fake_quant,
                              magnitude_prune, prune_2_4, quantize_int8, stored_bytes)
from simdl.nn.llm import GQAttention, SwiGLU

__all__ = ["DTYPES", "PATTERNS", "Compressed", "quantize", "prune", "deploy", "density",
           "accuracy_change", "stored_bytes", "quantize_int8", "dequantize_int8",
           "fake_quant", "magnitude_prune", "prune_2_4"]

# -- the deployed layer ----------------------------------------------------------


def _in_axis(axis: int) -> int:
    """The input (reduction) axis of a weight whose output-channel axis is `axis`:
    Linear and attention W are (in, out), a Conv2d W is (out, in / groups, k, k)."""
    return 1 - axis


def _targets(layer: Layer) -> tuple[tuple[str, ...], int] | None:
    """The weight matrices a deployment compresses in `layer` and their output-channel axis."""
    if isinstance(layer, Compressed):
        return layer.weights, layer.axis
    if isinstance(layer, Conv2d):
        return ("W",), 0                              # (C_out, C_in/g, k, k)
    if isinstance(layer, Linear):
        return ("W",), 1                              # (n_in, n_out): y = x @ W
    if isinstance(layer, (SelfAttention, GQAttention)):
        return ("Wq", "Wk", "Wv", "Wo"), 1            # (d, width) each, used as x @ W
    if isinstance(layer, SwiGLU):
        return ("W1", "W3", "W2"), 1
    return None


class Compressed(Layer):
    """A Linear, Conv2d or SelfAttention deployed with compressed weights (inference only).

    Stored, for each weight matrix W (rows = output channels), by `layout`:
      dense: params["W"] in W's shape as float32 / float16 / int8;
      csr (pruned unstructured, when smaller): params["W"] the values (1-D, row-major,
        one row per output channel), buffers["W_indices"], ["W_indptr"] the column
        indices and row pointers (int32);
      2:4 (pruned 2:4): params["W"] the kept half (1-D, in W's C order),
        buffers["W_meta"] their positions in their groups, 2 bits each (uint8);
      buffers["W_scale"] (float32), ["W_zero"] (int8)  per channel, int8 only.
    Biases stay float32 params. A zero weight is 0 (float) or q = Z (int8);
    CSR keeps the others. forward rebuilds each W as float32 (S (q - Z) for int8,
    an exact widening for fp16), optionally rounds the input the same way
    (`activations`), and runs the wrapped kernel's own forward in float32.
    `sparsity` is the pattern the weights were pruned in (None: not pruned).
    """

    def __init__(self, kernel: Layer, dense: dict[str, np.ndarray], dtype: str,
                 activations: bool, sparsity: str | None = None):
        super().__init__()
        self.weights, self.axis = _targets(kernel)  # type: ignore[misc]
        self.kernel, self.dtype, self.activations = kernel, dtype, activations
        self.sparsity = sparsity
        self.shapes = {k: tuple(dense[k].shape) for k in self.weights}
        for name, w in dense.items():
            if name in self.weights:
                self._store(name, w)
            else:
                self.params[name] = np.asarray(w, np.float32).copy()

    def _store(self, name: str, w: np.ndarray) -> None:
        w = np.asarray(w, np.float32)
        m = _rows(w, self.axis)                                   # (C, K)
        if self.dtype in ENCODED:                   # blocks along K, the reduction axis
            if self.sparsity:
                raise SimdlError("deploy.prune", self.sparsity,
                                 f"{self.dtype} weights are stored dense: prune 0 only")
            self.params[name] = encode(self.dtype, m)
            return
        empty: Any = 0
        if self.dtype == "int8":
            m, scale, zero = _affine(m)
            self.buffers[name + "_scale"], self.buffers[name + "_zero"] = scale, zero
            empty = zero[:, None]
        else:
            m = m.astype(STORED[self.dtype])
        if self.sparsity == "2:4":  # the kept pair of each group, chosen on the fp32 weights
            keep = _mask_2_4(w, _in_axis(self.axis))
            self.params[name] = _unrows(m, self.shapes[name], self.axis)[keep]
            self.buffers[name + "_meta"] = _pack_positions(keep, _in_axis(self.axis))
            return
        nz = m != empty
        if stored_bytes(self.dtype, "unstructured", m.size, int(nz.sum()), m.shape[0]) < m.nbytes:
            self.params[name] = m[nz]
            self.buffers[name + "_indices"] = np.nonzero(nz)[1].astype(np.int32)
            self.buffers[name + "_indptr"] = np.concatenate(
                [[0], np.cumsum(nz.sum(axis=1))]).astype(np.int32)
        else:
            self.params[name] = _unrows(m, self.shapes[name], self.axis)

    def layout(self, name: str) -> str:
        """How weight `name` is stored: "dense", "csr" or "2:4" (see the class)."""
        if name + "_meta" in self.buffers:
            return "2:4"
        return "csr" if name + "_indptr" in self.buffers else "dense"

    def weight(self, name: str) -> np.ndarray:
        """Weight `name` as the kernel computes with it: float32, its layer's shape."""
        v, shape, layout = self.params[name], self.shapes[name], self.layout(name)
        if self.dtype in ENCODED:
            k = numel(shape) // shape[self.axis]
            return _unrows(decode(self.dtype, v, k), shape, self.axis)
        if layout == "dense":
            if self.dtype == "fp32":
                return v                                          # stored as computed
            m = _rows(v, self.axis)
        else:                      # scatter the stored values into the empty matrix
            m = np.zeros((shape[self.axis], numel(shape) // shape[self.axis]), v.dtype)
            if self.dtype == "int8":
                m[...] = self.buffers[name + "_zero"][:, None]
            if layout == "csr":
                indptr = self.buffers[name + "_indptr"]
                rows = np.repeat(np.arange(m.shape[0]), np.diff(indptr))
                m[rows, self.buffers[name + "_indices"]] = v
            else:
                full = _unrows(m, shape, self.axis)
                full[_unpack_positions(self.buffers[name + "_meta"], shape,
                                       _in_axis(self.axis))] = v
                m = _rows(full, self.axis)
        if self.dtype == "int8":
            m = dequantize_int8(m, self.buffers[name + "_scale"], self.buffers[name + "_zero"], 0)
        return _unrows(m.astype(np.float32), shape, self.axis)

    def nonzeros(self, name: str) -> int:
        """Weights of `name` that are not zero as stored (q != Z for int8)."""
        if self.layout(name) == "csr":
            return int(self.params[name].size)
        return int(np.count_nonzero(self.weight(name)))

    def weight_flops(self, out_shape: Shape) -> float:
        """Forward FLOPs of the products with the stored weights, for an output of
        `out_shape`: 2 per weight per output position (a GEMM row, or a conv's output
        pixel). The part of the layer a unit's sparse mode can speed up."""
        channels = out_shape[1] if isinstance(self.kernel, Conv2d) else out_shape[-1]
        positions = numel(out_shape) // channels
        return 2.0 * positions * sum(numel(self.shapes[k]) for k in self.weights)

    def _groups(self, x: np.ndarray) -> int:
        """Activation ranges: one per sample for a conv, one per GEMM row otherwise."""
        return x.shape[0] if isinstance(self.kernel, Conv2d) else numel(x.shape[:-1])

    def unpacked(self) -> Layer:
        """The wrapped kernel computing with the weights as stored, decoded to float32."""
        shadow = copy.copy(self.kernel)   # a fresh params dict: nothing shared is mutated
        shadow.params = {k: self.weight(k) if k in self.weights else v
                         for k, v in self.params.items()}
        return shadow

    def forward(self, x: np.ndarray, train: bool = False) -> tuple[np.ndarray, Cache]:
        if self.activations:
            x = fake_quant(x, self.dtype, self._groups(x))
        y, _ = self.unpacked().forward(x, train)
        return y, None

    def backward(self, dy: np.ndarray, cache: Cache) -> np.ndarray:
        raise SimdlError(f"{type(self.kernel).__name__}.backward", f"deployed as {self.dtype}",
                         "a deployed layer is inference-only; train the fp32 chain, then deploy")

    def cost(self, in_shape: Shape) -> Cost:
        """The wrapped kernel's cost with weights at their stored bytes.

        FLOPs are the dense kernel's (a device times them at its `dtype` rate; what
        a sparse unit may save is marked as `sparse_flops`), plus ACT_FLOPS per input
        value with `activations`. param_bytes and the weights forward reads are the
        stored bytes (values, scales, zero-points, CSR indices, 2:4 metadata);
        activations stay float32 bytes. Backward numbers are the fp32 kernel's (it
        cannot run here).
        """
        stand_in = copy.copy(self.kernel)   # shapes only, no memory: kernel_cost reads .shape
        stand_in.params = {k: np.broadcast_to(np.float32(0), self.shapes.get(k, v.shape))
                           for k, v in self.params.items()}
        c = stand_in.cost(in_shape)
        stored = self.param_bytes()
        act = ACT_FLOPS.get(self.dtype, 0) * numel(in_shape) if self.activations else 0
        sparse = self.weight_flops(c.out_shape) if self.sparsity else 0.0  # pruned products
        return replace(c, fwd_flops=c.fwd_flops + act, param_bytes=stored,
                       fwd_bytes=c.fwd_bytes - c.param_bytes + stored, sparse_flops=sparse)

    def __repr__(self) -> str:
        pruned = f", {self.sparsity}" if self.sparsity else ""
        return f"Compressed[{self.dtype}{pruned}]({self.kernel!r})"


def _compress(layer: Layer, dtype: str | None = None, activations: bool | None = None,
              fraction: float = 0.0, sparsity: str = "unstructured") -> Compressed:
    """`layer` (plain or already deployed) stored as `dtype` (default: as it is), pruned
    by `fraction` in the `sparsity` pattern.

    2:4 leaves a layer dense when a weight's input axis is not a multiple of 4 (a
    1-channel first conv, a depthwise conv): the pattern cannot be laid on it, and
    NVIDIA's pruning tool (ASP) likewise skips layers its sparse kernels cannot take.
    """
    names, axis = _targets(layer)  # type: ignore[misc]
    if isinstance(layer, Compressed):
        kernel, old_dtype, old_act = layer.kernel, layer.dtype, layer.activations
        dense = {k: layer.weight(k) if k in names else v for k, v in layer.params.items()}
        pattern = layer.sparsity
    else:
        kernel, old_dtype, old_act = copy.copy(layer), "fp32", False
        kernel.params, kernel.grads, kernel.buffers = {}, {}, {}   # code and sizes only
        dense = dict(layer.params)
        pattern = None
    if fraction and sparsity == "2:4":
        if all(dense[k].shape[_in_axis(axis)] % 4 == 0 for k in names):
            dense = {k: prune_2_4(v, _in_axis(axis)) if k in names else v
                     for k, v in dense.items()}
            pattern = "2:4"
    elif fraction:
        dense = {k: magnitude_prune(v, fraction) if k in names else v for k, v in dense.items()}
        pattern = "unstructured"
    return Compressed(kernel, dense, dtype or old_dtype,
                      old_act if activations is None else activations, pattern)


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
    out.dtype = "fp32" if dtype in ENCODED else dtype        # type: ignore[attr-defined]
    out.weights = dtype          # type: ignore[attr-defined]
    out.density = density(out)   # type: ignore[attr-defined]
    return out


# -- the public API --------------------------------------------------------------
def _check_dtype(where: str, dtype: str) -> None:
    if dtype not in WEIGHT_FORMATS:
        raise SimdlError(where, dtype, f"choose one of: {', '.join(WEIGHT_FORMATS)}")


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


def prune(chain: Chain, fraction: float, sparsity: str = "unstructured") -> Chain:
    """A deep copy of `chain` with each Linear/Conv2d/attention weight matrix pruned.

    unstructured: per tensor, not global, each matrix loses exactly round(fraction *
    size) of its smallest-|w| entries (He-init scales differ by fan-in, so one global
    threshold would strip the widest layers and spare the head). 2:4: `prune_2_4` along
    each weight's input axis, so `fraction` must be 0.5 (see `_compress` for layers it
    cannot fit). Keeps the chain's dtype.
    """
    if sparsity not in PATTERNS:
        raise SimdlError("prune.sparsity", sparsity, f"choose one of: {', '.join(PATTERNS)}")
    if not 0.0 <= fraction < 1.0:
        raise SimdlError("prune.fraction", fraction, "a fraction in [0, 1)")
    if sparsity == "2:4" and fraction != 0.5:
        raise SimdlError("prune.fraction", fraction,
                         "2:4 keeps 2 of every 4 weights, so the fraction is 0.5")
    dtype = getattr(chain, "weights", getattr(chain, "dtype", "fp32"))
    return _transform(chain, lambda layer: _compress(layer, fraction=fraction,
                                                     sparsity=sparsity), dtype)


_prune = prune


def deploy(chain: Chain, dtype: str = "fp32", prune: float = 0.0,
           activations: bool = False, sparsity: str = "unstructured") -> Chain:
    """Prune (in the `sparsity` pattern, per tensor), then quantize: the chain a device
    would run. 2:4 needs prune=0.5."""
    _check_dtype("deploy.dtype", dtype)
    pruned = prune or sparsity != "unstructured"
    return quantize(_prune(chain, prune, sparsity) if pruned else chain, dtype, activations)


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
