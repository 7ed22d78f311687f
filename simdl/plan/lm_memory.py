"""Where a generation plan's bytes live, and what it costs to page what does not fit.

A stage runs on one device or on a tensor-parallel group (`plan.lm_group`: each member
holds its heads, hidden units and vocabulary rows, and its kv heads' part of every
cache). Each member's weights and cache live in the memory of the unit it runs on (a
discrete GPU's VRAM) or the device's RAM; the cache must fit (`max_batch` sequences at
full length), the weights that do not fit beside it are paged from storage on every
pass, charged in each kernel as extra bytes at the bandwidth the unit sees. One rule for
the simulator (`sim.generation`) and the estimator (`plan.lm_estimate`).
"""
from __future__ import annotations

from dataclasses import dataclass

from simdl.hw.devices import best_unit, unit_rates
from simdl.plan.lm_group import GroupCosts, shape_of
from simdl.plan.lm_model import WIRE_BYTES, StepCosts, wire_of
from simdl.plan.plan import Plan, Stage
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
    mem_bw: float = 0.0    # bytes/s the stage's unit sees (its kernels' memory term)

    @property
    def paged(self) -> float:
        return self.weights - self.resident

    @property
    def short(self) -> float:
        """Bytes missing to hold the KV cache beside the resident weights (0: it fits);
        the resident weights are what fits beside the cache unless nothing can be paged."""
        return max(0.0, self.kv_peak + self.resident - self.capacity)

    @property
    def paged_extra(self) -> float:
        """Extra bytes a kernel is charged per weight byte of the stage for its paged
        share: read at `storage_bw` rather than `mem_bw`, paged bytes x mem_bw /
        storage_bw, so the kernel's memory term gains paged bytes / storage_bw."""
        if not self.paged:
            return 0.0
        assert self.storage_bw
        return self.paged / self.weights * self.mem_bw / self.storage_bw


def group_costs(world: World, s: Stage) -> GroupCosts | None:
    """A group stage's per-member costs, collectives in the wire dtype (None for a
    one-device stage)."""
    if len(s.devices) == 1:
        return None
    return GroupCosts(shape_of(world.chain), getattr(world.chain, "weights", "fp32"),
                      len(s.devices), WIRE_BYTES[wire_of(world.chain)])


def stage_memory(world: World, s: Stage, costs: StepCosts, index: int = 0) -> list[StageMemory]:
    """Per member of stage `s` (in order): its memory tier, weights, cache peak, paging."""
    load = world.workload
    assert isinstance(load, Generation)
    group = group_costs(world, s)
    if group is None:
        shares = [(s.device, world.chain.param_bytes(s.start, s.stop),
                   sum(costs.kv_per_token[s.start:s.stop]))]
    else:
        shares = list(zip(s.devices, group.weight_bytes(s.start, s.stop),
                          group.kv_per_token(s.start, s.stop)))
    out = []
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
                               spec.storage_bw, index, kv_token,
                               unit_rates(spec, name, s.dtype)[1]))
    return out


def plan_memory(plan: Plan, world: World, costs: StepCosts) -> list[StageMemory]:
    """Per stage and member (in order): memory tier, weights, cache peak, what is paged."""
    return [m for i, s in enumerate(plan.replicas[0].stages)
            for m in stage_memory(world, s, costs, i)]
