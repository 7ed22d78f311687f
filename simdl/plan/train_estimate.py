"""Seconds per training step of a training plan, without simpy, from the same models.

A worker's step is its data's transfers, its kernels (forward, the loss fused into the
last block, backward through the trained blocks: `sim.job`'s), the synchronisation and
the optimizer kernel. The ring all-reduce follows its schedule round by round (each
member sends once its last send and its last receive are done), exact where its flows
share no link; the other collectives, the parameter servers, gossip, local SGD and
pipelines use alpha-beta forms (Thakur, Rabenseifner & Gropp, IJHPCA 19(1), 2005) at
the flows' max-min rates, and say so. Knows training plans, costs and routes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from simdl.nn.gradcomp import wire_bytes
from simdl.plan import train_memory
from simdl.plan.costs import Costs
from simdl.plan.timeline import ring_rounds
from simdl.plan.train_costs import (
    alone,
    fluid,
    kernel,
    kernels,
    optimizer_time,
    trained_params,
)
from simdl.plan.train_pipeline import pipeline_step
from simdl.plan.training import TrainPlan, batch_bytes, deal, owner_sizes, shard_params
from simdl.plan.world import Training, World


@dataclass(frozen=True)
class TrainEstimate:
    """A training plan's `step` (s; a round for local SGD), the workload's `total`, the
    slowest worker's `compute` in a step, the bytes sent per step, peak memory per
    device (`plan.train_memory`), and why it is not exact (empty: it is)."""

    plan: TrainPlan
    step: float
    total: float
    compute: float
    nbytes: float
    memory: dict[str, float]
    why: tuple[str, ...] = field(default=())

    @property
    def exact(self) -> bool:
        return not self.why

    @property
    def per_update(self) -> float:
        """Seconds per optimizer update a worker takes: the step, or a local SGD round
        over its local steps (a round updates each worker that many times)."""
        return self.step / self.plan.sync.local_steps


def train_estimate(plan: TrainPlan, world: World, costs: Costs | None = None) -> TrainEstimate:
    """Estimate one step of `plan` (data-parallel kinds and pipelines; not distillation
    or personalisation)."""
    load = world.workload
    assert isinstance(load, Training), "train_estimate scores training plans"
    costs = costs or Costs(world)
    kind = plan.sync.kind
    steps = load.steps
    if kind == "pipeline":
        step, compute, sent, why = pipeline_step(plan, world, costs)
    else:
        step, compute, sent, why = _data_parallel(plan, world, costs)
    return TrainEstimate(plan, step, step * steps, compute, sent,
                         train_memory.need(plan, world), tuple(why))


def _data_parallel(plan: TrainPlan, world: World, costs: Costs) -> tuple[float, float, float, list[str]]:
    load, sync = world.workload, plan.sync
    n = len(plan.workers)
    owners = list(load.data_on)
    sizes = owner_sizes(load.batch, len(owners))
    dealt = deal(len(owners), n)
    samples = [sum(sizes[j] for j in d) for d in dealt]
    trained = trained_params(world, plan.freeze)
    count = sum(trained.values())
    wire = float(sum(wire_bytes(sync.compression, s, sync.ratio) for s in trained.values()))
    raw = 4.0 * count
    why: list[str] = []
    local = []
    moves = [(owners[j], device, batch_bytes(world, world.chain, sizes[j]), 0.0)
             for device, mine in zip(plan.workers, dealt) for j in mine if owners[j] != device]
    done = fluid(costs, moves)
    for device, k in zip(plan.workers, samples):
        fetch = max((t for (_, dst, _, _), t in zip(moves, done) if dst == device), default=0.0)
        local.append(fetch + kernels(world, costs, device, k, plan.freeze))
    opt = [optimizer_time(world, costs, d, count) for d in plan.workers]
    compute = max(local)
    if sync.kind in ("none", "allreduce") and n == 1:
        return compute + max(opt), compute, 0.0, why
    if sync.kind == "allreduce":
        if sync.compression in ("topk", "sign"):
            t, sent = ring(costs, plan.workers, n * wire, 1, why)
        elif sync.algorithm == "ring":
            t, sent = ring(costs, plan.workers, wire, 2, why)
        else:
            t, sent = _alpha_beta(costs, plan.workers, wire, sync.algorithm, why)
        return compute + t + max(opt), compute, sent, why
    if sync.kind == "ps":
        return _ps(plan, world, costs, local, trained, why)
    if sync.kind == "gossip":
        nbrs = min(n - 1, 2)
        nbr = [(plan.workers[r], plan.workers[u], wire, 0.0)
               for r in range(n) for u in {(r - 1) % n, (r + 1) % n} - {r}]
        exchange = max(fluid(costs, nbr), default=0.0)
        mix = max(kernel(world, costs, d, 3.0 * nbrs * count, (2 * nbrs + 2) * raw)
                  for d in plan.workers)
        why.append("gossip has no barrier: its step is the slowest worker's")
        return max(a + b for a, b in zip(local, opt)) + exchange + mix, compute, n * nbrs * wire, why
    if sync.kind == "local_sgd":
        server = plan.workers[0]
        h = sync.local_steps
        rounds = [alone(costs.hop(server, d), raw) + h * (t + o) + alone(costs.hop(d, server), wire)
                  for d, t, o in zip(plan.workers, local, opt)]
        avg = kernel(world, costs, server, 2.0 * n * count, (n + 2) * raw)
        why.append("local SGD: a step is a round of local steps" + (
            f"; {sync.clients} sampled clients taken as all" if 0 < sync.clients < n else ""))
        return max(rounds) + avg, compute, n * (raw + wire), why
    why.append(f"{sync.kind} is not estimated")
    return math.inf, compute, 0.0, why


def _ps(plan: TrainPlan, world: World, costs: Costs, local: list[float], trained: dict[str, int],
        why: list[str]) -> tuple[float, float, float, list[str]]:
    """Each worker pushes to every server as its local step ends; a server applies its
    shard's optimizer once all pushes arrived (bsp), then every worker pulls the shard.
    Flows share links max-min (`fluid`). asp and ssp: the slowest worker's own cycle."""
    sync, workers = plan.sync, plan.workers
    owner = shard_params({name: 4 * size for name, size in trained.items()}, len(sync.servers))
    shards = []
    for i, server in enumerate(sync.servers):
        names = [n for n in trained if owner[n] == i]
        if names:
            shards.append((server, sum(trained[n] for n in names),
                           float(sum(wire_bytes(sync.compression, trained[n], sync.ratio)
                                     for n in names))))
    pushes = [(w, s, wire, t) for w, t in zip(workers, local) for s, _, wire in shards]
    arrived = fluid(costs, pushes)
    applied = {}
    for server, count, _ in shards:
        last = max(t for (_, s, _, _), t in zip(pushes, arrived) if s == server)
        times = 1 if sync.mode == "bsp" else len(workers)  # asp/ssp: each push on its own
        applied[server] = last + times * optimizer_time(world, costs, server, count)
    pulls = [(s, w, 4.0 * count, applied[s]) for w in workers for s, count, _ in shards]
    step = max(fluid(costs, pulls))
    if sync.mode != "bsp":
        why.append(f"{sync.mode}: the workers' cycles taken as one synchronous step")
    sent = sum(wire for _, _, wire, _ in pushes) + sum(b for _, _, b, _ in pulls)
    return step, max(local), sent, why


