"""What a generation plan may be, and where each stage's bytes live (`sim.generation`).

A stage runs on one device or on a tensor-parallel group (`plan.lm_group`: each member
holds its heads, hidden units and vocabulary rows, and its kv heads' part of every
cache). Each member's weights and cache live in the memory of the unit it runs on (a
discrete GPU's VRAM) or the device's RAM; the cache must fit (`max_batch` sequences at
full length), the weights that do not fit beside it are paged from storage.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from simdl.errors import PlanError
from simdl.hw.devices import best_unit
from simdl.plan.lm_group import GroupCosts, members, shape_of
from simdl.plan.lm_model import StepCosts, is_shape_only
from simdl.plan.plan import Plan, Stage, check
from simdl.plan.world import Generation, World


@dataclass(frozen=True)
class StageMemory:
    """Where one device's share of a stage lives and how much of its weights is paged."""

    device: str
    tier: str            # "ram" or "vram:<unit>"
    capacity: float      # bytes of that memory
    weights: float       # bytes of the stage's weights (a group member's: its shards)
    kv_peak: float       # bytes of `max_batch` sequences' caches at full length
    resident: float      # weights held in memory
    storage_bw: float | None
    stage: int = 0
    kv_token: float = 0.0  # cache bytes one sequence adds per token here

    @property
    def paged(self) -> float:
        return self.weights - self.resident

    @property
    def short(self) -> float:
        """Bytes missing to hold the KV cache beside the resident weights (0: it fits);
        the resident weights are what fits beside the cache unless nothing can be paged."""
        return max(0.0, self.kv_peak + self.resident - self.capacity)


def check_plan(plan: Plan, world: World) -> None:
    """A generation plan is one replica of stages on one device or on a tensor-parallel
    group (single, pipeline, tensor_parallel, hybrid with one pipeline); the rest as
    `plan.check` (a group checked as its first device, its members here), memory aside
    (weights may be paged: `plan_memory`)."""
    if len(plan.replicas) != 1 or any(s.units for s in plan.replicas[0].stages):
        raise PlanError("strategy", plan.strategy, "a generation workload runs one replica "
                        "of stages on one device or a group: single, pipeline, "
                        "tensor_parallel or hybrid with one pipeline")
    stages = plan.replicas[0].stages
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


def group_costs(world: World, s: Stage) -> GroupCosts | None:
    """A group stage's per-member costs (None for a one-device stage)."""
    if len(s.devices) == 1:
        return None
    return GroupCosts(shape_of(world.chain), getattr(world.chain, "weights", "fp32"),
                      len(s.devices))


def plan_memory(plan: Plan, world: World, costs: StepCosts) -> list[StageMemory]:
    """Per stage and member (in order): memory tier, weights, cache peak, what is paged."""
    load = world.workload
    assert isinstance(load, Generation)
    out = []
    for i, s in enumerate(plan.replicas[0].stages):
        group = group_costs(world, s)
        if group is None:
            shares = [(s.device, world.chain.param_bytes(s.start, s.stop),
                       sum(costs.kv_per_token[s.start:s.stop]))]
        else:
            shares = list(zip(s.devices, group.weight_bytes(s.start, s.stop),
                              group.kv_per_token(s.start, s.stop)))
        for device, weights, kv_token in shares:
            spec = world.devices[device]
            name = s.unit or best_unit(spec, s.dtype)
            unit = spec.units[name]
            tier, capacity = (("ram", spec.memory) if unit.memory is None
                              else (f"vram:{name}", unit.memory))
            kv_peak = load.max_batch * (load.prompt + load.tokens) * kv_token
            # without a storage figure nothing can be paged: the weights must fit too
            resident = (weights if not spec.storage_bw
                        else min(weights, max(0.0, capacity - kv_peak)))
            out.append(StageMemory(device, tier, capacity, weights, kv_peak, resident,
                                   spec.storage_bw, i, kv_token))
    return out
