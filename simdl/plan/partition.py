"""Exact dynamic programs that cut a chain over heterogeneous devices and links.

A pipeline's cost is separable: each stage costs what its device spends on its blocks
(`stage[d][i, j]`, blocks [i, j); inf where they do not fit its memory) and each hop
what its link spends on the activation cut there (`alpha + beta * bytes[j]`); the
pipeline's cost is their maximum (a bottleneck: seconds per request) or their sum (a
latency or an energy). `ordered` cuts a given device order optimally in O(k n^2);
`subsets` finds, for every subset of devices, the best order and cuts at once
(Held-Karp over subsets, O(2^N N^2 n^2)). Both are exact for that cost; the costs
are the estimator's own where no two hops of a pipeline cross one link.
Knows arrays; knows nothing of plans, devices or the network.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

INF = float("inf")


@dataclass(frozen=True)
class Link:
    """A hop's cost at cut j: alpha + beta * bytes[j] (bytes[0] the input, bytes[n] the
    answer); on one device it costs nothing."""

    alpha: float
    beta: float


@dataclass(frozen=True)
class Pipeline:
    """Stages (a member index, first block, block after the last) and the total cost."""

    cost: float
    stages: tuple[tuple[int, int, int], ...]


def stage_matrix(per_block: np.ndarray, fits: np.ndarray | None = None) -> np.ndarray:
    """(n+1, n+1) costs of blocks [i, j): prefix differences, inf where j <= i or where
    `fits[i, j]` is False."""
    prefix = np.concatenate([[0.0], np.cumsum(per_block)])
    out = prefix[None, :] - prefix[:, None]
    n = len(per_block)
    out[np.tril_indices(n + 1)] = INF
    if fits is not None:
        out[~fits] = INF
    return out


def range_max(values: np.ndarray) -> np.ndarray:
    """(n+1, n+1): the largest of values[i:j] (0 where the range is empty)."""
    n = len(values)
    out = np.zeros((n + 1, n + 1))
    for i in range(n):
        out[i, i + 1:] = np.maximum.accumulate(values[i:])
    return out


def _combine(how: str, *parts: np.ndarray) -> np.ndarray:
    if how == "max":
        out = parts[0]
        for p in parts[1:]:
            out = np.maximum(out, p)
        return out
    return sum(parts[1:], parts[0])


def ordered(stages: Sequence[np.ndarray], links: Sequence[Link], first: Link, last: Link,
            nbytes: np.ndarray, how: str) -> Pipeline:
    """The best cuts of the chain over `stages` in this order (each at least one block):
    `links[d]` joins stage d to d + 1; `first` brings the input, `last` takes the answer."""
    k, n = len(stages), len(nbytes) - 1
    if not 0 < k <= n:
        return Pipeline(INF, ())
    # after[j]: the cost of blocks [j, n) on the stages still to place, answer included
    after = np.full(n + 1, INF)
    after[n] = last.alpha + last.beta * nbytes[n]
    choice = []
    for d in range(k - 1, -1, -1):
        total = _combine(how, stages[d], after[None, :])
        stop = np.argmin(total, axis=1)
        best = total[np.arange(n + 1), stop]
        choice.append(stop)
        if d:
            after = _combine(how, links[d - 1].alpha + links[d - 1].beta * nbytes, best)
    choice.reverse()
    cost = float(_combine(how, np.float64(first.alpha + first.beta * nbytes[0]), best[0]))
    if not np.isfinite(cost):
        return Pipeline(INF, ())
    out, i = [], 0
    for d in range(k):
        j = int(choice[d][i])
        out.append((d, i, j))
        i = j
    return Pipeline(cost, tuple(out))


def subsets(stages: Sequence[np.ndarray], links: Sequence[Sequence[Link]], first: Sequence[Link],
            last: Sequence[Link], nbytes: np.ndarray, how: str, bits: Sequence[int],
            starts: Sequence[bool] | None = None,
            max_stages: int | None = None) -> dict[int, Pipeline]:
    """For every set of devices (a bit mask), the best pipeline using exactly those
    devices: its order and cuts.

    `stages[g]` is candidate g's stage matrix and `bits[g]` the devices it occupies (one
    device may have several candidates, e.g. one per dtype, and a tensor-parallel group
    occupies several: a pipeline uses each device once);
    `links[g][h]` joins candidate g to h; `first[g]`/`last[g]` bring the input and take
    the answer; `starts[g]` False forbids g as the first stage. Held-Karp over (used set,
    last candidate, blocks done), each step a vectorised min over the cut.
    """
    n, k = len(nbytes) - 1, len(stages)
    limit = min(n, max_stages or n)
    starts = starts if starts is not None else [True] * k
    # layer: (mask, last candidate) -> (costs over blocks done, back-pointers (prev, i))
    layer: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    done: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for g in range(k):
        if starts[g]:
            cost = _combine(how, np.full(n + 1, first[g].alpha + first[g].beta * nbytes[0]),
                            stages[g][0])
            layer[(bits[g], g)] = (cost, np.full(n + 1, -1), np.zeros(n + 1, int))
    hops = {(g, h): links[g][h].alpha + links[g][h].beta * nbytes
            for g in range(k) for h in range(k) if not bits[g] & bits[h]}
    for _ in range(limit - 1):
        done.update(layer)
        grown: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for (mask, g), (cost, _, _) in layer.items():
            if not np.isfinite(cost[:n]).any():
                continue
            for h in range(k):
                if mask & bits[h]:
                    continue
                total = _combine(how, cost[:, None], hops[(g, h)][:, None], stages[h])
                at = np.argmin(total, axis=0)
                new = total[at, np.arange(n + 1)]
                key = (mask | bits[h], h)
                old = grown.get(key)
                if old is None:
                    grown[key] = (new, np.full(n + 1, g), at)
                else:
                    better = new < old[0]
                    old[0][better] = new[better]
                    old[1][better] = g
                    old[2][better] = at[better]
        layer = grown
    done.update(layer)
    best: dict[int, Pipeline] = {}
    for (mask, g), (cost, _, _) in done.items():
        total = float(_combine(how, np.array(cost[n]), np.array(last[g].alpha + last[g].beta * nbytes[n])))
        if np.isfinite(total) and (mask not in best or total < best[mask].cost):
            best[mask] = Pipeline(total, _back(done, mask, g, n, bits))
    return best


def _back(done: dict, mask: int, g: int, n: int, bits: Sequence[int]) -> tuple:
    """The stages of the best pipeline ending with candidate g over `mask` at block n."""
    out, j = [], n
    while g >= 0:
        _, prev, at = done[(mask, g)]
        i = int(at[j]) if prev[j] >= 0 else 0
        out.append((g, i, j))
        mask, g, j = mask & ~bits[g], int(prev[j]), i
    return tuple(reversed(out))
