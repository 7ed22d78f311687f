"""Fast analytic cost of blocks and plans, without simpy (for planners and `auto` choices).

Uses the same device model the simulator uses (`kernel_time`) and the route's
bottleneck bandwidth, so an estimate and a simulated run agree wherever no
queueing or sharing occurs.
"""
from __future__ import annotations

from collections import Counter

from simdl.hw.devices import best_unit, kernel_time
from simdl.nn import shard as tp
from simdl.plan.plan import Plan, Replica, input_bytes, replica_batches
from simdl.plan.world import World


def block_times(world: World, device: str, batch: int, unit: str | None = None,
                model: str = "main") -> list[float]:
    """Seconds each block of `model` takes forward on `device` for a batch of `batch`."""
    spec = world.devices[device]
    unit = unit or best_unit(spec)
    return [kernel_time(spec, unit, c.fwd_flops, c.fwd_bytes)
            for c in world.models[model].costs(batch)]


def group_block_times(world: World, devices: tuple[str, ...], batch: int,
                      split: str = "auto") -> list[float]:
    """Per block, a tensor-parallel group's compute time: the busiest member's shard
    kernels, as `shard` cuts the block (collectives left out: a lower bound). One device
    is `block_times`."""
    if len(devices) == 1:
        return block_times(world, devices[0], batch)
    chain, specs = world.chain, [world.devices[d] for d in devices]
    units = [best_unit(spec) for spec in specs]
    shape, out = (batch, *chain.in_shape), []
    for b, cost in enumerate(chain.costs(batch)):
        program = tp.shard(chain[b].layer, len(devices), split, chain.names[b])
        busy = [0.0] * len(devices)
        for op, op_cost in zip(program.ops, program.costs(shape)):
            if isinstance(op, tp.Compute):  # the only ops the simulator gives time to
                for m, c in enumerate(op_cost):
                    busy[m] += kernel_time(specs[m], units[m], c.fwd_flops, c.fwd_bytes)
        out.append(max(busy))
        shape = cost.out_shape
    return out


def transfer_time(world: World, src: str, dst: str, nbytes: float) -> float:
    """One flow alone on its route: latency, overhead, then the bottleneck rate.

    A resource the route crosses twice (a Wi-Fi airtime) gives it half its capacity.
    """
    if src == dst:
        return 0.0
    route = world.network.route(src, dst)
    uses = Counter(route.resources)
    rate = min(world.network.capacity[r] / n for r, n in uses.items())
    return route.latency + world.network.overhead + nbytes / rate


def offload_latency(world: World, target: str, cut: int) -> float:
    """One request's latency with blocks [0, cut) on the source and the rest on `target`."""
    source, batch, chain = world.workload.source, world.workload.batch, world.chain
    costs = chain.costs(batch)
    local = sum(block_times(world, source, batch)[:cut])
    remote = sum(block_times(world, target, batch)[cut:])
    if cut == len(chain):
        return local
    sent = input_bytes(chain, batch) if cut == 0 else costs[cut - 1].out_bytes
    return (local + transfer_time(world, source, target, sent) + remote
            + transfer_time(world, target, source, costs[-1].out_bytes))


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


def stage_times(rep: Replica, world: World, batch: int, microbatches: int,
                source: str) -> list[tuple[float, str]]:
    """(seconds per request, what) of each stage of a replica serving `batch` samples and
    of each transfer between them, input and answer included: kernels alone on their
    unit (fp32, no sparse speed-up), flows alone on their route."""
    chain = world.models[rep.model]
    m = max(1, min(microbatches, batch))
    mb = -(-batch // m)
    costs = chain.costs(mb)
    out, here, sent = [], source, input_bytes(chain, mb)
    for s in rep.stages:
        out.append((m * transfer_time(world, here, s.device, sent), f"{here}->{s.device}"))
        if len(s.devices) == 1:
            t = sum(block_times(world, s.device, mb, s.unit, rep.model)[s.start:s.stop])
        else:
            t = sum(group_block_times(world, s.devices, mb, s.split)[s.start:s.stop])
        out.append((m * t, f"{'+'.join(s.devices)} blocks {s.start}-{s.stop - 1}"))
        here, sent = s.device, costs[s.stop - 1].out_bytes
    out.append((m * transfer_time(world, here, source, sent), f"{here}->{source}"))
    return out


def capacity(plan: Plan, world: World) -> tuple[float, str]:
    """Requests per second the plan sustains at most, and its bottleneck: each replica's
    1 / its slowest stage or transfer per request, combined by how requests reach the
    replicas (every one sees each request: the slowest; round robin: n x the slowest;
    weighted: the slowest over its share; least loaded: the sum). Queueing, shared
    links and compression speed-ups are left out."""
    load, n = world.workload, len(plan.replicas)
    rates: list[tuple[float, str]] = []
    for rep, batch in zip(plan.replicas, replica_batches(plan, load.batch)):
        if batch == 0:
            continue
        t, what = max(stage_times(rep, world, batch, plan.microbatches, plan.source))
        rate = 1.0 / t if t > 0 else float("inf")
        if plan.dispatch == "round_robin":
            rate *= n
        elif plan.dispatch == "weighted":
            rate /= rep.share / sum(r.share for r in plan.replicas)
        rates.append((rate, what))
    if plan.dispatch == "least_loaded":
        return sum(r for r, _ in rates), "sum of replicas"
    return min(rates)

