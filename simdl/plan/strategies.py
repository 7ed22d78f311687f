"""Strategies: functions (world, **params) -> Plan, found by name in STRATEGIES.

A strategy's signature is its schema: the scenario's parameters are checked
against the type hints, so adding one is one function and one dict line.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

from annotated_types import Gt
from typing_extensions import NotRequired, TypedDict

from simdl.errors import PlanError
from simdl.plan.auto import alone, auto_cuts
from simdl.plan.baselines import memory_cuts
from simdl.plan.costs import Costs
from simdl.plan.estimate import balanced_cuts, block_times, group_block_times
from simdl.plan.lm_split import best_cuts
from simdl.plan.plan import Plan, Replica, Stage, single_path
from simdl.plan.world import Generation, Inference, World

PositiveInt = Annotated[int, Gt(0)]  # checked at the YAML edge, plain int here
Cuts = list[int] | Literal["auto"]


def distinct(field: str, devices: Sequence[str], group: str) -> None:
    """Refuse a device listed twice where each place holds a different part of the work
    (a stage, a replica, a shard, a server): twice would be one device posing as two."""
    for i, d in enumerate(devices):
        if d in devices[:i]:
            raise PlanError(field, d, f"each device at most once in {group}; it is listed twice")


def single(world: World, device: str | None = None, unit: str | None = None) -> Plan:
    """The whole model on one device (by default the one that owns the input)."""
    device = device or world.workload.source
    world.known("device", device)
    return single_path("single", world, [Stage((device,), 0, len(world.chain), unit)],
                       device=device)


def pipeline(world: World, devices: list[str], cuts: Cuts | Literal["memory"] = "auto",
             microbatches: PositiveInt = 1) -> Plan:
    """The chain cut into consecutive stages over `devices`, in the order given.

    `cuts` are the first block of every stage after the first; `auto` asks the
    planner (`plan.auto.auto_cuts`: the most requests per second, links and memory
    included; for generation `plan.lm_split.best_cuts`: the fastest decode step);
    `memory` is exo's split, blocks in proportion to each device's memory
    (`baselines.memory_cuts`). Each request's batch is cut into `microbatches` that
    stream through the stages.
    """
    if len(devices) < 2:
        raise PlanError("devices", devices, "a pipeline needs at least two devices")
    distinct("devices", devices, "a pipeline")
    stages = _stages(world, [[d] for d in devices], cuts, microbatches, "devices")
    return single_path("pipeline", world, stages, microbatches, devices=list(devices),
                       cuts=[s.start for s in stages[1:]])


def data_parallel(world: World, devices: list[str],
                  dispatch: Literal["round_robin", "least_loaded", "weighted", "split"] = "least_loaded",
                  microbatches: PositiveInt = 1) -> Plan:
    """A replica of the whole model on each device.

    Requests go to one replica each (round robin, the least loaded, or weighted by
    estimated speed), or each request's batch is `split` over all replicas in
    proportion to their speed. Weights are placed once, before the first request.
    """
    for d in devices:
        world.known("devices", d)
    distinct("devices", devices, "a data-parallel group")
    n, batch = len(world.chain), world.workload.batch
    speed = [1.0 / sum(block_times(world, d, batch)) for d in devices]
    replicas = tuple(Replica((Stage((d,), 0, n),), share=s / sum(speed))
                     for d, s in zip(devices, speed))
    return Plan("data_parallel", replicas, world.workload.source, microbatches, dispatch,
                params={"devices": list(devices), "dispatch": dispatch})


def tensor_parallel(world: World, devices: list[str], microbatches: PositiveInt = 1,
                    split: Literal["auto", "column", "row"] = "auto",
                    collective: Literal["ring", "star"] = "ring") -> Plan:
    """Every block split over the group `devices`, joined by all-gathers and all-reduces.

    `auto` is Megatron's pairing (a column split feeding a row split: one all-reduce
    per pair; conv output channels; attention heads, or kv-head groups; SwiGLU hidden
    units); `column` splits every layer by its outputs and all-gathers after each;
    `row` splits Linear and conv layers by their inputs and all-reduces after each.
    `collective` runs them as rings, or as a star through the first device (every
    member sends its part there and gets the result back, as distributed-llama does).
    """
    if len(devices) < 2:
        raise PlanError("devices", devices, "tensor parallelism needs at least two devices")
    for d in devices:
        world.known("devices", d)
    distinct("devices", devices, "a tensor-parallel group")
    stage = Stage(tuple(devices), 0, len(world.chain), split=split, collective=collective)
    star = {"collective": collective} if collective != "ring" else {}  # ring: as before
    return single_path("tensor_parallel", world, [stage], microbatches, devices=list(devices),
                       split=split, **star)


def hybrid(world: World, pipelines: list[list[list[str]]], cuts: Cuts = "auto",
           microbatches: PositiveInt = 1,
           dispatch: Literal["round_robin", "least_loaded", "weighted"] = "least_loaded") -> Plan:
    """Replicas (data parallel) of a pipeline whose stages are tensor-parallel groups.

    `pipelines` lists each replica's stages, each stage a list of devices (one
    device, or a group). Every replica has its own cuts when `auto`. A device holds
    one stage of a replica; replicas may share a device.
    """
    if isinstance(world.workload, Generation) and len(pipelines) != 1:
        raise PlanError("pipelines", len(pipelines), "1: a generation workload runs one "
                        "replica of stages")
    replicas = []
    for r, groups in enumerate(pipelines):
        distinct(f"pipelines[{r}]", [d for g in groups for d in g], "a replica's stages")
        stages = _stages(world, groups, cuts, microbatches, f"pipelines[{r}]")
        replicas.append(Replica(tuple(stages)))
    speed = [1.0] if len(replicas) == 1 else [  # one replica: nothing to share
        1.0 / max(sum(group_block_times(world, s.devices, world.workload.batch)[s.start:s.stop])
                  for s in rep.stages) for rep in replicas]
    replicas = [Replica(rep.stages, share=s / sum(speed)) for rep, s in zip(replicas, speed)]
    return Plan("hybrid", tuple(replicas), world.workload.source, microbatches, dispatch,
                params={"pipelines": pipelines})


def offload(world: World, target: str, cut: int | Literal["auto"] = "auto",
            microbatches: PositiveInt = 1) -> Plan:
    """Neurosurgeon's two-tier split (Kang et al., ASPLOS 2017): blocks before `cut` on
    the device that owns the input, the rest on `target` (an edge server or the cloud).

    `cut: 0` ships the raw input; `cut` = the number of blocks keeps all local;
    `auto` picks the cut whose request, alone, the planner's estimator finishes first
    (micro-batches included), among those the constraints allow.
    """
    source, n = world.workload.source, len(world.chain)
    world.known("target", target)
    if cut != "auto" and not 0 <= cut <= n:
        raise PlanError("cut", cut, f"a block index from 0 (all on {target}) to {n} (all local)")

    def at(c: int) -> Plan:
        stages = [Stage((d,), a, b) for d, a, b in ((source, 0, c), (target, c, n)) if a < b]
        return single_path("offload", world, stages, microbatches, target=target, cut=c)

    if cut != "auto":
        return at(cut)
    costs = Costs(world)
    first = 1 if world.input_stays_on == source else 0
    return min((at(c) for c in range(first, n + 1)),
               key=lambda p: (alone(p, costs), p.params["cut"]))


def ensemble(world: World, devices: list[str], models: list[str] | None = None,
             fuse: Literal["mean", "vote", "confidence"] = "mean") -> Plan:
    """Collaborative inference: each device runs a whole model (`models[i]`, one of
    the world's models, default the main one) on every request; predictions are
    fused by probability averaging, majority vote or confidence weighting. A device
    may run several members if their models differ; the same pair twice is one vote
    counted twice."""
    models = models or ["main"] * len(devices)
    if len(models) != len(devices):
        raise PlanError("models", models, f"one model per device ({len(devices)})")
    distinct("devices", [f"{m}@{d}" for d, m in zip(devices, models)],
             "an ensemble for the same model")
    replicas = []
    for d, m in zip(devices, models):
        world.known("devices", d)
        if m not in world.models:
            raise PlanError("models", m, f"choose one of: {', '.join(world.models)}")
        replicas.append(Replica((Stage((d,), 0, len(world.models[m])),), model=m))
    return Plan("ensemble", tuple(replicas), world.workload.source, 1, "all", fuse,
                params={"devices": list(devices), "models": list(models), "fuse": fuse})


class StageEntry(TypedDict):
    """One stage as a file writes it: blocks [start, stop) on `devices` (a group when
    several), on `unit` (default: the fastest) or several `units` of its one device
    sharing each micro-batch's samples in `unit_shares` (default: by speed), stored as
    `dtype`; a group joins its shards by `collective` (default ring, `Stage.collective`)."""

    devices: list[str]
    start: int
    stop: int
    unit: NotRequired[str]
    units: NotRequired[list[str]]
    unit_shares: NotRequired[list[float]]
    dtype: NotRequired[Literal["fp32", "fp16", "int8"]]
    collective: NotRequired[Literal["ring", "star"]]


class ReplicaEntry(TypedDict):
    """One replica's stages in chain order, and its `share` of the requests."""

    stages: list[StageEntry]
    share: NotRequired[float]


def explicit(world: World, replicas: list[ReplicaEntry],
             dispatch: Literal["round_robin", "least_loaded", "weighted", "split"] = "weighted",
             microbatches: PositiveInt = 1) -> Plan:
    """Every replica's stages exactly as written: any plan the planner finds, so that
    `simdl plan --out` can hand it to `simdl run` unchanged. Shares (default equal)
    must add up to 1; they are used as written, not rescaled, so a plan round-trips
    to the same bits. One replica has nothing to dispatch: `dispatch` is then ignored."""
    if not replicas:
        raise PlanError("replicas", replicas, "at least one replica")
    shares = [r.get("share", 1.0 / len(replicas)) for r in replicas]
    if any(not s > 0 for s in shares) or abs(sum(shares) - 1.0) > 1e-9:
        raise PlanError("replicas.share", shares, "fractions > 0 that add up to 1")
    made = []
    for r, (rep, share) in enumerate(zip(replicas, shares)):
        stages = []
        for i, s in enumerate(rep["stages"]):
            for d in s["devices"]:
                world.known(f"replicas[{r}].stages[{i}].devices", d)
            distinct(f"replicas[{r}].stages[{i}].devices", s["devices"], "a stage")
            stages.append(Stage(tuple(s["devices"]), s["start"], s["stop"], s.get("unit"),
                                s.get("dtype", "fp32"), units=tuple(s.get("units", ())),
                                unit_shares=tuple(s.get("unit_shares", ())),
                                collective=s.get("collective", "ring")))
        made.append(Replica(tuple(stages), share=share))
    how = dispatch if len(made) > 1 else "one"
    return Plan("explicit", tuple(made), world.workload.source, microbatches, how,
                params={"replicas": replicas, "dispatch": how})


def entry(plan: Plan) -> dict[str, Any]:
    """A strategy entry that makes `plan` again (the plainest that does): `single` or
    `pipeline` for one replica of one-device fp32 stages on their fastest units, else
    `explicit` with every stage, unit (or units and their shares), dtype, collective
    and share written out."""
    (first, *more) = plan.replicas
    plain = all(len(s.devices) == 1 and s.unit is None and (s.dtype, s.prune) == ("fp32", 0.0)
                and s.split == "auto" and not s.units for s in first.stages)
    if not more and plain and plan.dispatch == "one" and first.model == "main":
        if len(first.stages) == 1:
            return {"name": "single", "device": first.stages[0].device}
        return {"name": "pipeline", "devices": [s.device for s in first.stages],
                "cuts": [s.start for s in first.stages[1:]], "microbatches": plan.microbatches}
    for s in (s for r in plan.replicas for s in r.stages):
        if s.prune or s.split != "auto" or plan.dispatch == "all":
            raise PlanError("plan", plan.describe(), "stages without pruning or a split and "
                            "no fused answers (what `explicit` writes)")
    if any(r.model != "main" for r in plan.replicas):
        raise PlanError("plan", plan.describe(), "replicas of the main model")

    def stage(s: Stage) -> dict[str, Any]:
        out: dict[str, Any] = {"devices": list(s.devices), "start": s.start, "stop": s.stop}
        return out | ({"unit": s.unit} if s.unit else {}) | (
            {"units": list(s.units)} if s.units else {}) | (
            {"unit_shares": [float(v) for v in s.unit_shares]} if s.unit_shares else {}) | (
            {"dtype": s.dtype} if s.dtype != "fp32" else {}) | (
            {"collective": s.collective} if s.collective != "ring" else {})

    how = {"dispatch": plan.dispatch} if len(plan.replicas) > 1 else {}
    return {"name": "explicit", **how, "microbatches": plan.microbatches,
            "replicas": [{"stages": [stage(s) for s in r.stages], "share": float(r.share)}
                         for r in plan.replicas]}


def _stages(world: World, groups: list[list[str]], cuts: Cuts | Literal["memory"],
            microbatches: int,
            field: str, batch: int | None = None) -> list[Stage]:
    """Stages over `groups` in order, cut where `cuts` says or balanced by estimate."""
    batch = world.workload.batch if batch is None else batch
    n = len(world.chain)
    for g in groups:
        for d in g:
            world.known(field, d)
    if len(groups) > n:
        raise PlanError(field, groups, f"at most {n} stages, one block each at least")
    if microbatches > batch and not isinstance(world.workload, Generation):
        # a generation plan's micro-batches are decode groups, bounded by `max_batch`
        # (`sim.generation_plan.check_plan`)
        raise PlanError("microbatches", microbatches, f"at most the batch size ({batch})")
    if cuts == "memory":
        cuts = memory_cuts(world, [g[0] for g in groups])
    elif cuts == "auto" and isinstance(world.workload, Generation):
        cuts = best_cuts(world, [tuple(g) for g in groups])
    elif cuts == "auto" and isinstance(world.workload, Inference):
        cuts = auto_cuts(world, [tuple(g) for g in groups], microbatches)
    elif cuts == "auto":  # training: forward times balanced (the training planner's rule)
        size = -(-batch // microbatches)
        cuts = balanced_cuts([group_block_times(world, tuple(g), size) for g in groups])
    elif (len(cuts) != len(groups) - 1 or any(not 0 < c < n for c in cuts)
          or any(a >= b for a, b in zip(cuts, cuts[1:]))):
        raise PlanError("cuts", cuts, f"{len(groups) - 1} increasing block indices "
                        f"between 1 and {n - 1} (the chain has {n} blocks), 'auto' or 'memory'")
    bounds = [0, *cuts, n]
    return [Stage(tuple(g), a, b) for g, a, b in zip(groups, bounds, bounds[1:])]


Strategy = Callable[..., Plan]

STRATEGIES: dict[str, Strategy] = {
    "single": single,
    "pipeline": pipeline,
    "data_parallel": data_parallel,
    "tensor_parallel": tensor_parallel,
    "hybrid": hybrid,
    "offload": offload,
    "ensemble": ensemble,
    "explicit": explicit,
}
