"""Fast analytic cost of blocks and plans, without simpy (for planners and `cuts: auto`).

Uses the same device model the simulator uses (`kernel_time`), block by block,
so an estimate and a simulated run agree wherever no queueing or sharing occurs.
"""
from __future__ import annotations

from simdl.hw.devices import best_unit, kernel_time
from simdl.plan.world import World


def block_times(world: World, device: str, batch: int, unit: str | None = None) -> list[float]:
    """Seconds each block's forward takes on `device` for a batch of `batch` samples."""
    spec = world.devices[device]
    unit = unit or best_unit(spec)
    return [kernel_time(spec, unit, c.fwd_flops, c.fwd_bytes)
            for c in world.chain.costs(batch)]


def balanced_cuts(times: list[list[float]]) -> list[int]:
    """Cut points splitting blocks over devices in order so the slowest stage is fastest.

    `times[d][b]` is block b's time on the d-th device; every device gets at least
    one block. Dynamic programming over (device, first block), O(devices x blocks^2).
    """
    k, n = len(times), len(times[0])
    prefix = [[0.0] for _ in times]
    for d, row in enumerate(times):
        for t in row:
            prefix[d].append(prefix[d][-1] + t)
    inf = float("inf")
    # best[d][i]: the best bottleneck for blocks i.. on devices d..; cut[d][i]: d's stop.
    best = [[inf] * (n + 1) for _ in range(k + 1)]
    cut = [[n] * (n + 1) for _ in range(k + 1)]
    best[k][n] = 0.0
    for d in range(k - 1, -1, -1):
        for i in range(n - 1, -1, -1):
            for j in range(i + 1, n + 1):
                worst = max(prefix[d][j] - prefix[d][i], best[d + 1][j])
                if worst < best[d][i]:
                    best[d][i], cut[d][i] = worst, j
    cuts, i = [], 0
    for d in range(k - 1):
        i = cut[d][i]
        cuts.append(i)
    return cuts
