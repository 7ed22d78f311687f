"""The model as a chain of blocks: what split strategies cut into stages.

A `Chain` runs its blocks whole or over any range `[start, stop)`; running the
ranges one after another gives bitwise the whole-model numbers, forward and
backward. It also names parameters ("block.param") and adds up block costs,
computed once per batch size: a chain's blocks are fixed once built (a deployed
or sliced chain is a new Chain, and setting `blocks` forgets the old costs).
Knows layers and shapes; knows nothing of devices, networks or time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np
import pandas as pd

from simdl.errors import SimdlError
from simdl.nn.core import Cost, Layer, Shape
from simdl.nn.layers import astype


@dataclass(frozen=True)
class Block:
    """One cuttable unit of the model: a name and its layer (usually a Sequential)."""

    name: str
    layer: Layer


class Chain:
    """An ordered list of blocks with one input shape (one sample, no batch axis).

    Args:
        blocks: the blocks in execution order; names unique and without ".".
        in_shape: one sample's input shape, e.g. (3, 32, 32) or (seq_len,).
        in_dtype: np.float32, or np.int64 for token models.
        n_classes: classes (vocabulary for token models) of the final logits.
    """

    def __init__(self, blocks: list[Block], in_shape: Shape, in_dtype: Any = np.float32,
                 n_classes: int | None = None, name: str = ""):
        seen: set[str] = set()
        for i, b in enumerate(blocks):
            if not b.name or "." in b.name or b.name in seen:
                raise SimdlError(f"chain.blocks[{i}].name", b.name,
                                 "block names must be non-empty, unique and contain no '.'")
            seen.add(b.name)
        self.blocks = blocks
        self.in_shape: Shape = tuple(int(d) for d in in_shape)
        self.in_dtype = np.dtype(in_dtype)
        self.n_classes = n_classes
        self.name = name

    # -- the sequence of blocks ------------------------------------------------
    @property
    def blocks(self) -> tuple[Block, ...]:
        return self._blocks

    @blocks.setter
    def blocks(self, blocks: Iterable[Block]) -> None:
        """New blocks (`nn.compress` sets its copy's) cost anew: the cache goes with them."""
        self._blocks = tuple(blocks)
        self._costs: dict[int, tuple[Cost, ...]] = {}

    def __len__(self) -> int:
        return len(self.blocks)

    def __iter__(self) -> Iterator[Block]:
        return iter(self.blocks)

    def __getitem__(self, key: int | str | slice) -> Any:
        """An int or a name gives a Block; a slice gives a sub-chain sharing the layers."""
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self.blocks))
            if step != 1:
                raise SimdlError("chain[slice].step", step, "a chain range is contiguous (step 1)")
            in_shape = self._in_shape(1, start)[1:]
            dtype = self.in_dtype if start == 0 else np.float32
            n_classes = self.n_classes if stop == len(self.blocks) else None
            return Chain(self.blocks[start:stop], in_shape, dtype, n_classes,
                         f"{self.name}[{start}:{stop}]")
        if isinstance(key, str):
            return self.blocks[self.index(key)]
        return self.blocks[key]

    @property
    def names(self) -> list[str]:
        return [b.name for b in self.blocks]

    def index(self, name: str) -> int:
        """Position of block `name`."""
        for i, b in enumerate(self.blocks):
            if b.name == name:
                return i
        raise SimdlError("chain.block", name, f"choose one of: {', '.join(self.names)}")

    def _range(self, start: int, stop: int | None) -> tuple[int, int]:
        stop = len(self.blocks) if stop is None else stop
        if not 0 <= start <= stop <= len(self.blocks):
            raise SimdlError("chain.range", (start, stop),
                             f"need 0 <= start <= stop <= {len(self.blocks)}")
        return start, stop

    # -- numbers ---------------------------------------------------------------
    def forward(self, x: np.ndarray, train: bool = False, start: int = 0,
                stop: int | None = None) -> tuple[np.ndarray, list[Any]]:
        """Run blocks[start:stop] on `x` (batch first); returns the output and one cache per block."""
        start, stop = self._range(start, stop)
        caches = []
        for b in self.blocks[start:stop]:
            x, cache = b.layer.forward(x, train)
            caches.append(cache)
        return x, caches

    def backward(self, dy: np.ndarray, caches: list[Any], start: int = 0,
                 stop: int | None = None, need_dx: bool = True) -> np.ndarray | None:
        """Backward through blocks[start:stop] with the caches `forward` gave for that range.

        Adds into the blocks' grads; returns d(input), or None when the first
        block takes integer tokens or `need_dx` is False (the range starts the
        model, or nothing below it trains: its first layer skips that work).
        """
        start, stop = self._range(start, stop)
        if len(caches) != stop - start:
            raise SimdlError("chain.backward.caches", len(caches),
                             f"need one cache per block of [{start}, {stop}): {stop - start}")
        dx: np.ndarray | None = dy
        first = 0 if need_dx else 1
        for b, cache in zip(reversed(self.blocks[start + first:stop]), reversed(caches[first:])):
            dx = b.layer.backward(dx, cache)
        if not need_dx and stop > start:
            self.blocks[start].layer.backward_params(dx, caches[0])
            return None
        return dx

    def params(self) -> dict[str, np.ndarray]:
        """All parameters as "block.param" -> the layers' own arrays (updates land in the layers)."""
        return {f"{b.name}.{k}": v for b in self.blocks for k, v in b.layer.params.items()}

    def grads(self) -> dict[str, np.ndarray]:
        return {f"{b.name}.{k}": v for b in self.blocks for k, v in b.layer.grads.items()}

    def buffers(self) -> dict[str, np.ndarray]:
        return {f"{b.name}.{k}": v for b in self.blocks for k, v in b.layer.buffers.items()}

    def zero_grad(self) -> None:
        for b in self.blocks:
            b.layer.zero_grad()

    def n_params(self, start: int = 0, stop: int | None = None) -> int:
        """Trainable scalars in blocks[start:stop]."""
        start, stop = self._range(start, stop)
        return sum(int(p.size) for b in self.blocks[start:stop] for p in b.layer.params.values())

    def param_bytes(self, start: int = 0, stop: int | None = None) -> int:
        """Bytes of parameters and buffers stored by blocks[start:stop]."""
        start, stop = self._range(start, stop)
        return sum(b.layer.param_bytes() for b in self.blocks[start:stop])

    def astype(self, dtype: Any) -> Chain:
        """Cast every floating parameter, grad and buffer in place (float64 for gradient checks)."""
        for b in self.blocks:
            astype(b.layer, dtype)
        return self

    # -- costs -----------------------------------------------------------------
    def costs(self, batch: int) -> tuple[Cost, ...]:
        """Cost of each block for an input of shape (batch, *in_shape), without running it.

        Computed once per batch size and kept (the simulator asks for every micro-batch)."""
        costs = self._costs.get(batch)
        if costs is None:
            shape: Shape = (batch, *self.in_shape)
            out = []
            for b in self._blocks:
                c = b.layer.cost(shape)
                out.append(c)
                shape = c.out_shape
            costs = self._costs[batch] = tuple(out)
        return costs

    def _in_shape(self, batch: int, start: int) -> Shape:
        if start == 0:
            return (batch, *self.in_shape)
        return self.costs(batch)[start - 1].out_shape

    def cost(self, batch: int, start: int = 0, stop: int | None = None) -> Cost:
        """Cost of blocks[start:stop] run one after another (an empty range costs nothing)."""
        start, stop = self._range(start, stop)
        costs = self.costs(batch)[start:stop]
        if not costs:
            return Cost(out_shape=self._in_shape(batch, start))
        total = costs[0]
        for c in costs[1:]:
            total = total.then(c)
        return total

    def summary_frame(self, batch: int = 1) -> pd.DataFrame:
        """One row per block with exact numbers: shapes, parameters, FLOPs and bytes."""
        rows = []
        for b, c in zip(self.blocks, self.costs(batch)):
            rows.append({
                "block": b.name,
                "out_shape": tuple(c.out_shape),
                "params": sum(int(p.size) for p in b.layer.params.values()),
                "param_bytes": c.param_bytes,
                "fwd_flops": c.fwd_flops,
                "bwd_flops": c.bwd_flops,
                "out_bytes": c.out_bytes,
                "saved_bytes": c.saved_bytes,
                "fwd_bytes": c.fwd_bytes,
                "bwd_bytes": c.bwd_bytes,
            })
        return pd.DataFrame(rows)

    def summary(self, batch: int = 1) -> str:
        """A readable table: a title line, one row per block, then the totals."""
        df = self.summary_frame(batch)
        head = ["block", "output", "params", "fwd FLOPs", "bwd FLOPs", "out", "saved"]
        body = [[r.block, str(r.out_shape), human(r.params), human(r.fwd_flops),
                 human(r.bwd_flops), human_bytes(r.out_bytes), human_bytes(r.saved_bytes)]
                for r in df.itertuples()]
        total = ["total", "", human(df["params"].sum()), human(df["fwd_flops"].sum()),
                 human(df["bwd_flops"].sum()), human_bytes(df["out_bytes"].sum()),
                 human_bytes(df["saved_bytes"].sum())]
        table = [head, *body, total]
        widths = [max(len(row[i]) for row in table) for i in range(len(head))]

        def line(row: list[str]) -> str:
            cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
            cells += [cell.rjust(w) for cell, w in zip(row[2:], widths[2:])]
            return "  ".join(cells).rstrip()

        rule = "-" * len(line(head))
        title = (f"{self.name or 'chain'}: {self.n_params():,} parameters "
                 f"({human_bytes(self.param_bytes())} with buffers), input {self.in_shape} "
                 f"{self.in_dtype.name}, batch {batch}, {len(self)} blocks")
        return "\n".join([title, line(head), rule, *map(line, body), rule, line(total)])

    def __repr__(self) -> str:
        return f"Chain({self.name!r}, in_shape={self.in_shape}, blocks={self.names})"


def human(x: float) -> str:
    """A count or FLOPs in SI steps: 950, 12.3k, 4.56M, 7.89G."""
    for div, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}" if x != int(x) else str(int(x))


def human_bytes(x: float) -> str:
    """Bytes in binary steps: 512 B, 3.0 KiB, 1.2 MiB."""
    for div, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(x) >= div:
            return f"{x / div:.1f} {unit}"
    return f"{int(x)} B"
