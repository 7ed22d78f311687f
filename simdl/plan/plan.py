"""A plan: what runs where, as plain data the simulator executes and an estimator scores.

A plan names devices, block ranges and deployments only; it holds no arrays and
no simpy objects, so a planner can build, compare and store thousands of them.
Every strategy, from a single device to a replicated pipeline of tensor-parallel
groups or an ensemble, is one shape: replicas of stages.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from simdl.errors import PlanError
from simdl.nn.core import nbytes
from simdl.plan.world import World

#: How a request finds replicas: one replica, one chosen per request, its batch split
#: over all of them, or all of them with their outputs fused (an ensemble).
DISPATCH = ("one", "round_robin", "least_loaded", "weighted", "split", "all")
FUSE = ("mean", "vote", "confidence")
DTYPES = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class Stage:
    """Blocks [start, stop) on one device, or split over a tensor-parallel group.

    The first device leads: activations enter and leave the stage there. The
    stage's weights are deployed as `dtype` with a `prune` fraction removed; a
    group splits its layers as `split` says (see `simdl.nn.shard`).
    """

    devices: tuple[str, ...]
    start: int
    stop: int
    unit: str | None = None
    dtype: str = "fp32"
    prune: float = 0.0
    split: str = "auto"  # how a group splits layers: auto (Megatron), column or row

    @property
    def device(self) -> str:
        return self.devices[0]


@dataclass(frozen=True)
class Replica:
    """One copy of a model (`model` names one of the world's models): stages in chain
    order, and its `share` of requests or of each batch."""

    stages: tuple[Stage, ...]
    model: str = "main"
    share: float = 1.0

    @property
    def path(self) -> str:
        return ">".join("+".join(s.devices) for s in self.stages)


@dataclass(frozen=True)
class Plan:
    """Replicas of stages, how requests reach them, and how their batches stream.

    Each request's batch (or its share, with `split`) is cut into `microbatches`
    that stream through a replica's stages; answers go back to `source`.
    """

    strategy: str
    replicas: tuple[Replica, ...]
    source: str
    microbatches: int = 1
    dispatch: str = "one"
    fuse: str = "mean"
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> str:
        """The devices a request visits, e.g. 'phone>tv' or 'pc | laptop'."""
        return " | ".join(r.path for r in self.replicas)

    @property
    def devices(self) -> list[str]:
        seen: dict[str, None] = {}
        for r in self.replicas:
            for s in r.stages:
                seen.update(dict.fromkeys(s.devices))
        return list(seen)

    def describe(self) -> str:
        def stage(s: Stage) -> str:
            where = "+".join(s.devices)
            dep = "" if (s.dtype, s.prune) == ("fp32", 0.0) else f" [{s.dtype}" + (
                f", {s.prune:.0%} pruned]" if s.prune else "]")
            return f"blocks {s.start}-{s.stop - 1} on {where}{dep}"

        reps = [" | ".join(stage(s) for s in r.stages) for r in self.replicas]
        if len(reps) > 1:
            reps = [f"({r})" for r in reps]
        mb = f", {self.microbatches} micro-batches" if self.microbatches > 1 else ""
        how = "" if self.dispatch == "one" else f", {self.dispatch}"
        return f"{self.strategy}: {' + '.join(reps)}{how}{mb}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def single_path(strategy: str, world: World, stages: list[Stage], microbatches: int = 1,
                **params: Any) -> Plan:
    """A plan with one replica of the main model (what most strategies make)."""
    return Plan(strategy, (Replica(tuple(stages)),), world.workload.source, microbatches,
                params=params)


def check(plan: Plan, world: World) -> None:
    """Refuse a plan that cannot run: bad ranges, unknown devices or models, no route,
    a raw input that must not leave its device, or too little memory.

    Memory counts each device's weights (at their deployed width) plus one
    micro-batch's largest activation pair (a block's input and output are alive together).
    """
    if plan.dispatch not in DISPATCH:
        raise PlanError("dispatch", plan.dispatch, f"choose one of: {', '.join(DISPATCH)}")
    if plan.fuse not in FUSE:
        raise PlanError("fuse", plan.fuse, f"choose one of: {', '.join(FUSE)}")
    if not plan.replicas:
        raise PlanError("replicas", [], "a plan needs at least one replica")
    need: dict[str, float] = {}
    for r, rep in enumerate(plan.replicas):
        _check_replica(world, plan, rep, f"replicas[{r}]", need)
    for device, bytes_needed in need.items():
        capacity = world.devices[device].memory
        if bytes_needed > capacity:
            raise PlanError(f"devices.{device}.memory", f"{bytes_needed / 2**20:.1f} MiB needed",
                            f"the plan must fit in {capacity / 2**20:.1f} MiB")


def _check_replica(world: World, plan: Plan, rep: Replica, where: str,
                   need: dict[str, float]) -> None:
    if rep.model not in world.models:
        raise PlanError(f"{where}.model", rep.model, f"choose one of: {', '.join(world.models)}")
    chain = world.models[rep.model]
    n, at = len(chain), 0
    for i, s in enumerate(rep.stages):
        for d in s.devices:
            world.known(f"{where}.stages[{i}].devices", d)
        if s.start != at or not s.start < s.stop <= n:
            raise PlanError(f"{where}.stages[{i}].blocks", (s.start, s.stop),
                            f"stages must cover blocks 0..{n - 1} in order, each at least one block")
        if s.dtype not in DTYPES:
            raise PlanError(f"{where}.stages[{i}].dtype", s.dtype, f"choose one of: {', '.join(DTYPES)}")
        if not 0.0 <= s.prune < 1.0:
            raise PlanError(f"{where}.stages[{i}].prune", s.prune, "a fraction in [0, 1)")
        at = s.stop
    if at != n:
        raise PlanError(f"{where}.stages", at, f"the last stage must end at block {n}")
    stay = world.input_stays_on
    if stay is not None and plan.source == stay and rep.stages[0].devices != (stay,):
        raise PlanError("input_stays_on", stay, f"the raw input may not leave {stay}: the first "
                        f"stage must run on {stay} alone, not on {'+'.join(rep.stages[0].devices)}")
    hops = [plan.source] + [d for s in rep.stages for d in s.devices] + [plan.source]
    for a, b in zip(hops, hops[1:]):
        if a != b:
            world.network.route(a, b)
    batch = -(-world.workload.batch // plan.microbatches)
    costs = chain.costs(batch)
    for i, s in enumerate(rep.stages):
        if len(s.devices) > 1 and (s.dtype, s.prune) != ("fp32", 0.0):
            raise PlanError(f"{where}.stages[{i}].dtype", s.dtype, "a tensor-parallel group "
                            "runs fp32 weights (compressed shards are not supported yet)")
        weights = chain.param_bytes(s.start, s.stop) * stored_fraction(s.dtype, s.prune)
        live = max(c.in_bytes + c.out_bytes for c in costs[s.start:s.stop])
        for d in s.devices:  # a tensor-parallel member holds its share of the weights
            need[d] = need.get(d, 0.0) + weights / len(s.devices) + live


def stored_fraction(dtype: str, prune: float) -> float:
    """About what share of its fp32 bytes a deployed weight keeps: the narrower width,
    and for pruned weights index-and-value pairs (4-byte indices) when that is smaller."""
    width = {"fp32": 4, "fp16": 2, "int8": 1}[dtype]
    return min(width, (1.0 - prune) * (width + 4)) / 4


def input_bytes(chain: Any, batch: int) -> int:
    """Bytes of one batch of raw input as it lives on the source device."""
    return nbytes((batch, *chain.in_shape), chain.in_dtype.itemsize)
