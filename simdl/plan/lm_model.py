"""A decoder LLM as the planner and the generation run see it: blocks, their stored
bytes, and what a prefill or a decode step of each block costs.

`ShapeModel` stands in for a Chain when the model is a full-size preset
(`nn.llm_shapes`): it has the Chain's length, names, `param_bytes` and `costs`
(what `plan.check` and the strategies read), and no arrays, so nothing is allocated
and it can only run timing-only. `StepCosts` gives per-block costs from either kind:
the preset's shapes or a real `decoder_lm` chain (`nn.kv`). `model.wire` is the dtype
of the activations sent between devices (`WIRE_BYTES`, `to_wire`), apart from the
dtype the kernels compute in.
Knows nn's shapes and costs; knows nothing of devices or time.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from simdl.errors import ScenarioError
from simdl.nn import formats, kv, llm_shapes
from simdl.nn.core import Cost
from simdl.nn.llm_shapes import LMShape

CostFn = Callable[[int, int], list[Cost]]  # (batch, prompt or ctx) -> per block

#: Bytes per value of an activation (or partial sum, or logit) between devices, by
#: `model.wire`. int8 is not offered: nn has no symmetric per-tensor int8 rounding.
WIRE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


def check_wire(wire: str) -> str:
    """`wire` if it is a wire dtype; else a ScenarioError naming `model.wire`."""
    if wire not in WIRE_BYTES:
        raise ScenarioError("model.wire", wire, f"choose one of: {', '.join(WIRE_BYTES)}")
    return wire


def wire_of(model: Any) -> str:
    """The wire dtype of a `ShapeModel` or of a chain `simdl.world` gave one (fp32)."""
    return getattr(model, "wire", "fp32")


def handover_bytes(model: Any, fp32_bytes: float) -> float:
    """Bytes on the wire for activations that take `fp32_bytes` as float32."""
    return fp32_bytes // 4 * WIRE_BYTES[wire_of(model)]


def to_wire(x: np.ndarray, wire: str) -> np.ndarray:
    """x as the receiver gets it: each value rounded through `wire` (fp16: IEEE half;
    bf16: `nn.formats`' round to nearest even), back in x's dtype; fp32 is x itself."""
    if wire == "fp32":
        return x
    if wire == "fp16":
        return x.astype(np.float16).astype(x.dtype)
    rows = np.asarray(x, np.float32).reshape(-1, x.shape[-1])
    return formats.decode("bf16", formats.encode("bf16", rows), x.shape[-1]).reshape(
        x.shape).astype(x.dtype)


@dataclass(frozen=True)
class ShapeModel:
    """A full-size preset: `shape` with its weights stored as `weights` (bits per weight
    from `nn.formats`) and activations sent as `wire`; blocks embed, layer1..N, head,
    as the built chain has them."""

    shape: LMShape
    weights: str = "fp32"
    name: str = "llm"
    wire: str = "fp32"

    def __post_init__(self) -> None:
        llm_shapes.weight_bytes(self.weights, 1)  # refuses an unknown format, listing them
        check_wire(self.wire)

    def __len__(self) -> int:
        return self.shape.n_layers + 2

    @property
    def names(self) -> list[str]:
        return self.shape.block_names

    in_shape: tuple[int, ...] = (1,)
    in_dtype: np.dtype = np.dtype(np.int64)

    @property
    def n_classes(self) -> int:
        return self.shape.vocab

    def n_params(self) -> int:
        return self.shape.n_params()

    @cached_property
    def block_bytes(self) -> list[float]:
        """Bytes each block stores: what a decode step reads of its parameters."""
        return [c.param_bytes for c in llm_shapes.decode_costs(self.shape, 1, 0, self.weights)]

    def param_bytes(self, start: int = 0, stop: int | None = None) -> float:
        return float(sum(self.block_bytes[start:stop]))

    def costs(self, batch: int) -> list[Cost]:
        """One decode step of `batch` sequences at an empty cache: what `plan.check` sizes
        activations by (one token's hidden state per sequence)."""
        return llm_shapes.decode_costs(self.shape, batch, 0, self.weights)


def is_shape_only(model: Any) -> bool:
    return isinstance(model, ShapeModel)


class StepCosts:
    """Per-block FLOPs and bytes of a prefill and of a decode step, for a `ShapeModel` or
    a real decoder chain, each cost worked out once.

    A decode step of sequences holding different contexts c_i is charged exactly:
    every block's FLOPs and bytes are affine in each sequence's context (attention
    scores, the weighted sum and the cache read grow by one token's worth per cached
    token, `nn.llm.attention_flops`), so the step costs decode(B, 0) plus sum(c_i) times
    decode(1, 1) - decode(1, 0). That slope's bytes are also one token's KV cache per block.
    """

    def __init__(self, model: Any):
        if is_shape_only(model):
            s, w = model.shape, model.weights
            self._prefill: CostFn = lambda b, p: llm_shapes.prefill_costs(s, b, p, w)
            self._decode: CostFn = lambda b, c: llm_shapes.decode_costs(s, b, c, w)
        else:
            self._prefill = lambda b, p: kv.prefill_costs(model, b, p)
            self._decode = lambda b, c: kv.decode_costs(model, b, c)
        one, zero = self._decode(1, 1), self._decode(1, 0)
        self.slope_flops = [a.fwd_flops - b.fwd_flops for a, b in zip(one, zero)]
        #: Bytes of KV cache one sequence adds per token, per block.
        self.kv_per_token = [float(a.fwd_bytes - b.fwd_bytes) for a, b in zip(one, zero)]
        self._prefills: dict[int, list[Cost]] = {}
        self._bases: dict[int, list[Cost]] = {}

    def prefill(self, prompt: int) -> list[Cost]:
        """Per block, one sequence's prefill of `prompt` tokens."""
        if prompt not in self._prefills:
            self._prefills[prompt] = self._prefill(1, prompt)
        return self._prefills[prompt]

    def decode(self, batch: int, cached: int) -> tuple[list[float], list[float], list[int]]:
        """Per block (FLOPs, bytes, output bytes) of one decode step of `batch` sequences
        holding `cached` tokens in all (the sum of their contexts)."""
        if batch not in self._bases:
            self._bases[batch] = self._decode(batch, 0)
        base = self._bases[batch]
        flops = [c.fwd_flops + cached * k for c, k in zip(base, self.slope_flops)]
        nbytes = [c.fwd_bytes + cached * k for c, k in zip(base, self.kv_per_token)]
        return flops, nbytes, [c.out_bytes for c in base]
