"""What each member of a tensor-parallel group charges for a decoder's prefill or decode
step, from the shape alone (a full-size preset or a real chain's `LMShape`).

The cut is the shard rules' (`nn.shard_rules`: gq_attention, swiglu, tied_head /
linear columns, RMSNorm and the embedding replicated): member i of k holds kv heads
`even(n_kv_heads, k)[i]` with their query heads (k > n_kv_heads: query heads
`even(n_heads, k)[i]`, a kv head repeated on each member that reads it), hidden units
`even(ffn_hidden, k)[i]` and vocabulary rows `even(vocab, k)[i]`. So a layer is two
kernels per member, each followed by an all-reduce of the (tokens, dim) partial sums
(`wire` bytes a value: `model.wire`, fp32 by default):
    norm + its attention heads (their Wq, Wk, Wv, Wo and their part of the KV cache),
    norm + its hidden units of the SwiGLU MLP (its columns of W1, W3, rows of W2);
the embedding is replicated (each member gathers the rows itself), and the head is one
kernel (norm + its vocabulary rows) then an all-gather of the logits (`wire` bytes
each too). The residual adds between them take no simulated time, as in `sim.stages`
(the shard programs' AddSaved).
A test checks these costs against the real shard layers' own (`nn.kv.infer_cost`).
`member_steps` gives what the members compute for real, op by op beside those costs
(the shard program of a block, `nn.shard`), and `combine` what a collective hands back.
Knows shapes, costs and shard programs; knows nothing of devices or time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from simdl.errors import PlanError
from simdl.nn import llm_shapes
from simdl.nn import shard as tp
from simdl.nn.core import ITEMSIZE, Cost
from simdl.nn.llm import GQAttention, SwiGLU, TiedHead
from simdl.nn.llm_shapes import LMShape
from simdl.nn.shard_rules import even


@dataclass(frozen=True)
class Member:
    """One member's share of every layer: query heads, kv heads, hidden units, vocab rows."""

    heads: int
    kv_heads: int
    hidden: int
    vocab: int


