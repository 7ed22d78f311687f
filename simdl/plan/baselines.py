"""The plans a user would try before a planner: what `plan.search` is measured against.

- fastest_single: the whole model on the device with the lowest estimated latency
  (among those it fits, when any does);
- equal_layers: every device in the order listed, the same number of blocks each;
- flops_proportional: in the order listed, blocks in proportion to each device's peak
  FLOP/s (its fastest unit's catalogue figure);
- memory_proportional: the default of the exo home-cluster runtime: devices in a ring
  by memory, largest first, blocks in proportion to memory
  (RingMemoryWeightedPartitioningStrategy, exo-explore/exo,
  exo/topology/ring_memory_weighted_partitioning_strategy.py), the memory exo reads
  (`offered_memory`: a device's GPU's own when it has one, else its RAM);
- ring_listed: every device in the order listed, cuts balancing compute alone
  (`strategies.pipeline` with `cuts: auto`, links ignored).
A baseline may not fit memory: then it is what a user would have hit, and
`plan.check` says why. Knows strategies and the estimator; not the search.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from simdl.errors import PlanError
from simdl.hw.devices import best_unit
from simdl.plan.costs import Costs
from simdl.plan.estimate import balanced_cuts, block_times, estimate
from simdl.plan.plan import Plan, Stage, check, single_path
from simdl.plan.world import World


def fastest_single(world: World, devices: Sequence[str]) -> Plan:
    """The device whose lone request is fastest, the fitting ones first."""
    costs, n = Costs(world), len(world.chain)

    def rank(d: str) -> tuple[bool, float, str]:
        p = _pipeline(world, [d], [0, n], "fastest_single")
        return (not _fits(p, world), estimate(p, world, costs).latency, d)

    best = min(devices, key=rank)
    return _pipeline(world, [best], [0, n], "fastest_single")


def equal_layers(world: World, devices: Sequence[str]) -> Plan:
    return _proportional(world, list(devices), [1.0] * len(devices), "equal_layers")


def flops_proportional(world: World, devices: Sequence[str]) -> Plan:
    peak = [world.devices[d].units[best_unit(world.devices[d])].peak["fp32"] for d in devices]
    return _proportional(world, list(devices), peak, "flops_proportional")


def offered_memory(world: World, device: str) -> float:
    """The memory exo weighs a device by: on a machine whose fastest unit has its own
    (a discrete GPU) that unit's, as exo reads an NVIDIA GPU's total VRAM, else the
    device's RAM (exo-explore/exo, exo/topology/device_capabilities.py,
    linux_device_capabilities)."""
    spec = world.devices[device]
    own = spec.units[best_unit(spec)].memory
    return spec.memory if own is None else own


def memory_proportional(world: World, devices: Sequence[str]) -> Plan:
    ring = sorted(devices, key=lambda d: (offered_memory(world, d), d), reverse=True)
    return _proportional(world, ring, [offered_memory(world, d) for d in ring],
                         "memory_proportional")


def memory_cuts(world: World, devices: Sequence[str]) -> list[int]:
    """exo's rule in the order given: the first block of every stage after the first,
    blocks in proportion to `offered_memory` (largest remainders, `shares`). PlanError
    when a device's share rounds to no block."""
    counts = shares([offered_memory(world, d) for d in devices], len(world.chain))
    for d, c in zip(devices, counts):
        if not c:
            raise PlanError("cuts", "memory", f"a block for every device; {d}'s share of "
                            f"{len(world.chain)} blocks by memory rounds to none: leave it out "
                            "or give cuts")
    return [sum(counts[:i]) for i in range(1, len(counts))]


def ring_listed(world: World, devices: Sequence[str]) -> Plan:
    n, devices = len(world.chain), list(devices)[:len(world.chain)]
    if len(devices) == 1:
        return _pipeline(world, devices, [0, n], "ring_listed")
    times = [block_times(world, d, world.workload.batch) for d in devices]
    return _pipeline(world, devices, [0, *balanced_cuts(times), n], "ring_listed")


Baseline = Callable[[World, Sequence[str]], Plan]

BASELINES: dict[str, Baseline] = {
    "fastest_single": fastest_single,
    "equal_layers": equal_layers,
    "flops_proportional": flops_proportional,
    "memory_proportional": memory_proportional,
    "ring_listed": ring_listed,
}


def baselines(world: World, devices: Sequence[str] | None = None) -> dict[str, Plan]:
    """Every baseline over `devices` (default: the whole pool, in its order)."""
    devices = list(devices or world.devices)
    if not devices:
        raise PlanError("devices", devices, "at least one device")
    for d in devices:
        world.known("devices", d)
    return {name: make(world, devices) for name, make in BASELINES.items()}


def shares(weights: Sequence[float], n: int) -> list[int]:
    """`n` blocks in proportion to `weights` by largest remainders (ties to the earlier);
    a device whose share rounds to none is left out."""
    exact = [n * w / sum(weights) for w in weights]
    counts = [int(e) for e in exact]
    order = sorted(range(len(weights)), key=lambda i: (counts[i] - exact[i], i))
    for i in order[:n - sum(counts)]:
        counts[i] += 1
    return counts


def _proportional(world: World, devices: list[str], weights: list[float], name: str) -> Plan:
    counts = shares(weights, len(world.chain))
    used = [d for d, c in zip(devices, counts) if c]
    bounds = [0]
    for c in counts:
        if c:
            bounds.append(bounds[-1] + c)
    return _pipeline(world, used, bounds, name)


def _pipeline(world: World, devices: list[str], bounds: list[int], name: str) -> Plan:
    stages = [Stage((d,), a, b) for d, a, b in zip(devices, bounds, bounds[1:])]
    return single_path(name, world, stages, devices=devices)


def _fits(plan: Plan, world: World) -> bool:
    try:
        check(plan, world)
        return True
    except PlanError:
        return False
