"""The planner for pools too large to search exactly: exact on a shortlist, then greedy.

1. Shortlist: the devices that would serve the objective best alone (speed and links
   to the source; memory ignored), searched exactly (`plan.candidates`); the best
   pipeline found is then extended: another device inserted or swapped in, or one
   dropped, while the objective's cost falls.
2. Greedy growth (throughput): from the shortlist's best pipelines and every device
   alone, the replica that raises capacity most is added while any does; then each
   device left joins a replica where the ordered program makes that pay. A replica's
   worth is its lone timeline's load on every server (`plan.timeline`), so replicas
   that share a link or a device are charged for it.
3. Local search on the replicas: drop one, drop a device, join two slow ones, reorder
   a short one, move a device between two, while that helps.
Knows the menu and the programs; ranking is `plan.search`'s.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import permutations

import numpy as np

from simdl.plan.candidates import data_parallel, loads, pipelines, replica, single
from simdl.plan.partition import INF, Pipeline, ordered
from simdl.plan.plan import Plan
from simdl.plan.space import HOW, Menu, Space


@dataclass(frozen=True)
class Member:
    """A replica under construction: its options in order, its cuts and its loads."""

    order: tuple[int, ...]
    pipeline: Pipeline
    busy: dict[tuple[str, ...], float]
    capacity: float


def heuristic_plans(menu: Menu, space: Space, objectives: list[str],
                    size: int) -> Iterator[list[Plan]]:
    """Streams of candidate plans for a large pool (see the module's steps)."""
    stays = menu.world.input_stays_on == menu.source
    starts = [not stays or o.devices == (menu.source,) for o in menu.options]
    for objective in dict.fromkeys(["throughput", *objectives]):
        short = shortlist(menu, objective, size)
        best = pipelines(menu, objective, starts, space.max_stages, short)
        ranked = sorted(best.values(), key=lambda p: p.cost)
        if ranked:
            yield [single(menu, extend(menu, objective, ranked[0], starts, space.max_stages))]
        yield [single(menu, p) for p in ranked]
        if objective == "throughput" and space.replicas and not stays and ranked:
            yield [grow(menu, space, ranked)]


def polished(menu: Menu, space: Space) -> Iterator[list[Plan]]:
    """For an exact search: the best pipeline grown and polished into replicas by the
    plans' lone timelines, which see links shared by hops (the programs do not)."""
    stays = menu.world.input_stays_on == menu.source
    if not space.replicas or stays:
        return
    starts = [True] * len(menu.options)
    best = pipelines(menu, "throughput", starts, space.max_stages)
    if best:
        yield [grow(menu, space, best.values())]


def extend(menu: Menu, objective: str, start: Pipeline, starts: list[bool],
           max_stages: int | None) -> Pipeline:
    """A pipeline improved a device at a time: a device outside it inserted, or put in
    place of one inside, or one inside dropped (cuts by the ordered program), while that
    lowers the objective's cost (a device too small alone may carry a stage); when no
    such move helps, a pair of the eight best outside devices inserted or swapped in."""
    singles = [g for g, o in enumerate(menu.options) if len(o.devices) == 1]
    rank = _solo(menu, objective)
    limit = max_stages or len(menu.world.chain)
    best = start
    while True:
        order = tuple(g for g, _, _ in best.stages)
        used = {d for g in order for d in menu.options[g].devices}
        outside = [g for g in singles if menu.options[g].devices[0] not in used]
        tries = _moves(order, [(g,) for g in outside], limit)
        tries += [order[:i] + order[i + 1:] for i in range(len(order)) if len(order) > 1]
        better = _lowest(menu, objective, tries, starts)
        if better is None or not better.cost < best.cost * (1 - 1e-12):
            few = sorted(outside, key=lambda g: rank[menu.options[g].devices[0]])[:8]
            pairs = [(g, h) for g in few for h in few
                     if menu.options[g].devices != menu.options[h].devices]
            better = _lowest(menu, objective, _moves(order, pairs, limit), starts)
        if better is None or not better.cost < best.cost * (1 - 1e-12):
            return best
        best = better


def _moves(order: tuple[int, ...], groups: list[tuple[int, ...]], limit: int
           ) -> list[tuple[int, ...]]:
    """`order` with each group put in place of one of its options, or inserted anywhere
    (while the pipeline stays within `limit` stages)."""
    out = [order[:i] + g + order[i + 1:] for g in groups for i in range(len(order))
           if len(order) - 1 + len(g) <= limit]
    return out + [order[:at] + g + order[at:] for g in groups for at in range(len(order) + 1)
                  if len(order) + len(g) <= limit]


def _lowest(menu: Menu, objective: str, orders: list[tuple[int, ...]],
            starts: list[bool]) -> Pipeline | None:
    found = [_cut(menu, o, objective) for o in orders if starts[o[0]]]
    return min(found, key=lambda p: p.cost, default=None)


def _cut(menu: Menu, order: tuple[int, ...], objective: str) -> Pipeline:
    """The ordered program's best cuts of `order` by `objective`."""
    p = ordered([menu.matrix(g, objective) for g in order],
                [menu.link(a, b, objective) for a, b in zip(order, order[1:])],
                menu.link(None, order[0], objective), menu.link(order[-1], None, objective),
                menu.nbytes(objective), HOW[objective])
    return Pipeline(p.cost, tuple((order[d], i, j) for d, i, j in p.stages))


def shortlist(menu: Menu, objective: str, size: int) -> list[int]:
    """The options of the `size` devices best alone by `objective` (memory ignored: a
    device too small for the model may still carry a stage), and groups among them."""
    solo = _solo(menu, objective)
    chosen = sorted(solo, key=lambda d: (solo[d], d))[:size]
    if menu.world.input_stays_on == menu.source and menu.source not in chosen:
        chosen = [menu.source, *chosen[:size - 1]]
    keep = set(chosen)
    return [g for g, o in enumerate(menu.options) if set(o.devices) <= keep]


def _solo(menu: Menu, objective: str) -> dict[str, float]:
    """Each device's cost by `objective` running the whole chain alone, memory aside."""
    n = len(menu.world.chain)
    nbytes = menu.nbytes(objective)
    solo: dict[str, float] = {}
    for g, o in enumerate(menu.options):
        if len(o.devices) > 1:
            continue
        first, last = menu.link(None, g, objective), menu.link(g, None, objective)
        parts = (first.alpha + first.beta * nbytes[0], float(menu.per_block(g, objective).sum()),
                 last.alpha + last.beta * nbytes[n])
        cost = max(parts) if HOW[objective] == "max" else sum(parts)
        solo[o.devices[0]] = min(solo.get(o.devices[0], INF), cost)
    return solo


def grow(menu: Menu, space: Space, seeds: Iterable[Pipeline], starts: int = 6) -> Plan:
    """Replicas chosen greedily, then improved locally; requests shared in proportion to
    each replica's capacity. Candidates: the `seeds` (pipelines, e.g. the best on every
    subset of a shortlist), every device alone, and each device too small alone paired
    with one of the fastest. From each of the `starts` best first replicas, the candidate
    that raises the value most is added while any does; the best such team is kept, then
    each device left joins a replica where that helps."""
    by_device: dict[str, list[int]] = defaultdict(list)
    for g, o in enumerate(menu.options):
        if len(o.devices) == 1:
            by_device[o.devices[0]].append(g)
    ranked = _ranked(menu, by_device)
    orders = dict.fromkeys([tuple(g for g, _, _ in p.stages) for p in seeds]
                           + [(g,) for d in ranked for g in by_device[d]])
    pool = [m for m in (_member(menu, order) for order in orders) if m.capacity > 0]
    alone = {m.order[0] for m in pool if len(m.order) == 1}
    fast = [by_device[d][0] for d in ranked[:8]]
    for d in ranked:
        small = [g for g in by_device[d] if g not in alone]
        pairs = [(g, h) for g in small[:1] for h in fast if h not in by_device[d]]
        pool += [m for m in (_member(menu, o) for a, b in pairs for o in ((a, b), (b, a)))
                 if m.capacity > 0]
    firsts = sorted(pool, key=lambda m: -m.capacity)[:starts]
    members = max((_greedy(menu, pool, first) for first in firsts), key=_value, default=[])
    used = {d for m in members for d in _devices(menu, m)}
    for d in ranked:
        if d in used:
            continue
        tries = [members[:r] + [_member(menu, m.order[:at] + (g,) + m.order[at:])] + members[r + 1:]
                 for r, m in sorted(enumerate(members), key=lambda rm: rm[1].capacity)[:3]
                 for g in by_device[d] for at in range(len(m.order) + 1)]
        better = max(tries, key=_value, default=None)
        if better is not None and _value(better) > _value(members) * (1 + 1e-12):
            members = better
            used.add(d)
    members = _polish(menu, members)
    return data_parallel(menu, [replica(menu, m.pipeline) for m in members], space.dispatch,
                         [m.capacity for m in members])


def _greedy(menu: Menu, pool: list[Member], first: Member) -> list[Member]:
    """From `first`, add the disjoint candidate that raises the value most while any does."""
    team = _Team()
    team.add(first)
    used = _devices(menu, first)
    while True:
        best, top = None, team.value() * (1 + 1e-12)
        for m in pool:
            if not _devices(menu, m) & used:
                v = team.value_with(m)
                if v > top:
                    best, top = m, v
        if best is None:
            return team.members
        team.add(best)
        used |= _devices(menu, best)


class _Team:
    """Replicas being chosen, with their summed load per server kept up to date, so the
    value with one more replica costs only that replica's servers."""

    def __init__(self) -> None:
        self.members: list[Member] = []
        self.load: dict = defaultdict(float)
        self.total, self.top = 0.0, 0.0

    def value(self) -> float:
        return self.total / self.top if self.top > 0 else 0.0

    def value_with(self, m: Member) -> float:
        top = max([self.top] + [self.load[s] + m.capacity * b for s, b in m.busy.items()])
        return (self.total + m.capacity) / top

    def add(self, m: Member) -> None:
        self.members.append(m)
        self.total += m.capacity
        for s, b in m.busy.items():
            self.load[s] += m.capacity * b
            self.top = max(self.top, self.load[s])


def _devices(menu: Menu, m: Member) -> set[str]:
    return {d for g in m.order for d in menu.options[g].devices}


def _polish(menu: Menu, team: list[Member]) -> list[Member]:
    """While one helps: drop a replica or a device from one; join two of the eight slowest
    into one pipeline; else reorder a short replica, or move a device between two of the
    eight slowest."""
    while True:
        better = _best(team, _shrink(menu, team) + _join(menu, team))
        if better is None:
            better = _best(team, _reorder(menu, team) + _move(menu, team))
        if better is None:
            return team
        team = better


def _best(team: list[Member], tries: list[list[Member]]) -> list[Member] | None:
    """The best of `tries` if it beats `team`."""
    better = max(tries, key=_value, default=None)
    return better if better is not None and _value(better) > _value(team) * (1 + 1e-12) else None


def _shrink(menu: Menu, team: list[Member]) -> list[list[Member]]:
    tries = []
    for r, m in enumerate(team):
        rest = team[:r] + team[r + 1:]
        tries += [rest] if rest else []
        tries += [rest[:r] + [_member(menu, m.order[:i] + m.order[i + 1:])] + rest[r:]
                  for i in range(len(m.order)) if len(m.order) > 1]
    return tries


def _slow(team: list[Member]) -> list[int]:
    return sorted(range(len(team)), key=lambda r: team[r].capacity)[:8]


def _join(menu: Menu, team: list[Member]) -> list[list[Member]]:
    slow = _slow(team)
    return [[m for r, m in enumerate(team) if r not in (a, b)]
            + [_member(menu, team[a].order + team[b].order)]
            for a in slow for b in slow if a != b]


def _reorder(menu: Menu, team: list[Member]) -> list[list[Member]]:
    return [team[:r] + [_member(menu, order)] + team[r + 1:]
            for r, m in enumerate(team) if 1 < len(m.order) <= 4
            for order in permutations(m.order) if order != m.order]


def _move(menu: Menu, team: list[Member]) -> list[list[Member]]:
    slow, tries = _slow(team), []
    for a in slow:
        for i, g in enumerate(team[a].order if len(team[a].order) > 1 else ()):
            left = _member(menu, team[a].order[:i] + team[a].order[i + 1:])
            for b in slow:
                if b == a:
                    continue
                for at in range(len(team[b].order) + 1):
                    moved = _member(menu, team[b].order[:at] + (g,) + team[b].order[at:])
                    tries.append([left if r == a else moved if r == b else m
                                  for r, m in enumerate(team)])
    return tries


def _value(team: list[Member]) -> float:
    """Requests per second of replicas shared in proportion to their capacities: their
    total over the load they put together on the busiest server."""
    live = [m for m in team if m.capacity > 0 and np.isfinite(m.capacity)]
    if len(live) < len(team) or not live:
        return 0.0
    load: dict = defaultdict(float)
    for m in live:
        for server, busy in m.busy.items():
            load[server] += m.capacity * busy
    return sum(m.capacity for m in live) / max(load.values())


def _member(menu: Menu, order: tuple[int, ...]) -> Member:
    """A replica over `order` with the ordered program's cuts (throughput) and its loads."""
    p = _cut(menu, order, "throughput")
    if not np.isfinite(p.cost):
        return Member(order, p, {}, 0.0)
    busy = loads(menu, replica(menu, p))
    return Member(order, p, busy, 1.0 / max(busy.values()) if busy else INF)


def _ranked(menu: Menu, by_device: dict[str, list[int]]) -> list[str]:
    """Devices, fastest alone first (throughput, memory ignored)."""
    speed = {d: min(float(menu.per_block(g, "throughput").sum()) for g in gs)
             for d, gs in by_device.items()}
    return sorted(speed, key=lambda d: (speed[d], d))
