"""The training planner: which workers, how they synchronise (collective and its algorithm,
parameter servers and their mode and staleness bound, gossip, local SGD and its local
steps, or a pipeline and its schedule), and how gradients are compressed, ranked by the
estimated time of the workload's steps (`plan.train_estimate`).

Small pools try every set of workers; large ones the fastest k devices for every k.
Plans whose peak memory does not fit (`plan.train_memory`) are refused. The time per
step is not the whole story: local SGD, asynchronous servers and lossy compression
need more steps to reach the same loss, which no step-time estimate sees; the space
therefore holds only lossless, synchronous choices unless asked for more.
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
    top-k's `ratio`, and at most `max_stages` devices per pipeline."""

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
    for s in space.syncs:
        if s not in SYNCS:
            raise PlanError("space.syncs", s, f"choose from: {', '.join(SYNCS)}")
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
