"""The planner: which devices, in what order, cut where, replicated how, for an objective.

Small pools are searched exactly: for every subset of devices the best order and cuts
come from one Held-Karp program (`plan.partition.subsets`), and the best split of the
pool into data-parallel pipelines from a program over subsets of subsets. Large pools
go to `plan.heuristic` (exact on a shortlist, then greedy growth and local search).
Every candidate is then scored by the estimator (`plan.estimate`), plans that break a
limit are dropped, and the rest ranked; the Pareto front over (capacity, p50 latency,
energy per request) is kept. Re-scoring by simulation happens at the edge
(`simdl.planner`): this layer never runs simpy.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import chain

import numpy as np

from simdl.errors import PlanError
from simdl.plan.candidates import exact_plans
from simdl.plan.costs import Costs
from simdl.plan.estimate import Estimate, estimate
from simdl.plan.heuristic import heuristic_plans, polished
from simdl.plan.plan import Plan, check
from simdl.plan.space import OBJECTIVES, Limits, Menu, Space
from simdl.plan.world import Inference, World

Objective = str | Mapping[str, float]


@dataclass(frozen=True)
class Scored:
    """A plan, its estimate and its score by the search's objective (lower is better)."""

    plan: Plan
    estimate: Estimate
    score: float


@dataclass(frozen=True)
class Search:
    """The search's answer: the `best` plan, the feasible plans it scored (`ranked`, best
    first), the `pareto` front among them, whether the search was `exact` (every plan
    of the space considered for the objective) or heuristic, how many plans it
    estimated, and how many each limit refused."""

    best: Scored
    ranked: tuple[Scored, ...]
    pareto: tuple[Scored, ...]
    method: str
    examined: int
    refused: dict[str, int] = field(default_factory=dict)


def search(world: World, objective: Objective = "throughput", space: Space | None = None,
           limits: Limits | None = None, *, exact_up_to: int = 8, keep: int = 64,
           costs: Costs | None = None) -> Search:
    """The best inference plan for `world` by `objective`: "throughput" (most requests per
    second sustained), "latency" (lowest p50 under the world's arrivals), "energy"
    (fewest joules per request), or weights over them ({"throughput": 1, "energy": 2}:
    each value relative to the best candidate's). Pools of up to `exact_up_to` devices
    are searched exactly; from each stream of candidates the first `keep` that meet
    the limits are kept (more are estimated when limits refuse some)."""
    weights = weights_of(objective)
    space, limits = space or Space(), limits or Limits()
    space.validate(world)
    _check_limits(world, limits)
    costs = costs or Costs(world)
    load = world.workload
    assert isinstance(load, Inference), "search plans inference workloads"
    devices = tuple(space.devices or world.devices)
    if world.input_stays_on == load.source and load.source not in devices:
        devices = (load.source, *devices)
    judge = _Judge(world, costs, limits, weights)
    exact = len(devices) <= exact_up_to
    for m in sorted({min(m, load.batch) for m in space.microbatches}):
        menu = Menu(costs, space, m, devices)
        streams = (chain(exact_plans(menu, space, list(weights)), polished(menu, space))
                   if exact else heuristic_plans(menu, space, list(weights), exact_up_to))
        for plans in streams:
            judge.consider(plans, keep)
    return judge.result("exact" if exact else "heuristic")


