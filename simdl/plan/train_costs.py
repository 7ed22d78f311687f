"""What the training estimates share: a worker's kernels as `sim.job` charges them, the
optimizer's kernel, a step's batch bytes, and flows at the network's max-min shares.

Knows devices, block costs and routes; knows nothing of protocols or schedules.
"""
from __future__ import annotations

import math

from simdl.hw.devices import kernel_time
from simdl.hw.maxmin import max_min_few
from simdl.nn.dense import SoftmaxCrossEntropy
from simdl.plan.costs import Costs, Hop
from simdl.plan.training import optimizer
from simdl.plan.world import World


def kernels(world: World, costs: Costs, device: str, n: int, freeze: int) -> float:
    f, b = split_kernels(world, costs, device, n, 0, len(world.chain), freeze)
    return f + b


def split_kernels(world: World, costs: Costs, device: str, n: int, start: int, stop: int,
                   freeze: int) -> tuple[float, float]:
    """Seconds of the forward and the backward kernels of blocks [start, stop) for n
    samples, the loss fused into the chain's last block, as `sim.job` charges them."""
    chain = world.chain
    cs = chain.costs(n)
    loss = SoftmaxCrossEntropy().cost(cs[-1].out_shape)
    fwd = bwd = 0.0
    for b in range(start, stop):
        c, last = cs[b], b == len(chain) - 1
        fwd += kernel(world, costs, device, c.fwd_flops + (loss.fwd_flops if last else 0.0),
                       c.fwd_bytes + (loss.fwd_bytes if last else 0))
        if b >= freeze:
            bwd += kernel(world, costs, device, c.bwd_flops + (loss.bwd_flops if last else 0.0),
                           c.bwd_bytes + (loss.bwd_bytes if last else 0))
    return fwd, bwd


def kernel(world: World, costs: Costs, device: str, flops: float, nbytes: float) -> float:
    spec = world.devices[device]
    return kernel_time(spec, costs.unit(device, None), flops, nbytes)


def optimizer_time(world: World, costs: Costs, device: str, count: float) -> float:
    flops, nbytes = optimizer(world.workload).cost(count)
    return kernel(world, costs, device, flops, nbytes)


def trained_params(world: World, freeze: int) -> dict[str, int]:
    chain = world.chain
    return {f"{b.name}.{p}": int(a.size) for b in chain.blocks[freeze:]
            for p, a in b.layer.params.items()}


def alone(hop: Hop, nbytes: float) -> float:
    return hop.delay + hop.seconds(nbytes) if hop.uses else 0.0


def fluid(costs: Costs, flows: list[tuple[str, str, float, float]]) -> list[float]:
    """When each flow (src, dst, bytes, release) ends: latency and overhead after its
    release, then max-min shares of every resource among the flows moving, recomputed
    whenever one starts or ends (the simulator's flow model, `sim.flows`, without a clock)."""
    hops = [costs.hop(a, b) for a, b, _, _ in flows]
    names = sorted({r for h in hops for r, _ in h.uses})
    index = {r: i for i, r in enumerate(names)}
    cap = costs.world.network.capacity
    capacity = [cap[r] for r in names]
    routes = [[index[r] for r, k in h.uses for _ in range(k)] for h in hops]
    done = [0.0] * len(flows)
    begin = sorted((release + h.delay, f) for f, (h, (_, _, _, release)) in enumerate(zip(hops, flows)))
    left: dict[int, float] = {}
    t, k = 0.0, 0
    while k < len(begin) or left:
        active = sorted(left)
        rates = max_min_few([routes[f] for f in active], capacity) if active else []
        finish = min((t + left[f] / r, f) for f, r in zip(active, rates)) if active else (math.inf, -1)
        arrival = begin[k][0] if k < len(begin) else math.inf
        upto = min(finish[0], arrival)
        for f, r in zip(active, rates):
            left[f] -= r * (upto - t)
        t = upto
        for f in [f for f in active if left[f] <= 1e-9 * flows[f][2]]:
            done[f] = t
            del left[f]
        while k < len(begin) and begin[k][0] <= t:
            f = begin[k][1]
            k += 1
            if flows[f][2] > 0 and hops[f].uses:
                left[f] = flows[f][2]
            else:
                done[f] = t
    return done
