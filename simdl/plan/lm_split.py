"""Where a generation pipeline cuts its blocks, and on which devices: the planner's
exact programs over the decode-step estimate (`plan.lm_estimate`).

The objective is the seconds of one decode step of `max_batch` sequences at full
context (each holding prompt + tokens), paged weights charged and a stage whose cache
does not fit excluded. A step crosses its stages in order, so it is a sum: a stage's
kernels, plus the hand-over into it, plus the tokens sent back (which depend on the
first and last stages only). That makes the best cuts a shortest path over (stage,
first block) and, over devices, over (devices used, last device, blocks done):
`best_cuts` takes the stages as given, `best_path` chooses an ordered subset of the
devices too (every first device tried; exact, 2^k states for k devices).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from simdl.errors import PlanError
from simdl.plan.lm_estimate import StepTimes
from simdl.plan.plan import Plan, Stage, single_path
from simdl.plan.world import Generation, World

#: The most devices `best_path` searches over exactly (2^k subsets of k devices).
MAX_EXACT = 8
INF = float("inf")


class _Tables:
    """Per group of devices the full-step seconds of every stage [a, b) (inf: does not
    fit), and of every hand-over from one group to another at a cut."""

    def __init__(self, world: World, groups: Sequence[tuple[str, ...]], times: StepTimes):
        load = world.workload
        assert isinstance(load, Generation)
        self.n, self.times, self.groups = len(world.chain), times, list(groups)
        self.batch, self.cached = load.max_batch, load.max_batch * (load.prompt + load.tokens)
        self.source = load.source
        self.out = times.lm.decode(self.batch, self.cached)[2]
        self.stage = [self._stages(g) for g in self.groups]
        self._hops: dict[tuple[int, int], np.ndarray] = {}

    def _stages(self, group: tuple[str, ...]) -> np.ndarray:
        n, t = self.n, self.times
        table = np.full((n + 1, n + 1), INF)
        for a in range(n):
            for b in range(a + 1, n + 1):
                s = Stage(group, a, b)
                memory = t.memory([s])[0]
                if all(m.short <= 0 for m in memory):
                    table[a, b] = t.stage(s, memory, "decode", self.batch, self.cached)
        return table

    def hop(self, g: int, h: int) -> np.ndarray:
        """Seconds of the hand-over from group g to group h at each cut b (index b)."""
        if (g, h) not in self._hops:
            src = self.groups[g][0]
            self._hops[g, h] = np.array([INF] + [
                self.times.together([(src, d, self.out[b - 1]) for d in self.groups[h]])
                for b in range(1, self.n + 1)])
        return self._hops[g, h]

    def back(self, first: int, last: int) -> float:
        return self.times.back(self.groups[first], self.groups[last][0], self.source, self.batch)


def _extend(t: np.ndarray, hop: np.ndarray, stage: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One more stage: best[c] = min over b of t[b] + hop[b] + stage[b, c], and that b."""
    total = (t + hop)[:, None] + stage
    arg = np.argmin(total, axis=0)
    return total[arg, np.arange(total.shape[1])], arg


