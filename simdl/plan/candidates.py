"""Candidate plans from the exact programs: the best pipeline on every subset of devices,
and the best split of a pool into data-parallel pipelines.

Knows the menu of stage options (`plan.space`) and the programs (`plan.partition`);
knows nothing of estimates, limits or ranking (`plan.search`).
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping

from simdl.plan.partition import Pipeline, subsets
from simdl.plan.plan import Plan, Replica
from simdl.plan.space import HOW, Menu, Space
from simdl.plan.timeline import lone


def exact_plans(menu: Menu, space: Space, objectives: list[str]) -> Iterator[list[Plan]]:
    """Streams of plans, each in order of its program's cost: for each objective, the best
    pipeline on every subset of devices; then the best split into replicas (throughput)."""
    stays = menu.world.input_stays_on == menu.source
    starts = [not stays or o.devices == (menu.source,) for o in menu.options]
    best: dict[str, dict[int, Pipeline]] = {}
    for objective in dict.fromkeys(["throughput", *objectives]):
        best[objective] = pipelines(menu, objective, starts, space.max_stages)
        ranked = sorted(best[objective].items(), key=lambda kv: (kv[1].cost, kv[0]))
        yield [single(menu, p) for _, p in ranked]
    if space.replicas and not stays:  # with the input kept home every replica needs its source
        reps = {mask: replica(menu, p) for mask, p in best["throughput"].items()}
        alone = {mask: 1.0 / max(loads(menu, r).values()) for mask, r in reps.items()}
        chosen = sorted(replicated(alone), key=lambda mask: -alone[mask])
        split = [reps[mask] for mask in chosen]
        # the fastest k, for every k: replicas that share a link may add less than alone
        yield [data_parallel(menu, split[:k], space.dispatch) for k in range(len(split), 1, -1)]


def pipelines(menu: Menu, objective: str, starts: list[bool] | None = None,
              max_stages: int | None = None, options: list[int] | None = None
              ) -> dict[int, Pipeline]:
    """The best pipeline by `objective` on every subset of the menu's devices (of the
    `options` given, default all), keyed by the bit mask of the devices it uses."""
    key = (objective, tuple(starts or ()), max_stages, tuple(options or ()))
    if key in menu.found:
        return menu.found[key]
    chosen = list(range(len(menu.options))) if options is None else options
    stages = [menu.matrix(g, objective) for g in chosen]
    links = [[menu.link(g, h, objective) for h in chosen] for g in chosen]
    first = [menu.link(None, g, objective) for g in chosen]
    last = [menu.link(g, None, objective) for g in chosen]
    bits = [sum(1 << i for i in menu.members(g)) for g in chosen]
    begin = None if starts is None else [starts[g] for g in chosen]
    found = subsets(stages, links, first, last, menu.nbytes(objective), HOW[objective], bits,
                    begin, max_stages)
    menu.found[key] = {mask: Pipeline(p.cost, tuple((chosen[g], i, j) for g, i, j in p.stages))
                       for mask, p in found.items()}
    return menu.found[key]


def replicated(capacity: Mapping[int, float]) -> list[int]:
    """Disjoint sets of devices (bit masks) whose pipelines' `capacity` alone add up to the
    most: a program over the subsets of each subset, O(3^N)."""
    if not capacity:
        return []
    full = max(capacity).bit_length()
    value: dict[int, tuple[float, tuple[int, ...]]] = {0: (0.0, ())}
    for mask in range(1, 1 << full):
        low = mask & -mask
        top = value[mask & ~low]  # the lowest device left out
        sub = mask
        while sub:
            if sub & low and sub in capacity:
                rest = value[mask & ~sub]
                gain = rest[0] + capacity[sub]
                if gain > top[0]:
                    top = (gain, rest[1] + (sub,))
            sub = (sub - 1) & mask
        value[mask] = top
    return list(value[(1 << full) - 1][1])


def single(menu: Menu, p: Pipeline) -> Plan:
    """One pipeline as a plan."""
    return Plan("auto", (replica(menu, p),), menu.source, menu.microbatches,
                params={"devices": [d for g, _, _ in p.stages for d in menu.options[g].devices]})


def data_parallel(menu: Menu, reps: list[Replica], dispatch: str,
                  speed: list[float] | None = None) -> Plan:
    """Replicas each sent requests in proportion to its capacity alone (`speed`, by
    default 1 / the busiest server of its lone timeline)."""
    speed = speed or [1.0 / max(loads(menu, r).values()) for r in reps]
    shared = tuple(Replica(r.stages, share=s / sum(speed)) for r, s in zip(reps, speed))
    return Plan("auto", shared, menu.source, menu.microbatches, dispatch,
                params={"replicas": len(shared)})


def loads(menu: Menu, rep: Replica) -> dict[tuple[str, ...], float]:
    """Seconds per request the replica alone keeps each server (unit, link) busy."""
    plan = Plan("auto", (rep,), menu.source, menu.microbatches)
    return dict(lone(plan, rep, menu.world.workload.batch, menu.costs).busy)


def replica(menu: Menu, p: Pipeline) -> Replica:
    return Replica(tuple(menu.options[g].stage(i, j) for g, i, j in p.stages))
