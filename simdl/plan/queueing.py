"""Requests of a whole run through a plan, without simpy: arrivals, dispatch, waiting.

Each replica is reduced to two numbers from its lone timeline: its latency L and
its bottleneck's seconds per request D. A request waits only at that bottleneck:
for stations in series with fixed service times that is exact (Avi-Itzhak,
"A sequence of service stations with arbitrary input and regular service times",
Management Science 11(5), 1965; Friedman, Operations Research 13(1), 1965), so the
wait follows Lindley's recursion over the run's own arrival times. Where stations
are not so simple (micro-batches, shared links, groups) it is an approximation.
Dispatch follows the run's rules (`sim.inference`). Knows plans and arrivals;
knows nothing of layers or devices.
"""
from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from simdl.plan.plan import Plan
from simdl.plan.timeline import Lone, shared_server
from simdl.plan.world import Inference, World
from simdl.rng import stream


@dataclass(frozen=True)
class Served:
    """Per request: arrival, finish and the replicas it used; `waited` is True when some
    request queued behind another at a bottleneck; `overlap` the most requests in flight."""

    arrival: np.ndarray
    finish: np.ndarray
    replicas: tuple[tuple[int, ...], ...]
    waited: bool
    overlap: int

    @property
    def latency(self) -> np.ndarray:
        return self.finish - self.arrival


def arrival_gaps(world: World) -> list[float] | None:
    """The wait before each request of the run, as the clock takes it (None for a closed
    loop, where finishes decide): Poisson gaps from the seed's "arrivals" stream, or the
    sorted trace's instants less the clock's time so far. One rule for the simulator's
    arrivals and the estimator's replay."""
    load = world.workload
    assert isinstance(load, Inference)
    a, n = load.arrival, load.requests
    if a.kind == "poisson":
        return stream(world.seed, "arrivals").exponential(1.0 / a.rate, size=n).tolist()
    if a.kind == "trace":
        now, gaps = 0.0, []
        for t in sorted(a.times)[:n]:
            gaps.append(t - now)
            now += t - now  # the clock's own sum, not t itself
        return gaps
    return None


def arrival_times(world: World) -> np.ndarray | None:
    """When each request arrives in the run: the clock's running sum of `arrival_gaps`
    (numpy's cumsum adds in order, as the clock does)."""
    gaps = arrival_gaps(world)
    return None if gaps is None else np.cumsum(gaps)


def replay(plan: Plan, world: World, latency: list[float], service: list[float],
           shares: list[float], common: list[float] | None = None) -> Served:
    """Every request of the workload through replicas of `latency` L and bottleneck
    `service` D; with split or ensemble dispatch, one entry for all replicas together.
    `common[k]`: a request of entry k's seconds on the plan's busiest server, which
    replicas may share (a device or an airtime): requests wait for it too."""
    load = world.workload
    assert isinstance(load, Inference)
    n, together = load.requests, plan.dispatch in ("split", "all")
    reps = len(latency)
    busy = [0] * reps
    pick, moved = dispatcher(plan.dispatch, shares, busy)
    free_at = [float("-inf")] * reps            # when each bottleneck is free again
    shared_free = float("-inf")                 # ... and the plan's busiest server
    in_flight: list[tuple[float, int]] = []  # (finish, replica) of requests in flight, a heap
    arrivals, finishes, used = np.empty(n), np.empty(n), []
    waited, overlap, ends = False, 1, []         # ends: a heap of finish times in flight
    times = arrival_times(world)
    clients = [(0.0, c) for c in range(min(load.arrival.concurrency, n))] if times is None else []
    for r in range(n):
        if times is not None:
            a = float(times[r])
        else:
            a, c = heapq.heappop(clients)
        finished = set()
        while in_flight and in_flight[0][0] <= a:
            i = heapq.heappop(in_flight)[1]
            busy[i] -= 1
            finished.add(i)
        for i in sorted(finished):
            moved(i)
        chosen = [0] if together else [pick(busy)]
        done = 0.0
        for i in chosen:
            uses = common is not None and common[i] > 0
            start = max(a, free_at[i], shared_free if uses else a)
            if start - a <= 1e-12 * (a + service[i]):  # float noise, not a wait
                start = a
            waited |= start > a
            free_at[i] = start + service[i]
            if uses:
                shared_free = start + common[i]
            done = max(done, start + latency[i])
            heapq.heappush(in_flight, (done, i))
            busy[i] += 1
            moved(i)
        while ends and ends[0] <= a:
            heapq.heappop(ends)
        heapq.heappush(ends, done)
        overlap = max(overlap, len(ends))
        arrivals[r], finishes[r] = a, done
        used.append(tuple(chosen))
        if times is None:
            heapq.heappush(clients, (done, c))
    return Served(arrivals, finishes, tuple(used), waited, overlap)


