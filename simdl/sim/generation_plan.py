"""What a generation plan may be (`check_plan`), and each device's cache over a run
(`Ledger`); where the bytes live is `plan.lm_memory`'s rule."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from simdl.errors import PlanError
from simdl.plan.lm_group import members, shape_of
from simdl.plan.lm_memory import StageMemory
from simdl.plan.lm_model import is_shape_only
from simdl.plan.plan import Plan, check
from simdl.plan.world import Generation, World


def check_plan(plan: Plan, world: World) -> None:
    """A generation plan is one replica of stages on one device or on a tensor-parallel
    group (single, pipeline, tensor_parallel, hybrid with one pipeline), `microbatches`
    decode groups at most `max_batch`; the rest as
    `plan.check` (a group checked as its first device, its members here), memory aside
    (weights may be paged: `plan_memory`)."""
    if len(plan.replicas) != 1 or any(s.units for s in plan.replicas[0].stages):
        raise PlanError("strategy", plan.strategy, "a generation workload runs one replica "
                        "of stages on one device or a group: single, pipeline, "
                        "tensor_parallel or hybrid with one pipeline")
    stages = plan.replicas[0].stages
    load = world.workload
    assert isinstance(load, Generation)
    if plan.microbatches > load.max_batch:
        raise PlanError("microbatches", plan.microbatches, f"at most max_batch "
                        f"({load.max_batch}): each decode group holds a sequence at least")
    if is_shape_only(world.chain) and any(s.dtype != "fp32" or s.prune for s in stages):
        raise PlanError("deploy", "dtype", "a full-size preset stores its weights as "
                        "`model.weights`; leave `deploy` out")
    for i, s in enumerate(stages):
        if len(s.devices) > 1:
            for d in s.devices:
                world.known(f"stages[{i}].devices", d)
            members(shape_of(world.chain), len(s.devices))
            if s.split != "auto":
                raise PlanError(f"stages[{i}].split", s.split, "auto: a generation group "
                                "cuts layers by the Megatron pairing (`plan.lm_group`)")
            for a in s.devices:
                for b in s.devices:
                    if a != b:
                        world.network.route(a, b)
    roomy = {d: replace(spec, memory=float("inf")) for d, spec in world.devices.items()}
    alone = tuple(replace(s, devices=s.devices[:1], collective="ring") for s in stages)
    check(replace(plan, replicas=(replace(plan.replicas[0], stages=alone),)),
          replace(world, devices=roomy))


#: One row of `Ledger.trace`: (time s, device, tier, resident weight bytes, KV bytes).
MemoryRow = tuple[float, str, str, float, float]


class Ledger:
    """Each device's KV-cache bytes: now, at peak and over time, held in the simulator's
    memory when they live in RAM (`sim.allocate`; a VRAM tier is only recorded).

    `trace` has one row per device and tier when the weights are placed and after every
    change of its KV bytes; rows of one device and tier at one time collapse to the last.
    """

    def __init__(self, sim: Any, mem: list[StageMemory]):
        self.sim, self.mem = sim, mem
        self.now = {m.device: 0.0 for m in mem}
        self.peak = dict(self.now)
        self.trace: list[MemoryRow] = []
        self._last: dict[str, int] = {}   # device -> its latest row in `trace`

    def place(self) -> None:
        """Hold every RAM tier's resident weights; the first row of every device."""
        for m in self.mem:
            if m.tier == "ram":
                self.sim.allocate(m.device, m.resident, f"weights {m.device}")
            self._record(m)

    def hold(self, j: int, nbytes: float, label: str, request: int = -1) -> None:
        """`nbytes` more cache on `mem[j]`."""
        m = self.mem[j]
        if m.tier == "ram":
            self.sim.allocate(m.device, nbytes, label, request=request)
        self.now[m.device] += nbytes
        self.peak[m.device] = max(self.peak[m.device], self.now[m.device])
        self._record(m)

    def release(self, j: int, nbytes: float, label: str, request: int = -1) -> None:
        """`nbytes` of cache on `mem[j]` freed."""
        m = self.mem[j]
        if m.tier == "ram":
            self.sim.free(m.device, nbytes, label, request=request)
        self.now[m.device] -= nbytes
        self._record(m)

    def _record(self, m: StageMemory) -> None:
        row = (float(self.sim.now), m.device, m.tier, m.resident, self.now[m.device])
        at = self._last.get(m.device)
        if at is not None and self.trace[at][0] == row[0]:
            self.trace[at] = row
        else:
            self._last[m.device] = len(self.trace)
            self.trace.append(row)
