"""The order in which a pipeline stage runs its micro-batches' forwards (F) and backwards
(B) in one training step: GPipe and 1F1B.

Policy only (who goes when), shared by whatever runs or estimates a pipeline; knows
nothing of kernels, links or the clock.
"""
from __future__ import annotations

from collections.abc import Callable

#: One op of a stage's schedule: ("F", j) forward or ("B", j) backward of micro-batch j.
Op = tuple[str, int]


def gpipe(stage: int, stages: int, microbatches: int) -> list[Op]:
    """GPipe (Huang et al. 2019): every forward, then every backward, last micro-batch
    first (LIFO: the last stage turns its freshest activations round at once). All m
    micro-batches' saved activations are alive at the turn."""
    m = microbatches
    return [("F", j) for j in range(m)] + [("B", j) for j in reversed(range(m))]


def one_f_one_b(stage: int, stages: int, microbatches: int) -> list[Op]:
    """1F1B as in PipeDream-Flush (Narayanan et al. 2021): min(p - s - 1, m) warm-up
    forwards, then one forward and one backward in turn, then the cool-down backwards.
    Stage s holds at most min(p - s, m) micro-batches' activations."""
    m = microbatches
    warm = min(stages - stage - 1, m)
    ops = [("F", j) for j in range(warm)]
    for k in range(m - warm):
        ops += [("F", warm + k), ("B", k)]
    return ops + [("B", j) for j in range(m - warm, m)]


SCHEDULES: dict[str, Callable[[int, int, int], list[Op]]] = {
    "gpipe": gpipe,
    "1f1b": one_f_one_b,
}