def _widen(t: np.ndarray, hop: np.ndarray, stage: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One more stage, for the busiest stage: best[c] = min over b of
    max(t[b], hop[b] + stage[b, c]), and that b."""
    total = np.maximum(t[:, None], (hop[:, None] + stage))
    arg = np.argmin(total, axis=0)
    return total[arg, np.arange(total.shape[1])], arg


def best_cuts(world: World, groups: Sequence[tuple[str, ...]],
              times: StepTimes | None = None, balanced: bool = False) -> list[int]:
    """The first block of every stage after the first, for stages on `groups` in order,
    that make the full step fastest or, `balanced`, its busiest stage (with the hand-over
    into it) least busy, as a pipeline with a decode group per stage wants (ties: the
    earliest cuts); PlanError when no cuts fit the devices' memory."""
    tables = _Tables(world, groups, times or StepTimes(world))
    n = tables.n
    t = tables.stage[0][0].copy()
    args = []
    for g in range(1, len(groups)):
        t, arg = (_widen if balanced else _extend)(t, tables.hop(g - 1, g), tables.stage[g])
        args.append(arg)
    if not np.isfinite(t[n]):
        raise PlanError("cuts", "auto", "cuts for which every stage's cache fits its devices' "
                        "memory; none exists over these devices in this order: add or change "
                        "devices, or give cuts")
    cuts, b = [], n
    for arg in reversed(args):
        b = int(arg[b])
        cuts.append(b)
    return cuts[::-1]


Path = tuple[list[str], list[int], float]  # (devices in order, cuts, seconds of a step)


def best_path(world: World, devices: Sequence[str], times: StepTimes | None = None) -> Path:
    """The ordered subset of `devices` (one device a stage, each at most once) and the
    cuts that make the full step fastest: (devices, cuts, seconds). Ties go to fewer
    devices, then to the earlier found (first devices and subsets in listed order).
    More than `MAX_EXACT` devices: PlanError (narrow `devices`)."""
    paths = best_paths(world, devices, times)
    return min(paths.values(), key=lambda path: (path[2], len(path[0])))


def best_paths(world: World, devices: Sequence[str],
               times: StepTimes | None = None) -> dict[int, Path]:
    """`best_path` for each number of devices used: {k: the fastest path on k devices}
    (a k that no path fits is absent). Ties go to the earlier found."""
    devices = list(devices)
    for i, d in enumerate(devices):
        world.known("devices", d)
        if d in devices[:i]:
            raise PlanError("devices", d, "each device at most once; it is listed twice")
    if len(devices) > MAX_EXACT:
        raise PlanError("devices", devices, f"at most {MAX_EXACT} devices: the search over "
                        "their ordered subsets is exact; list the ones to consider")
    tables = _Tables(world, [(d,) for d in devices], times or StepTimes(world))
    n, k = tables.n, len(devices)
    best: dict[int, tuple[float, list[int], list[int]]] = {}  # devices used -> path
    for first in range(k):
        # states[(mask, last)] = (seconds with blocks [0, b) placed, per b; parent per b)
        states: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {
            (1 << first, first): (tables.stage[first][0].copy(), np.full(n + 1, -1),
                                  np.zeros(n + 1, dtype=int))}
        for mask in range(1 << k):
            for last in range(k):
                state = states.get((mask, last))
                if state is None:
                    continue
                t = state[0]
                used = bin(mask).count("1")
                total = t[n] + tables.back(first, last)
                if total < best.get(used, (INF,))[0]:
                    best[used] = (total, *_trace(states, mask, last, n))
                for d in range(k):
                    if mask >> d & 1:
                        continue
                    new, arg = _extend(t, tables.hop(last, d), tables.stage[d])
                    key = (mask | 1 << d, d)
                    old = states.get(key)
                    if old is None:
                        states[key] = (new, np.full(n + 1, last), arg)
                        continue
                    better = new < old[0]
                    old[0][better] = new[better]
                    old[1][better] = last
                    old[2][better] = arg[better]
    if not best:
        raise PlanError("devices", devices, "devices on which some stages' caches fit: no "
                        "ordered subset of these holds the model's cache")
    return {used: ([devices[g] for g in order], bounds[1:-1], total)
            for used, (total, order, bounds) in sorted(best.items())}


def _trace(states: dict, mask: int, last: int, b: int) -> tuple[list[int], list[int]]:
    """The devices (indices, in order) and bounds [0, .., b] of the best path to a state."""
    order, bounds = [last], [b]
    while mask != 1 << last:
        _, parent, arg = states[(mask, last)]
        prev, start = int(parent[b]), int(arg[b])
        mask, last, b = mask & ~(1 << last), prev, start
        order.append(last)
        bounds.append(b)
    return order[::-1], [0, *bounds[::-1]]


def best_plan(world: World, devices: Sequence[str] | None = None,
              times: StepTimes | None = None) -> Plan:
    """`best_path` over `devices` (default: the pool, in its order) as a plan: `single` on
    one device, else a `pipeline` with its cuts."""
    return path_plan(world, best_path(world, list(devices or world.devices), times))


def path_plan(world: World, path: Path, microbatches: int = 1) -> Plan:
    """A path as a plan: `single` on one device, else a `pipeline` with its cuts and
    `microbatches` decode groups."""
    chosen, cuts, _ = path
    bounds = [0, *cuts, len(world.chain)]
    stages = [Stage((d,), a, b) for d, a, b in zip(chosen, bounds, bounds[1:])]
    if len(stages) == 1:
        return single_path("single", world, stages, device=chosen[0])
    return single_path("pipeline", world, stages, microbatches, devices=chosen, cuts=cuts)
