"""The planner's search space and limits, and the per-stage costs its programs cut by.

A candidate stage is a device (at a precision, on a unit or several of its units
sharing each micro-batch) or a tensor-parallel group;
for each, `Menu` holds the matrices `plan.partition` needs: what blocks [i, j) cost
there by each objective, inf where they do not fit its memory (weights as deployed,
plus one micro-batch's footprint, as `plan.check` counts them), and what a hop costs.
Knows devices, routes and block costs (`plan.costs`); knows nothing of the search.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from simdl.errors import PlanError
from simdl.plan.costs import Costs, microbatch_sizes
from simdl.plan.partition import Link, range_max, stage_matrix
from simdl.plan.plan import DTYPES, Stage, shard_stage, shard_weights, split_rows
from simdl.plan.timeline import Lone, ring
from simdl.plan.world import Inference, World

OBJECTIVES = ("throughput", "latency", "energy")
#: How each objective adds up over a pipeline: a bottleneck, or a sum.
HOW = {"throughput": "max", "latency": "sum", "energy": "sum"}


@dataclass(frozen=True)
class Space:
    """What the search may choose: which `devices` take part (default: the whole pool; any
    may be left out), their order and cuts, `microbatches`, a precision per device from
    `dtypes`, the units per stage (`units`: every unit that runs the precision, alone or
    two or more of them sharing each micro-batch by speed, fastest first; else the
    fastest alone), tensor-parallel groups of up to `group` devices per stage, and
    several pipelines as data-parallel `replicas` sent requests by `dispatch`."""

    devices: tuple[str, ...] | None = None
    microbatches: tuple[int, ...] = (1,)
    dtypes: tuple[str, ...] = ("fp32",)
    units: bool = False
    group: int = 1
    replicas: bool = True
    dispatch: str = "weighted"
    max_stages: int | None = None

    def validate(self, world: World) -> None:
        """PlanError naming the first field that is not allowed."""
        for d in self.devices or ():
            world.known("space.devices", d)
        for m in self.microbatches:
            if not (isinstance(m, int) and 1 <= m):
                raise PlanError("space.microbatches", m, "whole numbers >= 1")
        if not self.microbatches:
            raise PlanError("space.microbatches", (), "at least one choice")
        for t in self.dtypes:
            if t not in DTYPES:
                raise PlanError("space.dtypes", t, f"choose from: {', '.join(DTYPES)}")
        if self.group < 1:
            raise PlanError("space.group", self.group, "1 (no groups) or more devices")
        if self.dispatch not in ("weighted", "least_loaded", "round_robin"):
            raise PlanError("space.dispatch", self.dispatch,
                            "weighted, least_loaded or round_robin")


@dataclass(frozen=True)
class Limits:
    """What every plan the search returns must meet, besides memory (always) and the
    world's `input_stays_on`: joules per device over the run (`energy`), seconds each
    battery must last at the plan's draw (`battery_life`), and a p50 `latency` (s)."""

    energy: Mapping[str, float] = field(default_factory=dict)
    battery_life: Mapping[str, float] = field(default_factory=dict)
    latency: float | None = None


@dataclass(frozen=True)
class Option:
    """A candidate stage: where it runs and how."""

    devices: tuple[str, ...]
    dtype: str = "fp32"
    unit: str | None = None
    units: tuple[str, ...] = ()  # a unit split (shares by speed on the stage's blocks)

    def stage(self, start: int, stop: int) -> Stage:
        return Stage(self.devices, start, stop, self.unit, self.dtype, units=self.units)


