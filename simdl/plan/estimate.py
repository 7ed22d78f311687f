"""Fast analytic cost of blocks and plans, without simpy (for planners and `auto` choices).

Uses the same device model the simulator uses (`kernel_time`) and the route's
bottleneck bandwidth, so an estimate and a simulated run agree wherever no
queueing or sharing occurs. `estimate` scores any inference plan on the run's
workload: capacity, latency percentiles, bytes per link, energy, battery life
and peak memory per device, and says whether (and why not) it is exact.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

from simdl.hw.devices import best_unit, kernel_time
from simdl.nn import shard as tp
from simdl.plan.costs import Costs
from simdl.plan.plan import (
    Plan,
    replica_batches,
    shard_stage,
    shard_weights,
)
from simdl.plan.queueing import Served, meetings, percentile, replay
from simdl.plan.timeline import Lone, finish, lone
from simdl.plan.world import Inference, World


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
    """One flow alone on its route: latency, overhead, then the bottleneck rate (a
    resource the route crosses twice, a Wi-Fi airtime, gives it half its capacity)."""
    return Costs(world).hop(src, dst).time(nbytes)


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


@dataclass(frozen=True)
class Estimate:
    """What a plan does on the world's workload, by the simulator's own cost models.

    `capacity` (requests/s) is 1 / the busiest server's seconds per request (a unit's
    kernels, or a link's bytes over its capacity), replicas loaded as the dispatch
    shares requests; `bottleneck` names it. `latency` (s) is one request alone (replicas
    weighted by the share each serves). `throughput` is requests / makespan and `p50`..
    the latency percentiles (s) of the whole run, by `method`. `energy` (J) is
    each device's over the run, idle included (every device of the pool, as the run
    counts it); `per_request_J` the energy a request adds (kernels and radios);
    `battery_life` (s) how long each battery lasts at the plan's average draw (inf on
    mains); `peak_memory` (bytes) weights plus the activations at the busiest moment;
    `link_bytes` per network resource. `exact`: equal to the simulator, else `why`.
    """

    plan: Plan
    capacity: float
    bottleneck: str
    throughput: float
    latency: float
    p50: float
    p95: float
    p99: float
    makespan: float
    per_request_J: float
    energy: dict[str, float]
    battery_life: dict[str, float]
    peak_memory: dict[str, float]
    link_bytes: dict[str, float]
    method: str
    why: tuple[str, ...] = field(default=())

    @property
    def exact(self) -> bool:
        return not self.why


def capacity(plan: Plan, world: World, costs: Costs | None = None) -> tuple[float, str]:
    """(requests per second the plan sustains, its busiest server): 1 / that server's
    seconds per request, requests shared out as dispatch shares them at saturation."""
    alone, weights, _ = _alone(plan, world, costs or Costs(world))
    return _busiest(alone, weights)[:2]


def _alone(plan: Plan, world: World, costs: Costs) -> tuple[list[Lone], list[float], list[int]]:
    """Each entry's lone timeline (one for split or all dispatch: every replica at once),
    the share of requests it takes at saturation, and the replicas it stands for. The
    timelines are not yet `finish`ed (energy, peak memory, the overlap check): their
    servers' busy times, all that `capacity` and the shares read, are known without."""
    load = world.workload
    assert isinstance(load, Inference), "estimate scores inference plans"
    parts = [(i, rep, n) for i, (rep, n) in enumerate(zip(plan.replicas,
                                                          replica_batches(plan, load.batch)))
             if n > 0]
    if plan.dispatch in ("split", "all"):  # every request uses every replica at once
        together = Lone()
        for i, rep, n in parts:
            lone(plan, rep, n, costs, tag=i, into=together)
        return [together], [1.0], [0]
    alone = [lone(plan, rep, n, costs, tag=i) for i, rep, n in parts]
    replicas = [i for i, _, _ in parts]
    return alone, _shares(plan, alone, replicas), replicas


def _busiest(alone: list[Lone], weights: list[float]) -> tuple[float, str, tuple[str, ...]]:
    """(capacity, the bottleneck's name, its key): each server's seconds per request
    summed over the entries by their shares; the most loaded (ties: the first by key)."""
    loads: dict[tuple[str, ...], float] = defaultdict(float)
    for w, part in zip(weights, alone):
        for server, busy in part.busy.items():
            loads[server] += w * busy
    server = max(sorted(loads), key=lambda s: loads[s])
    period = loads[server]
    return 1.0 / period if period > 0 else float("inf"), "/".join(server[1:]), server


