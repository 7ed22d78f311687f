"""Weighted max-min rates: each flow's share of a bottleneck in inverse proportion to its
sharing penalty (`sharing: rtt`, where the penalty is the route's latency).

This is how SimGrid shares bandwidth (SimGrid 3.32, github.com/simgrid/simgrid tag v3.32 =
commit e8d2ff8): src/surf/network_cm02.cpp:431 sets a transfer's sharing penalty to the
sum of its route's link latencies (CM02; LV08 adds weight-S / bandwidth per link, which
simdl does not model), and src/kernel/lmm/maxmin.cpp:82,96,131 gives each constraint the
usage sum(crossings / penalty) and each variable of the tightest constraint the value
(remaining / usage) / penalty. TCP's throughput falls as its round-trip time grows, so
flows with a longer route get less of a shared link.

Same rounds, tie rule and float order as simdl.hw.maxmin's plain solvers (numpy for many
flows, plain Python for a few, bit for bit the same), and with every penalty 1 the same
bits as they give (tests/sim/test_sharing.py checks both).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from simdl.hw.maxmin import TIE_RTOL


def weighted_hops(hops: np.ndarray, capacity: np.ndarray, penalty: np.ndarray) -> np.ndarray:
    """Weighted max-min rate of each flow (bytes/s).

    Args:
        hops: (L, F) int, as for simdl.hw.maxmin.max_min_hops (len(capacity) pads).
        capacity: (R,) float, bytes/s of each resource.
        penalty: (F,) float > 0; a flow's rate grows as 1 / penalty while it is unfixed.

    Progressive filling by levels: while unfixed, flow f runs at level / penalty[f]. A
    resource fills at level left / usage, usage = sum of 1 / penalty over its crossings.
    As in max_min_hops, every resource whose level is the least along each flow crossing
    it fills in this round, and its flows are fixed at their least level / penalty (a
    division, as SimGrid's, not a product with 1 / penalty).
    """
    n_res = len(capacity)
    hops = np.ascontiguousarray(hops)
    alive = np.arange(hops.shape[1])
    rates = np.full(alive.size, np.inf)
    penalty = np.asarray(penalty, dtype=np.float64)
    inverse = 1.0 / penalty
    left = np.empty(n_res + 1)
    left[:n_res] = capacity
    left[n_res] = np.inf
    level = np.empty(n_res + 1)
    while alive.size:
        flat = hops.ravel()
        usage = np.bincount(flat, minlength=n_res + 1,
                            weights=np.broadcast_to(inverse, hops.shape).ravel())
        level.fill(np.inf)
        np.divide(left, usage, out=level, where=usage > 0)
        if level.min() == np.inf:
            break
        at = level[hops]
        least = at.min(axis=0)
        slack = at > least * (1.0 + TIE_RTOL)        # not a bottleneck of this flow
        tight = np.bincount(flat, weights=slack.ravel(), minlength=n_res + 1) == 0
        tight &= level < np.inf
        fixed = np.logical_or.reduce(tight[hops], axis=0)
        rate = least[fixed] / penalty[fixed]
        rates[alive[fixed]] = rate
        if fixed.all():
            break
        crossed = hops[:, fixed]
        left -= np.bincount(crossed.ravel(), minlength=n_res + 1,
                            weights=np.broadcast_to(rate, crossed.shape).ravel())
        np.maximum(left, 0.0, out=left)
        keep = ~fixed
        hops, alive = np.compress(keep, hops, axis=1), alive[keep]
        penalty, inverse = penalty[keep], inverse[keep]
    return rates


def weighted_few(routes: Sequence[Sequence[int]], capacity: Sequence[float],
                 penalty: Sequence[float]) -> list[float]:
    """weighted_hops in plain Python, for a few flows: bit for bit the same rates.

    Sums run in bincount's order (every flow's first crossing, then every second, ...),
    so usage and the capacity taken round exactly as numpy's do.
    """
    inf = float("inf")
    rates = [inf] * len(routes)
    penalty = [float(p) for p in penalty]
    inverse = [1.0 / p for p in penalty]
    alive = [f for f, route in enumerate(routes) if route]
    left = {r: float(capacity[r]) for f in alive for r in routes[f]}
    scale = 1.0 + TIE_RTOL
    while alive:
        usage: dict[int, float] = {}
        for j in range(max(len(routes[f]) for f in alive)):
            for f in alive:
                if j < len(routes[f]):
                    r = routes[f][j]
                    usage[r] = usage.get(r, 0.0) + inverse[f]
        level = {r: left[r] / u for r, u in usage.items()}
        if min(level.values()) == inf:
            break
        least = {f: min(level[r] for r in routes[f]) for f in alive}
        slack = {r for f in alive for r in routes[f] if level[r] > least[f] * scale}
        tight = {r for r in usage if r not in slack and level[r] < inf}
        fixed = [f for f in alive if any(r in tight for r in routes[f])]
        for f in fixed:
            rates[f] = least[f] / penalty[f]
        if len(fixed) == len(alive):
            break
        taken: dict[int, float] = {}
        for j in range(max(len(routes[f]) for f in fixed)):
            for f in fixed:
                if j < len(routes[f]):
                    r = routes[f][j]
                    taken[r] = taken.get(r, 0.0) + rates[f]
        for r, amount in taken.items():
            left[r] = max(left[r] - amount, 0.0)
        done = set(fixed)
        alive = [f for f in alive if f not in done]
    return rates