def members(s: LMShape, k: int) -> list[Member]:
    """The k members' shares, as the shard rules cut them; PlanError when k > n_heads."""
    if k > s.n_heads or k > s.ffn_hidden:
        raise PlanError("devices", k, f"at most n_heads={s.n_heads} members: each gets whole "
                        "query heads")
    r, out = s.n_heads // s.n_kv_heads, []
    f, v = even(s.ffn_hidden, k), even(s.vocab, k)
    for i in range(k):
        if k <= s.n_kv_heads:
            b = even(s.n_kv_heads, k)
            kv = b[i + 1] - b[i]
            heads = kv * r
        else:
            b = even(s.n_heads, k)
            reads = [j // r for j in range(b[i], b[i + 1])]
            uniq = sorted(set(reads))
            heads = len(reads)
            kv = len(uniq) if all(reads.count(u) == reads.count(uniq[0]) for u in uniq) else heads
        out.append(Member(heads, kv, f[i + 1] - f[i], v[i + 1] - v[i]))
    return out


def attention(s: LMShape, m: Member, rows: int, pairs: int, cached: int, weights: str) -> Cost:
    """Norm + member m's attention heads (`llm_shapes.attention_part`, fp32 cache)."""
    return llm_shapes.attention_part(s, rows, pairs, cached, m.heads, m.kv_heads, weights)


def mlp(s: LMShape, m: Member, rows: int, weights: str) -> Cost:
    """Norm + member m's hidden units of the SwiGLU MLP."""
    return llm_shapes.mlp_part(s, rows, m.hidden, weights)


def head(s: LMShape, m: Member, rows: int, weights: str) -> Cost:
    """Norm + member m's vocabulary rows of the head."""
    return llm_shapes.head_part(s, rows, m.vocab, weights)


#: One op of a block on a group: ("compute", a Cost per member) or (collective, bytes).
GroupOp = tuple[str, Any]


class GroupCosts:
    """Per block, the ops a group of k runs for a prefill or a decode step (module doc)."""

    def __init__(self, shape: LMShape, weights: str, k: int, wire: int = ITEMSIZE):
        self.shape, self.weights, self.k, self.wire = shape, weights, k, wire
        self.members = members(shape, k)

    def _blocks(self, n: int, t: int, pairs: int, cached: int,
                embed: Cost) -> list[list[GroupOp]]:
        s, w, ms = self.shape, self.weights, self.members
        rows = n * t
        act = float(rows * s.dim * self.wire)
        layer: list[GroupOp] = [
            ("compute", [attention(s, m, rows, pairs, cached, w) for m in ms]),
            ("all_reduce", act),
            ("compute", [mlp(s, m, rows, w) for m in ms]),
            ("all_reduce", act)]
        last: list[GroupOp] = [("compute", [head(s, m, n, w) for m in ms]),
                               ("all_gather", float(n * s.vocab * self.wire))]
        return [[("compute", [embed] * self.k)], *([layer] * s.n_layers), last]

    def prefill(self, prompt: int) -> list[list[GroupOp]]:
        """One sequence's prefill of `prompt` tokens (the head on its last position)."""
        embed = llm_shapes.prefill_costs(self.shape, 1, prompt, self.weights)[0]
        return self._blocks(1, prompt, prompt * prompt, prompt, embed)

    def decode(self, n: int, cached: int) -> list[list[GroupOp]]:
        """One step of `n` sequences holding `cached` tokens in all (each adds one)."""
        embed = llm_shapes.decode_costs(self.shape, n, 0, self.weights)[0]
        return self._blocks(n, 1, cached + n, cached + n, embed)

    def weight_bytes(self, start: int, stop: int) -> list[float]:
        """Bytes of weights each member holds for blocks [start, stop)."""
        s, w = self.shape, self.weights
        embed = llm_shapes.decode_costs(s, 1, 0, w)[0].param_bytes
        out = []
        for m in self.members:
            per = [embed, *([attention(s, m, 1, 1, 0, w).param_bytes
                             + mlp(s, m, 1, w).param_bytes] * s.n_layers),
                   head(s, m, 1, w).param_bytes]
            out.append(float(sum(per[start:stop])))
        return out

    def kv_per_token(self, start: int, stop: int) -> list[float]:
        """Cache bytes one sequence adds per token on each member for blocks [start, stop)."""
        layers = len([b for b in range(start, stop) if 1 <= b <= self.shape.n_layers])
        return [float(layers * llm_shapes.cache_bytes_per_token(self.shape, m.kv_heads))
                for m in self.members]


def shape_of(model: Any) -> LMShape:
    """The `LMShape` of a full-size preset or of a real `decoder_lm` chain (read from its
    layers)."""
    if hasattr(model, "shape"):
        return model.shape
    attn = swiglu = None
    for b in model.blocks[1:-1]:
        for part in b.layer.layers:
            for leaf in part.body.layers:
                if isinstance(leaf, GQAttention):
                    attn = leaf
                elif isinstance(leaf, SwiGLU):
                    swiglu = leaf
    assert attn is not None and swiglu is not None, "not a decoder_lm chain"
    vocab, dim = model.blocks[0].layer.params["E"].shape
    proj = model.blocks[-1].layer.layers[-1]
    norm = model.blocks[-1].layer.layers[0]
    return LMShape(vocab, dim, len(model) - 2, attn.h, attn.kv, swiglu.f,
                   tied=isinstance(proj, TiedHead), rope_theta=attn.theta,
                   head_dim=attn.dh, qkv_bias="bq" in attn.params, norm_eps=norm.eps)


@dataclass(frozen=True)
class MemberStep:
    """One of a block's `GroupCosts` ops for real: the free local ops before it (a
    residual's Save, Swap, AddSaved) and the Compute, Reduce or Gather itself."""

    free: tuple[Any, ...]
    op: Any


def member_steps(layer: Any, k: int) -> tuple[tuple[MemberStep, ...], tuple[Any, ...]]:
    """A block's shard program over k members (`nn.shard.shard`), one step per
    `GroupCosts` op of the block, and the free ops after the last."""
    steps, free = [], []
    for op in tp.shard(layer, k).ops:
        if isinstance(op, (tp.Compute, tp.Reduce, tp.Gather)):
            steps.append(MemberStep(tuple(free), op))
            free = []
        else:
            free.append(op)
    return tuple(steps), tuple(free)


def combine(op: Any, xs: list[np.ndarray], wire: Any) -> np.ndarray:
    """What every member holds after an all-reduce (`tp.Reduce`) or all-gather of `xs`
    sent through `wire` (x -> x as received): each part as sent, the sum in member order
    as sent back; fp32 is `nn.shard.combine` itself."""
    full = tp.combine(op, [wire(x) for x in xs])
    return wire(full) if isinstance(op, tp.Reduce) else full