def meetings(served: Served, alone: list[Lone]) -> tuple[bool, dict[str, float]]:
    """Over each run of requests in flight together: whether two of them use one server
    at overlapping times, and each device's activation peak with their memory together."""
    shared, peak = False, defaultdict(float)
    order = np.argsort(served.arrival, kind="stable")
    cluster: list[int] = []
    reach = float("-inf")
    for r in [*order, None]:
        if r is not None and served.arrival[r] < reach:
            cluster.append(r)
            reach = max(reach, float(served.finish[r]))
            continue
        if len(cluster) > 1:
            at = [(r2, float(served.arrival[r2]), alone[served.replicas[r2][0]]) for r2 in cluster]
            shared = shared or bool(shared_server([(s, a + t0, a + t1, (r2, g))
                                                   for r2, a, one in at
                                                   for s, t0, t1, g in one.spans]))
            level: dict[str, float] = defaultdict(float)
            for t, d, delta in sorted(((a + t, d, delta) for _, a, one in at
                                       for t, d, delta in one.memory), key=lambda e: e[0]):
                level[d] += delta
                peak[d] = max(peak[d], level[d])
        elif cluster:
            for d, held in alone[served.replicas[cluster[0]][0]].held.items():
                peak[d] = max(peak[d], held)
        if r is not None:
            cluster, reach = [r], float(served.finish[r])
    return shared, peak


def dispatcher(dispatch: str, shares: list[float], busy: list[int]
               ) -> tuple[Callable[[list[int]], int], Callable[[int], None]]:
    """The run's rule for which replica takes the next request, given `busy` (each one's
    requests in flight), and what to call when busy[i] has changed. Round robin; least
    loaded: fewest in flight per share, ties to the larger share, then the first; weighted:
    nginx's smooth weighted round robin in exact rationals. One rule for the simulator
    and the estimator's replay."""
    unmoved: Callable[[int], None] = lambda i: None
    if dispatch == "round_robin":
        turn = iter(range(10**12))
        return (lambda busy: next(turn) % len(busy)), unmoved
    if dispatch == "least_loaded":
        return _least_loaded(shares, busy)
    if dispatch == "weighted":
        # Every pick adds each replica's share to its credit, and the largest credit pays
        # the total. Credits are exact rationals: in floats equal credits reached by
        # different sums stop tying (three equal replicas went a b c c a b c).
        weights = [Fraction(s) for s in shares]
        total, credit = sum(weights), [Fraction(0)] * len(weights)

        def weighted(busy: list[int]) -> int:
            for i, w in enumerate(weights):
                credit[i] += w
            best = max(range(len(credit)), key=lambda i: (credit[i], -i))
            credit[best] -= total
            return best
        return weighted, unmoved
    return (lambda busy: 0), unmoved


def _least_loaded(shares: list[float], busy: list[int]
                  ) -> tuple[Callable[[list[int]], int], Callable[[int], None]]:
    """Key ((busy + 1) / share, -share, index), kept in a heap with an entry pushed
    whenever a replica's count moves, entries of an older count dropped as they surface:
    a request costs O(log replicas), not a look at every replica."""

    def entry(i: int) -> tuple[float, float, int, int]:
        return (busy[i] + 1) / shares[i], -shares[i], i, busy[i]

    heap = [entry(i) for i in range(len(shares))]
    heapq.heapify(heap)

    def pick(busy: list[int]) -> int:
        while heap[0][3] != busy[heap[0][2]]:  # an older count of that replica
            heapq.heappop(heap)
        return heap[0][2]

    def moved(i: int) -> None:
        heapq.heappush(heap, entry(i))
        if len(heap) > 4 * len(shares):  # stale entries: keep the heap small
            heap[:] = [entry(j) for j in range(len(shares))]
            heapq.heapify(heap)

    return pick, moved


def percentile(values: np.ndarray, q: float) -> float:
    """The run's percentile rule (numpy's linear), NaN when there are none."""
    return float(np.percentile(values, q, method="linear")) if values.size else float("nan")
