"""Strategies: functions (world, **params) -> Plan, found by name in STRATEGIES.

A strategy's signature is its schema: the scenario's parameters are checked
against the type hints, so adding one is one function and one dict line.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal

from annotated_types import Gt

from simdl.errors import PlanError
from simdl.plan.estimate import balanced_cuts, block_times
from simdl.plan.plan import Plan, Stage
from simdl.plan.world import World

PositiveInt = Annotated[int, Gt(0)]  # checked at the YAML edge, plain int here


def single(world: World, device: str | None = None, unit: str | None = None) -> Plan:
    """The whole model on one device (by default the one that owns the input)."""
    device = device or world.workload.source
    _known(world, "device", device)
    return Plan("single", (Stage(device, 0, len(world.chain), unit),), world.workload.source,
                params={"device": device})


def pipeline(world: World, devices: list[str], cuts: list[int] | Literal["auto"] = "auto",
             microbatches: PositiveInt = 1) -> Plan:
    """The chain cut into consecutive stages over `devices`, in the order given.

    `cuts` are the first block of every stage after the first; `auto` balances
    the estimated stage times by each device's speed. Each request's batch is
    cut into `microbatches` that stream through the stages.
    """
    n = len(world.chain)
    if len(devices) < 2:
        raise PlanError("devices", devices, "a pipeline needs at least two devices")
    for d in devices:
        _known(world, "devices", d)
    if len(devices) > n:
        raise PlanError("devices", devices, f"at most {n} devices, one block each at least")
    if microbatches > world.workload.batch:
        raise PlanError("microbatches", microbatches,
                        f"at most the batch size ({world.workload.batch})")
    if cuts == "auto":
        batch = -(-world.workload.batch // microbatches)
        cuts = balanced_cuts([block_times(world, d, batch) for d in devices])
    elif (len(cuts) != len(devices) - 1 or any(not 0 < c < n for c in cuts)
          or any(a >= b for a, b in zip(cuts, cuts[1:]))):
        raise PlanError("cuts", cuts, f"{len(devices) - 1} increasing block indices "
                        f"between 1 and {n - 1} (the chain has {n} blocks), or 'auto'")
    bounds = [0, *cuts, n]
    stages = tuple(Stage(d, a, b) for d, a, b in zip(devices, bounds, bounds[1:]))
    return Plan("pipeline", stages, world.workload.source, microbatches,
                params={"devices": list(devices), "cuts": list(cuts), "microbatches": microbatches})


def _known(world: World, field: str, device: str) -> None:
    if device not in world.devices:
        raise PlanError(field, device, f"choose one of: {', '.join(world.devices)}")


Strategy = Callable[..., Plan]

STRATEGIES: dict[str, Strategy] = {
    "single": single,
    "pipeline": pipeline,
}
