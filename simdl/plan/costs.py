"""What the estimator and the planner look up again and again, computed once per world.

The same device and network models the simulator charges: a block's kernel time is
`kernel_time` on the unit the run would pick (deployed weights, sparse speed-ups),
a hop is its route's latency and overhead, then its bottleneck rate alone, and the
bytes a micro-batch holds are `plan.footprint`'s. Knows devices, routes and block
costs; knows nothing of queues, plans' timelines or the clock.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from simdl.hw.devices import best_unit, kernel_time, sparse_speedup
from simdl.hw.maxmin import max_min_few
from simdl.nn import shard as tp
from simdl.nn.chain import Chain
from simdl.plan.plan import (
    Stage,
    charged_flops,
    deployed_chain,
    input_bytes,
    split_shares,
    stored_fraction,
)
from simdl.plan.world import World


@dataclass(frozen=True)
class Hop:
    """One transfer's path from `src` to `dst`: `delay` (route latency + message overhead)
    before its bytes flow, then `rate` bytes/s when alone; `uses` each resource with its
    crossings; radios that send (`tx`: source and relaying devices) and receive (`rx`)."""

    src: str
    dst: str
    delay: float
    rate: float
    uses: tuple[tuple[str, int], ...]
    tx: tuple[str, ...]
    rx: tuple[str, ...]

    def seconds(self, nbytes: float) -> float:
        """The bandwidth phase of `nbytes` alone on the route (0 on one device)."""
        return nbytes / self.rate if self.uses and nbytes else 0.0

    def time(self, nbytes: float) -> float:
        """A flow of `nbytes` alone on the route, start to end (0 on one device)."""
        return self.delay + self.seconds(nbytes) if self.uses else 0.0


@dataclass(frozen=True)
class GroupBlock:
    """A tensor-parallel block: per op, each member's kernel seconds, or a collective
    ("gather" or "reduce") of its payload bytes."""

    ops: tuple[tuple[str, tuple[float, ...] | float], ...]


class Costs:
    """A cache over one world (the world is frozen, so nothing goes stale). `chains`: chains
    already deployed, by (model, dtype, prune, sparsity), as `sim.stages.prepare` has them."""

    def __init__(self, world: World, chains: dict[tuple, Chain] | None = None):
        self.world = world
        self._chains: dict[tuple, Chain] = dict(chains or {})
        self._kernels: dict[tuple, np.ndarray] = {}
        self._hops: dict[tuple[str, str], Hop] = {}
        self._acts: dict[tuple[str, int], np.ndarray] = {}
        self._weights: dict[tuple, np.ndarray] = {}
        self._groups: dict[tuple, list[GroupBlock]] = {}

    def chain(self, model: str = "main", dtype: str = "fp32", prune: float = 0.0,
              sparsity: str = "unstructured") -> Chain:
        """The chain a stage runs: `model` deployed as the run deploys it (`sim.stages`)."""
        key = (model, dtype, prune, sparsity)
        if key not in self._chains:
            self._chains[key] = deployed_chain(self.world.models[model], dtype, prune, sparsity)
        return self._chains[key]

    def unit(self, device: str, unit: str | None, dtype: str = "fp32") -> str:
        """The unit a kernel runs on: the one named, else the fastest for `dtype`."""
        return unit or best_unit(self.world.devices[device], dtype)

    def kernels(self, device: str, size: int, unit: str | None = None, dtype: str = "fp32",
                prune: float = 0.0, sparsity: str = "unstructured",
                model: str = "main") -> np.ndarray:
        """Seconds of each block's kernel for a micro-batch of `size`, as `sim.stages`
        charges it (sparse products sped up where the unit has that mode)."""
        key = (device, size, unit, dtype, prune, sparsity, model)
        found = self._kernels.get(key)
        if found is None:
            spec = self.world.devices[device]
            chain = self.chain(model, dtype, prune, sparsity)
            speedup = sparse_speedup(spec, unit, dtype, sparsity if prune else None)
            name = self.unit(device, unit, dtype)
            found = np.array([kernel_time(spec, name, charged_flops(c, speedup), c.fwd_bytes, dtype)
                              for c in chain.costs(size)])
            self._kernels[key] = found
        return found

    def shares(self, s: Stage, size: int, model: str = "main") -> tuple[float, ...]:
        """A unit split's shares of each micro-batch: as written, else by each unit's speed
        on the stage's blocks for `size` samples (`plan.split_shares`)."""
        if s.unit_shares:
            return s.unit_shares
        return split_shares([sum(self.kernels(s.device, size, u, s.dtype, s.prune, s.sparsity,
                                              model)[s.start:s.stop].tolist()) for u in s.units])

    def group(self, devices: tuple[str, ...], size: int, split: str = "auto",
              unit: str | None = None, model: str = "main") -> list[GroupBlock]:
        """Per block, a tensor-parallel group's shard kernels and collectives (fp32)."""
        key = (devices, size, split, unit, model)
        if key not in self._groups:
            chain, specs = self.world.models[model], [self.world.devices[d] for d in devices]
            units = [self.unit(d, unit) for d in devices]
            shape, out = (size, *chain.in_shape), []
            for b, cost in enumerate(chain.costs(size)):
                program = tp.shard(chain[b].layer, len(devices), split, chain.names[b])
                ops: list[tuple[str, tuple[float, ...] | float]] = []
                for op, op_cost in zip(program.ops, program.costs(shape)):
                    if isinstance(op, tp.Compute):
                        ops.append(("compute", tuple(
                            kernel_time(s, u, c.fwd_flops, c.fwd_bytes)
                            for s, u, c in zip(specs, units, op_cost))))
                    elif isinstance(op, (tp.Gather, tp.Reduce)):
                        ops.append(("gather" if isinstance(op, tp.Gather) else "reduce",
                                    float(op_cost.nbytes)))
                out.append(GroupBlock(tuple(ops)))
                shape = cost.out_shape
            self._groups[key] = out
        return self._groups[key]

    def hop(self, src: str, dst: str) -> Hop:
        """The hop from `src` to `dst` (PlanError when there is no route)."""
        found = self._hops.get((src, dst))
        if found is None:
            if src == dst:
                found = Hop(src, dst, 0.0, float("inf"), (), (), ())
            else:
                net = self.world.network
                route = net.route(src, dst)
                uses = tuple(Counter(route.resources).items())
                rate = min(net.capacity[r] / n for r, n in uses)
                kind = net.graph.nodes
                relays = tuple(n for n in route.nodes[1:-1] if kind[n]["kind"] == "device")
                found = Hop(src, dst, route.latency + net.overhead, rate, uses,
                            (src, *relays), (dst, *relays))
            self._hops[(src, dst)] = found
        return found

    def acts(self, size: int, model: str = "main") -> np.ndarray:
        """Bytes a micro-batch of `size` carries: [raw input, block 0's output, ...]."""
        key = (model, size)
        if key not in self._acts:
            chain = self.world.models[model]
            self._acts[key] = np.array([input_bytes(chain, size)]
                                       + [c.out_bytes for c in chain.costs(size)], dtype=float)
        return self._acts[key]

    def weights(self, dtype: str = "fp32", prune: float = 0.0, sparsity: str = "unstructured",
                model: str = "main") -> np.ndarray:
        """Bytes of each block's weights as `plan.check` counts them on one device."""
        key = (model, dtype, prune, sparsity)
        if key not in self._weights:
            chain = self.world.models[model]
            frac = stored_fraction(dtype, prune, sparsity)
            self._weights[key] = np.array([chain.param_bytes(b, b + 1) * frac
                                           for b in range(len(chain))])
        return self._weights[key]

    def rates(self, hops: list[Hop]) -> list[float]:
        """Max-min rates of one flow on each of `hops`, all at once (inf on one device)."""
        names = sorted({r for h in hops for r, _ in h.uses})
        index = {r: i for i, r in enumerate(names)}
        cap = self.world.network.capacity
        return max_min_few([[index[r] for r, k in h.uses for _ in range(k)] for h in hops],
                           [cap[r] for r in names])

    def power(self, device: str, unit: str) -> float:
        """Watts above idle while `unit` of `device` runs a kernel."""
        return self.world.devices[device].units[unit].active_power


@lru_cache(maxsize=256)
def microbatch_sizes(batch: int, microbatches: int) -> tuple[int, ...]:
    """The sizes of a batch's micro-batches, cut as np.array_split cuts (at most `batch`
    of them; the first batch % m one larger), without an array per request: one rule
    for the run (`sim.stages`) and the estimator."""
    m = max(1, min(microbatches, batch))
    return tuple(batch // m + (j < batch % m) for j in range(m))
