"""A plan: what runs where, as plain data the simulator executes and an estimator scores.

A plan names devices and block ranges only; it holds no arrays and no simpy
objects, so a planner can build, compare and store thousands of them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from simdl.errors import PlanError
from simdl.nn.core import nbytes
from simdl.plan.world import World


@dataclass(frozen=True)
class Stage:
    """Blocks [start, stop) of the chain on one device (on `unit`, or its fastest)."""

    device: str
    start: int
    stop: int
    unit: str | None = None


@dataclass(frozen=True)
class Plan:
    """Stages in chain order. Each request's batch is cut into `microbatches`
    that stream through the stages; answers go back to `source`."""

    strategy: str
    stages: tuple[Stage, ...]
    source: str
    microbatches: int = 1
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> str:
        """The devices a request visits, e.g. 'phone>tv'."""
        return ">".join(s.device for s in self.stages)

    def describe(self) -> str:
        parts = [f"blocks {s.start}-{s.stop - 1} on {s.device}" for s in self.stages]
        mb = f", {self.microbatches} micro-batches" if self.microbatches > 1 else ""
        return f"{self.strategy}: {' | '.join(parts)}{mb}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check(plan: Plan, world: World) -> None:
    """Refuse a plan that cannot run: bad ranges, unknown devices, no route, no memory.

    Memory counts a stage's weights plus one micro-batch's largest activation
    pair (a block's input and output are alive together).
    """
    n, devices = len(world.chain), world.devices
    at = 0
    for i, s in enumerate(plan.stages):
        if s.device not in devices:
            raise PlanError(f"stages[{i}].device", s.device,
                            f"choose one of: {', '.join(devices)}")
        if s.start != at or not s.start < s.stop <= n:
            raise PlanError(f"stages[{i}].blocks", (s.start, s.stop),
                            f"stages must cover blocks 0..{n - 1} in order, each at least one block")
        at = s.stop
    if at != n:
        raise PlanError("stages", at, f"the last stage must end at block {n}")
    hops = [plan.source] + [s.device for s in plan.stages] + [plan.source]
    for a, b in zip(hops, hops[1:]):
        if a != b:
            world.network.route(a, b)
    batch = -(-world.workload.batch // plan.microbatches)
    costs = world.chain.costs(batch)
    need: dict[str, float] = {}
    for s in plan.stages:
        weights = world.chain.param_bytes(s.start, s.stop)
        live = max(c.in_bytes + c.out_bytes for c in costs[s.start:s.stop])
        need[s.device] = need.get(s.device, 0.0) + weights + live
    for device, bytes_needed in need.items():
        capacity = devices[device].memory
        if bytes_needed > capacity:
            raise PlanError(f"devices.{device}.memory", f"{bytes_needed / 2**20:.1f} MiB needed",
                            f"the plan must fit in {capacity / 2**20:.1f} MiB")


def input_bytes(world: World, batch: int) -> int:
    """Bytes of one batch of raw input as it lives on the source device."""
    return nbytes((batch, *world.chain.in_shape), world.chain.in_dtype.itemsize)