def ring(costs: Costs, members: tuple[str, ...], nbytes: float, passes: int,
         why: list[str]) -> tuple[float, float]:
    """A ring all-reduce (2 passes of n - 1 rounds) or all-gather (1) of `nbytes` in
    chunks of nbytes / n (`timeline.ring_rounds`): its time and the bytes sent."""
    n = len(members)
    hops = [costs.hop(a, b) for a, b in zip(members, members[1:] + members[:1])]
    shares = costs.rates(hops)
    if any(r < h.rate for r, h in zip(shares, hops)):
        why.append("ring flows share a link")
    rounds = passes * (n - 1)
    return ring_rounds(hops, shares, nbytes / n, rounds), rounds * nbytes


def _alpha_beta(costs: Costs, members: tuple[str, ...], nbytes: float, algorithm: str,
                why: list[str]) -> tuple[float, float]:
    """Tree (binomial reduce then broadcast) and halving-doubling all-reduce by their
    alpha-beta costs, alpha and beta the worst member pair's (Thakur et al. 2005)."""
    n = len(members)
    hops = [costs.hop(a, b) for a in members for b in members if a != b]
    alpha = max(h.delay for h in hops)
    beta = max(1.0 / h.rate for h in hops)
    rounds = math.ceil(math.log2(n))
    why.append(f"{algorithm} all-reduce by its alpha-beta cost")
    if algorithm == "tree":
        return 2 * rounds * (alpha + nbytes * beta), 2 * (n - 1) * nbytes
    return 2 * rounds * alpha + 2 * (n - 1) / n * nbytes * beta, 2 * (n - 1) * nbytes


