"""Max-min fair rates of flows sharing capacitated resources (progressive filling).

Pure functions of routes and capacities: no clock, no graph, no layers. `sim/flows.py`
calls them whenever a flow starts or ends (numpy for many flows, plain Python for a
few, the same rates bit for bit); `plan/estimate.py` can call them without simpy.
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

import numpy as np

K = TypeVar("K", bound=Hashable)

#: A resource counts as a flow's bottleneck when its fair share is within this relative
#: distance of the flow's smallest share. Exact ties give the same rates either way; near
#: ties only merge rounds.
TIE_RTOL = 1e-12


def max_min_hops(hops: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """Max-min fair rate of each flow; the fast path.

    Args:
        hops: (L, F) int; hops[j, f] is the resource flow f crosses at its j-th crossing
            (a resource crossed twice appears twice), or len(capacity) after its last.
        capacity: (R,) float, bytes/s of each resource.

    Returns:
        (F,) float64 rates; a flow that crosses nothing is unconstrained (inf).

    Progressive filling, many bottlenecks per round. A resource's fair share is
    `left / crossings`. A resource whose share is the smallest along every flow crossing it
    saturates at that share in the textbook algorithm too (the shares of its flows' other
    resources only grow while flows are fixed below them), so each round fixes the flows
    of all such resources at once. The global minimum is always one of them, so each round
    makes progress; a round is about ten numpy passes over the unfixed flows.
    """
    n_res = len(capacity)
    hops = np.ascontiguousarray(hops)            # rows of crossings: reductions run along rows
    alive = np.arange(hops.shape[1])
    rates = np.full(alive.size, np.inf)
    left = np.empty(n_res + 1)
    left[:n_res] = capacity
    left[n_res] = np.inf                         # the "no hop" sentinel is unlimited
    share = np.empty(n_res + 1)
    while alive.size:
        load = np.bincount(hops.ravel(), minlength=n_res + 1)
        share.fill(np.inf)
        np.divide(left, load, out=share, where=load > 0)
        if share.min() == np.inf:                # only unlimited resources remain
            break
        at = share[hops]                         # (L, f) share of each crossing
        least = at.min(axis=0)                   # (f,) smallest share along each flow
        bottleneck = at <= least * (1.0 + TIE_RTOL)
        # tight: every crossing of the resource is a bottleneck of its flow
        tight = np.bincount(hops.ravel(), weights=bottleneck.ravel(), minlength=n_res + 1) == load
        tight &= share < np.inf
        fixed = np.logical_or.reduce(tight[hops], axis=0)
        rates[alive[fixed]] = least[fixed]
        if fixed.all():
            break
        crossed = hops[:, fixed]
        left -= np.bincount(crossed.ravel(), minlength=n_res + 1,
                            weights=np.broadcast_to(least[fixed], crossed.shape).ravel())
        np.maximum(left, 0.0, out=left)          # float error must not make capacity negative
        keep = ~fixed
        hops, alive = np.compress(keep, hops, axis=1), alive[keep]   # compress stays C-ordered
    return rates


def max_min_few(routes: Sequence[Sequence[int]], capacity: Sequence[float]) -> list[float]:
    """max_min_hops in plain Python, for a few flows: bit for bit the same rates.

    Args:
        routes: routes[f] is the resource indices flow f crosses, in order (the column
            hops[:, f] without its padding).
        capacity: bytes/s of each resource.

    numpy's fixed cost per call (some ten passes a round) outweighs the work below a few
    dozen crossings, which is what a start or end usually changes (`sim/flows.py`). The
    rounds, the tie rule and every float operation are max_min_hops's, in its order: a
    resource's share is left / crossings, and the rates fixed in a round are taken off a
    resource crossing by crossing (all flows' first crossings, then their second, ...),
    the order in which bincount adds them.
    """
    inf = float("inf")
    rates = [inf] * len(routes)
    alive = [f for f, route in enumerate(routes) if route]   # crossing nothing: unlimited
    left = {r: float(capacity[r]) for f in alive for r in routes[f]}
    scale = 1.0 + TIE_RTOL
    while alive:
        load: dict[int, int] = {}
        for f in alive:
            for r in routes[f]:
                load[r] = load.get(r, 0) + 1
        share = {r: left[r] / n for r, n in load.items()}
        if min(share.values()) == inf:
            break
        least = {f: min(share[r] for r in routes[f]) for f in alive}
        hits = dict.fromkeys(load, 0)
        for f in alive:
            bar = least[f] * scale
            for r in routes[f]:
                if share[r] <= bar:
                    hits[r] += 1
        tight = {r for r, n in load.items() if hits[r] == n and share[r] < inf}
        fixed = [f for f in alive if any(r in tight for r in routes[f])]
        for f in fixed:
            rates[f] = least[f]
        if len(fixed) == len(alive):
            break
        taken: dict[int, float] = {}
        for j in range(max(len(routes[f]) for f in fixed)):
            for f in fixed:
                if j < len(routes[f]):
                    r = routes[f][j]
                    taken[r] = taken.get(r, 0.0) + least[f]
        for r, amount in taken.items():
            left[r] = max(left[r] - amount, 0.0)
        done = set(fixed)
        alive = [f for f in alive if f not in done]
    return rates


def max_min_fill(flow: np.ndarray, resource: np.ndarray, capacity: np.ndarray,
                 n_flows: int) -> np.ndarray:
    """max_min_hops for routes given as (flow, resource) entries, one per crossing, in any
    order (CSR-like). Returns (n_flows,) rates; a flow without entries gets inf."""
    flow = np.asarray(flow, dtype=np.intp)
    resource = np.asarray(resource, dtype=np.intp)
    order = np.argsort(flow, kind="stable")
    flow, resource = flow[order], resource[order]
    counts = np.bincount(flow, minlength=n_flows)
    first = np.concatenate(([0], np.cumsum(counts)[:-1]))
    hops = np.full((int(counts.max(initial=0)), n_flows), len(capacity), dtype=np.intp)
    hops[np.arange(flow.size) - first[flow], flow] = resource
    return max_min_hops(hops, capacity)


def max_min_rates(routes: Mapping[K, Sequence[str]],
                  capacity: Mapping[str, float]) -> dict[K, float]:
    """Max-min fair rate (bytes/s) per flow, by name: `routes[f]` lists the resources flow
    f crosses, a resource twice if it is crossed twice. Unknown resources raise KeyError."""
    index = {name: i for i, name in enumerate(capacity)}
    keys = list(routes)
    flow = [i for i, k in enumerate(keys) for _ in routes[k]]
    resource = [index[r] for k in keys for r in routes[k]]
    rates = max_min_fill(np.array(flow, dtype=np.intp), np.array(resource, dtype=np.intp),
                         np.fromiter(capacity.values(), dtype=np.float64, count=len(capacity)),
                         len(keys))
    return {k: float(r) for k, r in zip(keys, rates)}
