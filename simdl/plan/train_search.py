"""The training planner: which workers, how they synchronise (collective and its algorithm,
parameter servers and their mode and staleness bound, gossip, local SGD and its local
steps, or a pipeline and its schedule), and how gradients are compressed, ranked by the
estimated time of the workload's steps (`plan.train_estimate`).

Small pools try every set of workers; large ones the fastest k devices for every k.
Plans whose peak memory does not fit (`plan.train_memory`) are refused. The time per
step is not the whole story: local SGD, asynchronous servers and lossy compression
need more steps to reach the same loss, which no step-time estimate sees. The default
space therefore holds only lossless, synchronous choices; `TO_TARGET` holds them all,
for a planner that re-scores the fastest few by simulating their numerics
(`simdl.train_rescore`): `shortlist` picks those few, one per way of training the
numbers (`numerics`), and `reference` the plan a user would try first.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import combinations, permutations

from simdl.errors import PlanError
from simdl.plan import train_memory
from simdl.plan.costs import Costs
from simdl.plan.train_estimate import TrainEstimate, train_estimate
from simdl.plan.training import (
    TrainPlan,
    allreduce,
    gossip,
    local_sgd,
    parameter_server,
    pipeline_train,
    single_device,
)
from simdl.plan.world import Training, World

SYNCS = ("allreduce", "parameter_server", "gossip", "local_sgd", "pipeline_train")


@dataclass(frozen=True)
class TrainSpace:
    """What the training search may choose (each a tuple of choices): the `syncs` and
    their parameters, gradient `compressions` (fp16, int8, topk, sign: lossy) with
    top-k's `ratio`, and at most `max_stages` devices per pipeline.

    How the time-to-target planner (`simdl.train_rescore`) judges them: it simulates the
    `top` fastest ways of training (`shortlist`) and the `reference`; the target is
    `target_loss` (held-out), by default the lowest the reference reaches in the
    workload's steps; each trains until the target or `patience` times the workload's
    steps; a lossily compressed plan must reach it `margin` sooner than the others."""

    devices: tuple[str, ...] | None = None
    syncs: tuple[str, ...] = ("allreduce", "parameter_server", "pipeline_train")
    algorithms: tuple[str, ...] = ("ring", "tree", "halving_doubling")
    modes: tuple[str, ...] = ("bsp",)
    staleness: tuple[int, ...] = (2,)
    local_steps: tuple[int, ...] = (4,)
    compressions: tuple[str, ...] = ("none",)
    ratio: float = 0.01
    microbatches: tuple[int, ...] = (4,)
    schedules: tuple[str, ...] = ("gpipe", "1f1b")
    max_stages: int = 4
    top: int = 6
    target_loss: float | None = None
    patience: float = 2.0
    margin: float = 0.1


#: The space of the time-to-target objective (`simdl.train_rescore`): every sync the
#: simulator trains with real numerics, asynchronous and stale servers, local SGD every
#: 2, 4 or 8 steps, and every gradient compression (top-k and sign with error feedback).
TO_TARGET = TrainSpace(syncs=("allreduce", "parameter_server", "local_sgd", "pipeline_train"),
                       modes=("bsp", "ssp", "asp"), local_steps=(2, 4, 8),
                       compressions=("none", "fp16", "int8", "topk", "sign"))

#: Sync kinds whose workers all take the same update every step (`TrainPlan.sync.kind`).
SYNCHRONOUS = ("none", "allreduce", "pipeline")


@dataclass(frozen=True)
class TrainSearch:
    """The best training plan, the feasible ones ranked (fastest workload first), how
    many were estimated and how many memory refused."""

    best: TrainEstimate
    ranked: tuple[TrainEstimate, ...]
    examined: int
    refused: int = field(default=0)


def train_search(world: World, space: TrainSpace | None = None, *, exact_up_to: int = 6,
                 costs: Costs | None = None) -> TrainSearch:
    """The training plan whose steps the estimate says finish first."""
    load = world.workload
    assert isinstance(load, Training), "train_search plans training workloads"
    space = space or TrainSpace()
    _check(space)
    devices = tuple(space.devices or world.devices)
    for d in devices:
        world.known("space.devices", d)
    costs = costs or Costs(world)
    found, refused, seen = [], 0, 0
    for plan in _candidates(world, space, devices, exact_up_to, costs):
        seen += 1
        try:
            train_memory.check(plan, world)
        except PlanError:
            refused += 1
            continue
        found.append(train_estimate(plan, world, costs))
    if not found:
        raise PlanError("search", f"{seen} training plans", "none fits memory")
    ranked = tuple(sorted(found, key=lambda e: (e.total, len(e.plan.workers), e.plan.describe())))
    return TrainSearch(ranked[0], ranked, seen, refused)


def _candidates(world: World, space: TrainSpace, devices: tuple[str, ...], exact_up_to: int,
                costs: Costs) -> Iterator[TrainPlan]:
    load = world.workload
    owners = len(load.data_on)
    alone = {d: train_estimate(single_device(world, d), world, costs).step for d in devices}
    fastest = sorted(devices, key=lambda d: (alone[d], d))
    if len(devices) <= exact_up_to:
        groups = [g for k in range(1, len(devices) + 1) for g in combinations(devices, k)]
        servers = list(devices)
    else:
        groups = [tuple(fastest[:k]) for k in range(1, len(devices) + 1)]
        servers = fastest[:2]
    for d in devices:
        yield single_device(world, d)
    for group in groups:
        if not 1 < len(group) <= owners:
            continue
        workers = list(group)
        for comp in space.compressions:
            kw = {"compression": comp, "ratio": space.ratio}
            if "allreduce" in space.syncs:
                for algorithm in space.algorithms:
                    yield allreduce(world, workers, algorithm, **kw)
            if "parameter_server" in space.syncs:
                for server in servers:
                    for mode in space.modes:
                        for bound in space.staleness if mode == "ssp" else (2,):
                            yield parameter_server(world, [server], workers, mode, bound, **kw)
            if "gossip" in space.syncs:
                yield gossip(world, workers, **kw)
            if "local_sgd" in space.syncs:
                for h in space.local_steps:
                    yield local_sgd(world, workers, h, **kw)
    if "pipeline_train" in space.syncs:
        pool = devices if len(devices) <= exact_up_to else tuple(fastest[:space.max_stages])
        for k in range(2, min(space.max_stages, len(pool), len(world.chain)) + 1):
            for order in permutations(pool, k):
                for m in space.microbatches:
                    if m > load.batch:
                        continue
                    for schedule in space.schedules:
                        yield pipeline_train(world, list(order), "auto", m, schedule)


def _check(space: TrainSpace) -> None:
    """A PlanError naming the first field of `space` out of its range."""
    for s in space.syncs:
        if s not in SYNCS:
            raise PlanError("space.syncs", s, f"choose from: {', '.join(SYNCS)}")
    for name, ok, allowed in (
            ("top", space.top >= 1, "a whole number >= 1"),
            ("target_loss", space.target_loss is None or space.target_loss > 0,
             "a held-out loss > 0, or none (the reference's best)"),
            ("patience", space.patience >= 1, "a number >= 1 (times the workload's steps)"),
            ("margin", space.margin >= 0, "a fraction >= 0")):
        if not ok:
            raise PlanError(f"space.{name}", getattr(space, name), allowed)


def lossless(plan: TrainPlan) -> bool:
    """Whether every worker takes the update one device would take on the global batch:
    synchronous, uncompressed (up to the order floats are summed in)."""
    s = plan.sync
    return s.compression == "none" and (s.kind in SYNCHRONOUS or (s.kind == "ps" and
                                                                  s.mode == "bsp"))


def numerics(plan: TrainPlan) -> tuple:
    """A key equal for plans that train the same numbers (up to float summation order and
    per-worker batch statistics), whatever devices, collective or schedule they use: the
    lossless ones share one; the rest differ by sync, its parameters, compression and
    worker count (each worker compresses, drifts or lags on its own)."""
    if lossless(plan):
        return ("lossless", plan.freeze)
    s = plan.sync
    return (s.kind, s.mode if s.kind == "ps" else "", s.staleness if s.mode == "ssp" else 0,
            s.local_steps if s.kind == "local_sgd" else 1, s.clients, s.compression,
            s.ratio if s.compression == "topk" else 0.0, len(plan.workers), plan.freeze)


def shortlist(found: TrainSearch, top: int, without: tuple[tuple, ...] = ()
              ) -> list[TrainEstimate]:
    """`top` plans to simulate, one per `numerics` and none of those `without` (within
    one, the simulation could only confirm the estimate's order): in turns, the fastest
    uncompressed plan, then the fastest of each compression (by seconds per optimizer
    update, `TrainEstimate.per_update`); then the second fastest of each, and so on. So
    the list always holds an uncompressed rival to the lossy plans, and the estimate,
    blind to convergence, does not fill it with the compression that sends least."""
    order = sorted(range(len(found.ranked)), key=lambda i: (found.ranked[i].per_update, i))
    queues: dict[str, list[TrainEstimate]] = {}
    seen = set(without)
    for i in order:
        e = found.ranked[i]
        if numerics(e.plan) not in seen:
            seen.add(numerics(e.plan))
            queues.setdefault(e.plan.sync.compression, []).append(e)
    kinds = sorted(queues, key=lambda c: c != "none")  # stable: then by the fastest
    rounds = max((len(q) for q in queues.values()), default=0)
    turns = [queues[c][r] for r in range(rounds) for c in kinds if r < len(queues[c])]
    return turns[:top]


def reference(found: TrainSearch) -> TrainEstimate:
    """The lossless plan whose steps the estimate says finish first: what a user would
    try first, and what a lossy or asynchronous plan must beat."""
    for e in found.ranked:
        if lossless(e.plan):
            return e
    raise PlanError("space.compressions", "no lossless plan fits",
                    "include none, and a synchronous sync (single_device always is)")
