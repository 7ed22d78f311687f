"""Tensor (intra-layer) parallelism: one block cut over k members as a linear program of ops.

`shard(layer, k)` walks the layer tree carrying a sharding state (full, split,
partial; see `shard_rules.State`), asks `shard_rules` how each leaf is cut and
inserts a collective only where states do not meet: Megatron-LM's column-then-
row pairing (Shoeybi et al. 2019), so an MLP or an attention layer needs one
all-reduce. `Program.run` is the reference executor; shards hold real slices.
Knows layers and shapes; knows nothing of devices, networks or time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from simdl.errors import SimdlError
from simdl.nn.chain import Chain
from simdl.nn.compose import Residual, Sequential
from simdl.nn.core import Cost, Layer, Shape, nbytes
from simdl.nn.shard_rules import FULL, HeadShard, Slice, State, add_cost, kind, leaf

__all__ = ["Compute", "Gather", "Reduce", "Save", "Swap", "AddSaved", "Op", "OpCost", "Program",
           "MODES", "apply", "combine", "shard", "shard_chain", "Slice", "HeadShard"]

MODES = ("auto", "column", "row")


@dataclass(frozen=True)
class Compute:
    """Every member applies its own shard layer to the tensor it holds (a local kernel)."""

    shards: tuple[Layer, ...]    # one per member; params hold only that member's slice
    name: str                    # "sep1.0 (conv2d, channels 0-7 | 8-15) + sep1.1 (...)"


@dataclass(frozen=True)
class Gather:
    """Members hold consecutive slices along `axis`; afterwards each holds the concatenation."""

    axis: int


@dataclass(frozen=True)
class Reduce:
    """Members hold summands; afterwards every member holds their sum (an all-reduce)."""


# The three local ops carry a residual: each member keeps its own stack of saved tensors
# (one per residual in flight, so nested residuals nest). `apply(xs, stacks)` returns the
# members' new tensors and updates `stacks` in place; nothing moves between members.


@dataclass(frozen=True)
class Save:
    """Every member pushes its current tensor on its own stack (a residual's input). Free."""

    def apply(self, xs: list[Any], stacks: list[list[Any]]) -> list[Any]:
        for st, x in zip(stacks, xs):
            st.append(x)
        return list(xs)


@dataclass(frozen=True)
class Swap:
    """Every member exchanges its current tensor with the top of its stack, so a shortcut can
    run on the saved input while the body's output waits. Free."""

    def apply(self, xs: list[Any], stacks: list[list[Any]]) -> list[Any]:
        out = [st[-1] for st in stacks]
        for st, x in zip(stacks, xs):
            st[-1] = x
        return out


@dataclass(frozen=True)
class AddSaved:
    """Every member pops its stack and adds it to its current tensor (the residual add: 1 FLOP
    per value, see `OpCost.members`). Both are in the same state, so nothing moves."""

    def apply(self, xs: list[Any], stacks: list[list[Any]]) -> list[Any]:
        return [x + st.pop() for st, x in zip(stacks, xs)]


Op = Compute | Gather | Reduce | Save | Swap | AddSaved


@dataclass(frozen=True)
class OpCost:
    """What one op costs for one input shape of the program.

    members: Compute and AddSaved: each member's kernel cost; () for the others.
    Iterating an OpCost (or indexing it) goes over `members`.
    shape: collectives: the FULL tensor; otherwise member 0's tensor after the op.
    nbytes: collectives: the payload S = nbytes(shape) (float32); 0 otherwise.
    """

    op: Op
    members: tuple[Cost, ...]
    shape: Shape
    nbytes: int = 0

    def __iter__(self) -> Iterator[Cost]:
        return iter(self.members)

    def __getitem__(self, i: int) -> Cost:
        return self.members[i]


def combine(op: Gather | Reduce, xs: list[np.ndarray]) -> np.ndarray:
    """What every member holds after a collective: the concatenation, or the sum in member
    order (so every member gets bitwise the same tensor)."""
    if isinstance(op, Gather):
        return np.concatenate(xs, axis=op.axis)
    total = xs[0]
    for x in xs[1:]:
        total = total + x
    return total


def apply(op: Op, xs: list[np.ndarray], stacks: list[list[np.ndarray]],
          train: bool = False) -> None:
    """Run one op over the members' tensors `xs` and their stacks, in place on both lists.

    Members may end up holding the same array object: no kernel writes its input.
    """
    if isinstance(op, Compute):
        xs[:] = [s.forward(x, train)[0] for s, x in zip(op.shards, xs)]
    elif isinstance(op, (Gather, Reduce)):
        xs[:] = [combine(op, xs)] * len(xs)
    elif isinstance(op, (Save, Swap, AddSaved)):
        xs[:] = op.apply(xs, stacks)
    else:
        raise TypeError(f"not a shard op: {op!r}")


@dataclass(frozen=True)
class Program:
    """k members run `ops` in order; the input is full on every member, so is the output."""

    k: int
    ops: tuple[Op, ...]

    def __post_init__(self) -> None:
        for op in self.ops:
            if isinstance(op, Compute) and len(op.shards) != self.k:
                raise ValueError(f"{op.name}: {len(op.shards)} shards for {self.k} members")

    def run_all(self, x: np.ndarray, train: bool = False) -> list[np.ndarray]:
        """Every member's output (all equal) for the full input `x`."""
        xs, stacks = [x] * self.k, [[] for _ in range(self.k)]
        for op in self.ops:
            apply(op, xs, stacks, train)
        if any(stacks):
            raise ValueError("program ends with saved tensors: unbalanced Save/AddSaved")
        return xs

    def run(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        """The reference executor: member 0's output for the full input `x`."""
        return self.run_all(x, train)[0]

    def costs(self, in_shape: Shape) -> list[OpCost]:
        """One OpCost per op for a full input of `in_shape`, without running anything."""
        shapes: list[Shape] = [tuple(in_shape)] * self.k
        stacks: list[list[Shape]] = [[] for _ in range(self.k)]
        out = []
        for op in self.ops:
            members: tuple[Cost, ...] = ()
            payload = 0
            if isinstance(op, Compute):
                members = tuple(s.cost(shp) for s, shp in zip(op.shards, shapes))
                shapes = [c.out_shape for c in members]
            elif isinstance(op, (Gather, Reduce)):
                full = list(shapes[0])
                if isinstance(op, Gather):
                    full[op.axis] = sum(shp[op.axis] for shp in shapes)
                shapes = [tuple(full)] * self.k
                payload = nbytes(shapes[0])
            else:                      # Save, Swap, AddSaved: shapes move like the tensors
                if isinstance(op, AddSaved):
                    members = tuple(add_cost(shp) for shp in shapes)
                    shapes = [st.pop() for st in stacks]   # same shapes as the current ones
                else:
                    shapes = op.apply(shapes, stacks)
            out.append(OpCost(op, members, shapes[0], payload))
        return out

    def param_bytes(self) -> tuple[int, ...]:
        """Bytes of parameters and buffers each member stores (replicated layers count on each)."""
        return tuple(sum(op.shards[i].param_bytes() for op in self.ops if isinstance(op, Compute))
                     for i in range(self.k))

    def count(self, kind_: type) -> int:
        """How many ops are of class `kind_` (Reduce, Gather, ...)."""
        return sum(isinstance(op, kind_) for op in self.ops)

    def __str__(self) -> str:
        lines = [f"Program over {self.k} members, {len(self.ops)} ops:"]
        for i, op in enumerate(self.ops):
            what = type(op).__name__.lower()
            if isinstance(op, Compute):
                what += f"  {op.name}"
            elif isinstance(op, Gather):
                what += f"  axis {op.axis}"
            lines.append(f"{i:4d} {what}")
        return "\n".join(lines)


# -- building a program ------------------------------------------------------------


def _to_full(state: State) -> list[Op]:
    """The collective that makes `state` full on every member."""
    if state.kind == "split":
        return [Gather(state.axis)]
    return [Reduce()] if state.kind == "partial" else []


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _walk(layer: Layer, state: State, k: int, mode: str, path: str) -> tuple[list[Op], State]:
    """The ops that run `layer` on an input in `state`, and the state of its output."""
    if type(layer) is Sequential:
        ops: list[Op] = []
        for i, child in enumerate(layer.layers):
            more, state = _walk(child, state, k, mode, _join(path, str(i)))
            ops += more
        return ops, state
    if type(layer) is Residual:
        return _residual(layer, state, k, mode, path)
    cut = leaf(layer, state, k, mode, path)
    assert cut.need in (state, FULL), (path, cut.need, state)
    ops = [] if cut.need == state else _to_full(state)
    label = f"{kind(layer)}, {cut.what}"
    ops.append(Compute(cut.shards, f"{path} ({label})" if path else label))
    if mode == "column":               # column mode: every split layer is gathered at once
        return ops + _to_full(cut.out), FULL
    return ops, cut.out


def _residual(layer: Residual, state: State, k: int, mode: str,
              path: str) -> tuple[list[Op], State]:
    """Save the input; body; [Swap; shortcut]; bring both to one state; AddSaved; post.

    The add happens in the common state when body and shortcut end in the same
    one (same slices, or both partial: summands add), else both are made full.
    """
    ops = _to_full(state) if state.kind == "partial" else []
    state = FULL if ops else state
    body, sb = _walk(layer.body, state, k, mode, _join(path, "body"))
    side, ss = [], state
    if layer.shortcut is not None:
        side, ss = _walk(layer.shortcut, state, k, mode, _join(path, "shortcut"))
    common = sb if sb == ss else FULL
    ops += [Save(), *body, *([] if sb == common else _to_full(sb))]
    side += [] if ss == common else _to_full(ss)
    if side:                           # the current tensor is the body's; run the side on the input
        ops += [Swap(), *side]
    ops.append(AddSaved())
    if layer.post is None:
        return ops, common
    more, state = _walk(layer.post, common, k, mode, _join(path, "post"))
    return ops + more, state


def _parts(layer: Layer) -> list[Layer]:
    return list(layer.layers) if type(layer) is Sequential else [layer]


def _fuse(ops: list[Op]) -> list[Op]:
    """Merge back-to-back Computes: each member then runs one kernel between two collectives."""
    out: list[Op] = []
    for op in ops:
        if isinstance(op, Compute) and out and isinstance(out[-1], Compute):
            prev = out.pop()
            shards = tuple(Sequential(_parts(a) + _parts(b))
                           for a, b in zip(prev.shards, op.shards))
            op = Compute(shards, f"{prev.name} + {op.name}")
        out.append(op)
    return out


def _check(k: int, mode: str) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise SimdlError("shard.k", k, "the number of members must be a positive integer")
    if mode not in MODES:
        raise SimdlError("shard.mode", mode, f"choose one of: {', '.join(MODES)}")


def shard(layer: Layer, k: int, mode: str = "auto", name: str = "") -> Program:
    """`layer` cut over `k` members; input full on every member, output full on every member.

    mode "auto": Megatron pairing (column split then row split, one all-reduce).
    "column": every split layer is gathered at once (no partial sums; attention
    still all-reduces its heads). "row": a Linear or Conv2d on a full input is
    cut by input rows/channels, each member slicing its own part of the input,
    then all-reduced. `name` prefixes op names (the block's name).
    k == 1: one Compute of `layer` itself. Raises SimdlError for an attention
    layer with fewer heads than members.
    """
    _check(k, mode)
    if k == 1:
        return Program(1, (Compute((layer,), name or kind(layer)),))
    ops, state = _walk(layer, FULL, k, mode, name)
    return Program(k, tuple(_fuse(ops + _to_full(state))))


def shard_chain(chain: Chain, start: int, stop: int, k: int, mode: str = "auto") -> Program:
    """blocks[start:stop] of `chain` as one program: the blocks' programs one after another.

    Every block's program starts and ends full, so they concatenate; op names
    start with the block's name.
    """
    if not 0 <= start <= stop <= len(chain):
        raise SimdlError("shard_chain.range", (start, stop),
                         f"need 0 <= start <= stop <= {len(chain)}")
    _check(k, mode)
    ops: list[Op] = []
    for block in chain.blocks[start:stop]:
        ops += shard(block.layer, k, mode, name=block.name).ops
    return Program(k, tuple(ops))