class Menu:
    """Every candidate stage of the space for `microbatches`, with its cost matrices."""

    def __init__(self, costs: Costs, space: Space, microbatches: int,
                 devices: tuple[str, ...] | None = None):
        world = costs.world
        load = world.workload
        assert isinstance(load, Inference)
        self.costs, self.world, self.source = costs, world, load.source
        self.sizes = microbatch_sizes(load.batch, microbatches)
        self.microbatches = len(self.sizes)
        pool = devices or space.devices or tuple(world.devices)
        self.devices = tuple(pool)
        self.options: list[Option] = []
        for d in pool:
            spec = world.devices[d]
            for dtype in space.dtypes:
                units = [u for u, us in spec.units.items() if dtype in us.peak]
                if not units:
                    continue
                best = costs.unit(d, None, dtype)
                for u in (units if space.units else [best]):
                    self.options.append(Option((d,), dtype, None if u == best else u))
                fastest = sorted(units, key=lambda u: (-spec.units[u].peak[dtype]
                                                       * spec.units[u].efficiency, u))
                for k in range(2, len(units) + 1 if space.units else 2):
                    self.options += [Option((d,), dtype, units=c) for c in combinations(fastest, k)]
        for size in range(2, space.group + 1):
            for combo in combinations(pool, size):
                for lead in combo:
                    self.options.append(Option((lead, *[d for d in combo if d != lead])))
        self.index = {d: i for i, d in enumerate(pool)}
        acts = [costs.acts(n) for n in self.sizes]
        self.total = np.sum(acts, axis=0)       # bytes a request sends across each cut
        self.first = acts[0]                     # ... one (the largest) micro-batch
        self._matrices: dict[tuple[int, str], np.ndarray] = {}
        self.found: dict[tuple, dict] = {}  # the programs' answers (`plan.candidates`)
        self._fits = [self._fit(o) for o in self.options]

    def members(self, g: int) -> list[int]:
        return [self.index[d] for d in self.options[g].devices]

    def nbytes(self, objective: str) -> np.ndarray:
        """Bytes across each cut [input, after block 0, ..., answer] the objective counts:
        a whole request's, or the first micro-batch's for latency."""
        return self.first if objective == "latency" else self.total

    def matrix(self, g: int, objective: str) -> np.ndarray:
        """Stage costs of option g by `objective` (seconds per request on its busiest
        server; seconds of the first micro-batch; joules per request)."""
        key = (g, objective)
        if key not in self._matrices:
            self._matrices[key] = self._build(g, objective)
        return self._matrices[key]

    def link(self, src: int | None, dst: int | None, objective: str) -> Link:
        """The hop from option `src` to `dst` (None: the source device), alone on its route."""
        a = self.source if src is None else self.options[src].devices[0]
        targets = [self.source] if dst is None else list(self.options[dst].devices)
        hops = [self.costs.hop(a, b) for b in targets if b != a]
        if not hops:
            return Link(0.0, 0.0)
        capacity = self.world.network.capacity
        if objective == "throughput":
            return Link(0.0, max(k / capacity[r] for h in hops for r, k in h.uses))
        if objective == "latency":
            return Link(max(h.delay for h in hops), max(1.0 / h.rate for h in hops))
        specs = self.world.devices
        return Link(0.0, sum((sum(specs[d].radio_tx_power for d in h.tx)
                              + sum(specs[d].radio_rx_power for d in h.rx)) / h.rate
                             for h in hops))

    def per_block(self, g: int, objective: str) -> np.ndarray:
        """A one-device option's cost of each block by `objective`, memory aside (a unit
        split's on the whole chain's shares, on its busiest unit but for energy)."""
        o = self.options[g]
        if o.units:
            loads = self._unit_loads(o, 0, len(self.world.chain), objective)
            return (sum(loads.values()) if objective == "energy"
                    else max(loads.values(), key=lambda v: v.sum()))
        d = o.devices[0]
        sizes = self.sizes[:1] if objective == "latency" else self.sizes
        per = sum(self.costs.kernels(d, n, o.unit, o.dtype) for n in sizes)
        if objective == "energy":
            per = per * self.costs.power(d, self.costs.unit(d, o.unit, o.dtype))
        return per

    def _unit_loads(self, o: Option, i: int, j: int, objective: str) -> dict[str, np.ndarray]:
        """A unit split of blocks [i, j): per unit, each block's seconds over the objective's
        micro-batches (joules for energy), its rows cut by the shares the stage gets."""
        d, n = o.devices[0], len(self.world.chain)
        shares = self.costs.shares(Stage((d,), i, j, dtype=o.dtype, units=o.units), self.sizes[0])
        out = {u: np.zeros(n) for u in o.units}
        for size in (self.sizes[:1] if objective == "latency" else self.sizes):
            for u, rows in zip(o.units, split_rows(size, shares)):
                if rows:
                    out[u] = out[u] + self.costs.kernels(d, rows, u, o.dtype)
        if objective == "energy":
            out = {u: v * self.costs.power(d, u) for u, v in out.items()}
        return out

    def _split_matrix(self, g: int, objective: str) -> np.ndarray:
        """A unit split's costs of blocks [i, j): its shares change with the range, so each
        range is costed as the estimator's timeline does: its busiest unit (throughput),
        its last unit to finish the first micro-batch (latency), all units' joules."""
        o, n = self.options[g], len(self.world.chain)
        out = np.full((n + 1, n + 1), np.inf)
        for i in range(n):
            for j in range(i + 1, n + 1):
                if self._fits[g][i, j]:
                    loads = self._unit_loads(o, i, j, objective)
                    cost = [float(v[i:j].sum()) for v in loads.values()]
                    out[i, j] = sum(cost) if objective == "energy" else max(cost)
        return out

    def _build(self, g: int, objective: str) -> np.ndarray:
        o, fits = self.options[g], self._fits[g]
        sizes = self.sizes[:1] if objective == "latency" else self.sizes
        if o.units:
            return self._split_matrix(g, objective)
        if len(o.devices) == 1:
            return stage_matrix(self.per_block(g, objective), fits)
        loads: dict[tuple[str, ...], np.ndarray] = {}
        n = len(self.world.chain)
        time, joules = np.zeros(n), np.zeros(n)
        for size in sizes:
            for b, block in enumerate(self.costs.group(o.devices, size)):
                scratch = Lone()
                for kind, what in block.ops:
                    if kind == "compute":
                        time[b] += max(what)
                        for d, k in zip(o.devices, what):
                            unit = self.costs.unit(d, None)
                            scratch.busy[("unit", d, unit)] += k
                            scratch.energy[d] += self.costs.power(d, unit) * k
                    else:
                        time[b] += ring(scratch, o.devices, float(what),
                                         1 if kind == "gather" else 2, self.costs)
                for server, busy in scratch.busy.items():
                    loads.setdefault(server, np.zeros(n))[b] += busy
                joules[b] += sum(scratch.energy.values())
        if objective == "throughput":
            return np.max([stage_matrix(v, fits) for v in loads.values()], axis=0)
        return stage_matrix(time if objective == "latency" else joules, fits)

    def _fit(self, o: Option) -> np.ndarray:
        """fits[i, j]: blocks [i, j) fit every member beside one micro-batch's footprint."""
        size = self.sizes[0]
        acts = self.costs.acts(size)
        live = range_max(acts[:-1] + acts[1:])
        n = len(acts) - 1
        ok = np.ones((n + 1, n + 1), dtype=bool)
        if len(o.devices) == 1:
            held = [np.concatenate([[0.0], np.cumsum(self.costs.weights(o.dtype))])]
        else:
            chain = self.world.chain
            per = np.array([shard_weights(shard_stage(chain, Stage(o.devices, b, b + 1)),
                                          len(o.devices)) for b in range(n)])
            held = [np.concatenate([[0.0], np.cumsum(per[:, m])]) for m in range(len(o.devices))]
        for d, prefix in zip(o.devices, held):
            need = prefix[None, :] - prefix[:, None] + live
            if d == self.source:
                need = np.maximum(need, max(acts[0], acts[-1]))
            ok &= need <= self.world.devices[d].memory
        return ok