def estimate(plan: Plan, world: World, costs: Costs | None = None) -> Estimate:
    """Score an inference plan without running it (`costs` caches lookups across plans)."""
    load = world.workload
    costs = costs or Costs(world)
    alone, weights, replicas = _alone(plan, world, costs)
    for part in alone:
        finish(part, costs)
    rate, bottleneck, server = _busiest(alone, weights)
    served = replay(plan, world, [a.latency for a in alone],
                    [max(a.busy.values(), default=0.0) for a in alone],
                    [plan.replicas[i].share for i in replicas],
                    [a.busy.get(server, 0.0) for a in alone])
    counts = Counter(used[0] for used in served.replicas)  # requests per entry of `alone`
    why = [w for part in alone for w in part.why]
    acts = None
    if served.waited:
        why.append("requests queue at a bottleneck")
        if len({c.priority for c in load.classes}) > 1:
            why.append("priority classes are not modelled in the queue")
    else:
        shared, acts = meetings(served, alone)
        if shared:
            why.append("requests in flight together share a server")
    makespan = float(served.finish.max()) if served.finish.size else 0.0
    energy = {d: spec.idle_power * makespan for d, spec in world.devices.items()}
    link_bytes: dict[str, float] = defaultdict(float)
    for k, count in counts.items():
        for d, joules in alone[k].energy.items():
            energy[d] += count * joules
        for r, b in alone[k].nbytes.items():
            link_bytes[r] += count * b
    for d, spec in world.devices.items():
        if spec.battery is not None and energy[d] > spec.battery:
            why.append(f"{d}'s battery empties during the run")
    latencies = served.latency
    return Estimate(
        plan=plan, capacity=rate, bottleneck=bottleneck,
        throughput=len(latencies) / makespan if makespan else float("nan"),
        latency=float(np.dot(weights, [a.latency for a in alone])),
        p50=percentile(latencies, 50), p95=percentile(latencies, 95),
        p99=percentile(latencies, 99), makespan=makespan,
        per_request_J=float(sum(w * sum(a.energy.values()) for w, a in zip(weights, alone))),
        energy=energy, battery_life=_battery_life(world, energy, makespan),
        peak_memory=_peak_memory(plan, world, costs, acts, alone, served),
        link_bytes=dict(link_bytes), method=_method(served, why), why=tuple(why))


def _shares(plan: Plan, alone: list[Lone], replicas: list[int]) -> list[float]:
    """The fraction of requests each replica serves at saturation: round robin evenly,
    weighted by its share, least loaded as fast as each goes (1 / its bottleneck)."""
    if plan.dispatch == "round_robin":
        return [1.0 / len(alone)] * len(alone)
    if plan.dispatch == "least_loaded":
        speed = [1.0 / max(max(a.busy.values(), default=0.0), 1e-300) for a in alone]
    else:
        speed = [plan.replicas[i].share for i in replicas]
    whole = sum(speed)
    return [s / whole for s in speed]


def _battery_life(world: World, energy: dict[str, float], makespan: float) -> dict[str, float]:
    """Seconds each battery lasts drawing the run's average power (inf on mains)."""
    out = {}
    for d, spec in world.devices.items():
        power = energy[d] / makespan if makespan > 0 else spec.idle_power
        out[d] = float("inf") if spec.battery is None else spec.battery / power
    return out


def _peak_memory(plan: Plan, world: World, costs: Costs, acts: dict[str, float] | None,
                 alone: list[Lone], served: Served) -> dict[str, float]:
    """Weights (as `plan.check` places them) plus activations: `acts` when the requests'
    memory was followed together; else a bound, a device's lone peak times the most
    requests in flight at once on the replicas that use it (at most what fits)."""
    weights: dict[str, float] = defaultdict(float)
    for rep in plan.replicas:
        for s in rep.stages:
            if len(s.devices) == 1:
                weights[s.device] += float(costs.weights(s.dtype, s.prune, s.sparsity,
                                                          rep.model)[s.start:s.stop].sum())
            else:
                held = shard_stage(world.models[rep.model], s)
                for d, b in zip(s.devices, shard_weights(held, len(s.devices))):
                    weights[d] += b
    if acts is not None:
        return {d: weights[d] + acts.get(d, 0.0) for d in world.devices}
    using: dict[str, set[int]] = defaultdict(set)  # device -> the entries of `alone` using it
    for k, lone in enumerate(alone):
        for d, held in lone.held.items():
            if held > 0:
                using[d].add(k)
    edges: dict[int, list[tuple[float, int]]] = defaultdict(list)  # entry -> its requests' edges
    for a, f, used in zip(served.arrival, served.finish, served.replicas):
        edges[used[0]] += ((a, 1), (f, -1))
    out = {}
    for d in world.devices:
        lone_peak = max((alone[k].held[d] for k in using[d]), default=0.0)
        room = max(world.devices[d].memory - weights[d], lone_peak)
        out[d] = weights[d] + min(_in_flight(edges, using[d]) * lone_peak, room)
    return out


def _in_flight(edges: dict[int, list[tuple[float, int]]], entries: set[int]) -> int:
    """The most requests in flight at once among those served by `entries`, from each
    entry's (time, +1 arrival / -1 finish) edges (a finish and an arrival at one instant
    do not overlap)."""
    level = most = 0
    for _, step in sorted(e for k in entries for e in edges[k]):
        level += step
        most = max(most, level)
    return most


def _method(served: Served, why: list[str]) -> str:
    """How the latency percentiles were reached, in words."""
    if not why:
        return "exact: the simulator's timeline (no request waits or shares a server)"
    if served.waited:
        return ("queueing: Lindley's recursion at each replica's bottleneck over the run's "
                "arrivals (exact for fixed-time stations in series, Avi-Itzhak 1965)")
    return "approximation: " + "; ".join(why)