class _Judge:
    """Estimates candidates once, refuses those over a limit, ranks the rest."""

    def __init__(self, world: World, costs: Costs, limits: Limits, weights: Mapping[str, float]):
        self.world, self.costs, self.limits, self.weights = world, costs, limits, weights
        self.seen: dict[str, Estimate | None] = {}
        self.refused: dict[str, int] = {}

    def estimate(self, plan: Plan) -> Estimate | None:
        """The plan's estimate, or None when it breaks memory or a limit (counted)."""
        key = repr((plan.replicas, plan.microbatches, plan.dispatch))
        if key not in self.seen:
            self.seen[key] = self._judge(plan)
        return self.seen[key]

    def consider(self, plans: Iterable[Plan], keep: int) -> None:
        """Estimate `plans` in order until `keep` of them meet every limit."""
        for p in plans:
            if self.estimate(p) is not None:
                keep -= 1
                if keep <= 0:
                    return

    def _judge(self, plan: Plan) -> Estimate | None:
        try:
            check(plan, self.world)
        except PlanError as err:
            self._refuse(err.where.split(".")[-1])
            return None
        e = estimate(plan, self.world, self.costs)
        broken = breaks(e, self.limits)
        return e if broken is None else self._refuse(broken)

    def _refuse(self, why: str) -> None:
        self.refused[why] = self.refused.get(why, 0) + 1

    def result(self, method: str) -> Search:
        found = [e for e in self.seen.values() if e is not None]
        if not found:
            raise PlanError("search", f"{len(self.seen)} plans scored",
                            "no plan of the space fits memory and meets the limits "
                            f"(refused: {self.refused or 'none'})")
        scores = score(found, self.weights)
        ranked = sorted(zip(found, scores), key=lambda x: (x[1], _size(x[0].plan),
                                                           x[0].plan.describe()))
        out = tuple(Scored(e.plan, e, s) for e, s in ranked)
        return Search(out[0], out, pareto(out), method, len(self.seen), dict(self.refused))


def breaks(e: Estimate, limits: Limits) -> str | None:
    """The first limit the estimate breaks (energy, battery_life, latency), else None."""
    if any(e.energy[d] > joules for d, joules in limits.energy.items()):
        return "energy"
    if any(e.battery_life[d] < seconds for d, seconds in limits.battery_life.items()):
        return "battery_life"
    if limits.latency is not None and not e.p50 <= limits.latency:
        return "latency"
    return None


def score(found: list[Estimate], weights: Mapping[str, float]) -> list[float]:
    """Lower is better: seconds per request at capacity, p50 seconds, joules per request;
    with several objectives, each relative to the best candidate's, weighted."""
    values = {"throughput": [1.0 / e.capacity for e in found], "latency": [e.p50 for e in found],
              "energy": [e.per_request_J for e in found]}
    if len(weights) == 1:
        return values[next(iter(weights))]
    total = np.zeros(len(found))
    for name, w in weights.items():
        v = np.array(values[name])
        total += w * v / max(v.min(), 1e-300)
    return total.tolist()


def pareto(ranked: tuple[Scored, ...]) -> tuple[Scored, ...]:
    """The plans no other beats on every one of capacity, p50 latency and energy per request
    while strictly beating it on one (first of equals kept)."""
    def key(s: Scored) -> tuple[float, float, float]:
        e = s.estimate
        return (-e.capacity, e.p50, e.per_request_J)

    front: list[Scored] = []
    for s in sorted(ranked, key=key):
        if not any(all(a <= b for a, b in zip(key(f), key(s))) for f in front):
            front.append(s)
    return tuple(front)


def _size(plan: Plan) -> int:
    return len(plan.devices)


def weights_of(objective: Objective) -> dict[str, float]:
    """The objective as weights over OBJECTIVES (PlanError for anything else)."""
    if isinstance(objective, str):
        if objective not in OBJECTIVES:
            raise PlanError("objective", objective, f"choose one of: {', '.join(OBJECTIVES)}, "
                            "or weights over them")
        return {objective: 1.0}
    weights = dict(objective)
    for name, w in weights.items():
        if name not in OBJECTIVES:
            raise PlanError(f"objective.{name}", w, f"weights over: {', '.join(OBJECTIVES)}")
        if not (isinstance(w, (int, float)) and w > 0 and np.isfinite(w)):
            raise PlanError(f"objective.{name}", w, "a finite weight > 0")
    if not weights:
        raise PlanError("objective", {}, "at least one objective")
    return weights


def _check_limits(world: World, limits: Limits) -> None:
    for name, table in (("energy", limits.energy), ("battery_life", limits.battery_life)):
        for d, v in table.items():
            world.known(f"limits.{name}", d)
            if not (isinstance(v, (int, float)) and v > 0):
                raise PlanError(f"limits.{name}.{d}", v, "a positive number (J or s)")
    if limits.latency is not None and not limits.latency > 0:
        raise PlanError("limits.latency", limits.latency, "a time > 0 s")
