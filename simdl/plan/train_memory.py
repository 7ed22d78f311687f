"""The memory a training plan holds at its peak on each device, before anything runs.

The rules are the training substrate's (`sim.job`), stated here as arithmetic so a
plan that can never fit is refused up front: a worker holds the weights (every
block), gradients of the trained blocks, optimizer state where it updates locally,
error-feedback residuals, its protocol's extra copies, the step's batch, and the
activations its trained blocks save for backward (plus the loss's saved
probabilities) for every micro-batch in flight: one for data parallel, m for GPipe,
min(p - s, m) for stage s under 1F1B. A test holds this equal to the simulated peak.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from simdl.errors import PlanError
from simdl.nn.chain import Chain
from simdl.nn.dense import SoftmaxCrossEntropy
from simdl.nn.distill import DistillationLoss
from simdl.plan.plan import input_bytes
from simdl.plan.training import (
    TrainPlan,
    batch_bytes,
    deal,
    optimizer,
    owner_sizes,
    shard_params,
)
from simdl.plan.world import Training, World


def need(plan: TrainPlan, world: World) -> dict[str, float]:
    """Peak bytes per device of running `plan` (devices it does not touch are left out)."""
    load = world.workload
    assert isinstance(load, Training)
    held: Counter[str] = Counter()  # lasting: the whole run
    step: Counter[str] = Counter()  # during a step: the batch and the saved activations
    kind = plan.sync.kind
    chain = world.models[plan.params["student"]] if kind == "distill" else world.chain
    slots = optimizer(load).slots
    if kind == "pipeline":
        _pipeline(plan, world, chain, slots, held)
        return dict(held)
    k = plan.freeze
    trainable = 4 * chain.n_params(k)
    sizes = owner_sizes(load.batch, len(load.data_on))
    dealt = deal(len(load.data_on), len(plan.workers))
    sync = plan.sync
    for rank, (device, owners) in enumerate(zip(plan.workers, dealt)):
        n = sum(sizes[j] for j in owners)
        held[device] += chain.param_bytes() + trainable
        if kind != "ps":
            held[device] += slots * trainable
        feedback = sync.compression in ("topk", "sign") and kind != "gossip"
        held[device] += trainable if feedback else 0
        if kind == "gossip":
            degree = min(len(plan.workers) - 1, 2)
            held[device] += (degree + 1) * trainable
        if kind == "local_sgd":
            held[device] += trainable + (2 * trainable if rank == 0 else 0)
        if kind == "distill":
            held[device] += world.chain.param_bytes()
        costs = chain.costs(n)
        loss = DistillationLoss() if kind == "distill" else SoftmaxCrossEntropy()
        step[device] += (batch_bytes(world, chain, n) + sum(c.saved_bytes for c in costs[k:])
                         + loss.cost(costs[-1].out_shape).saved_bytes)
    if kind == "ps":
        _servers(plan, chain, slots, held)
    if kind == "distill":  # the student lands on its target after the last step
        target = plan.params["target"]
        step[target] = max(step[target], chain.param_bytes())
    return dict(held + step)


def check(plan: TrainPlan, world: World) -> None:
    """Refuse a plan whose peak does not fit some device: the device, the bytes needed
    and the bytes it has."""
    for device, nbytes in need(plan, world).items():
        capacity = world.devices[device].memory
        if nbytes > capacity:
            raise PlanError(f"devices.{device}.memory", f"{nbytes / 2**20:.1f} MiB needed",
                            f"the plan must fit in {capacity / 2**20:.1f} MiB")


def _servers(plan: TrainPlan, chain: Chain, slots: int, held: Counter[str]) -> None:
    """Each parameter server's shard, its gradient sum and its optimizer state."""
    k = plan.freeze
    raw = {f"{b.name}.{p}": int(a.nbytes) for b in chain.blocks[k:]
           for p, a in b.layer.params.items()}
    owner = shard_params(raw, len(plan.sync.servers))
    for i, device in enumerate(plan.sync.servers):
        held[device] += (2 + slots) * sum(v for name, v in raw.items() if owner[name] == i)


def _pipeline(plan: TrainPlan, world: World, chain: Chain, slots: int,
              held: Counter[str]) -> None:
    p, m, batch = len(plan.stages), plan.microbatches, world.workload.batch
    sizes = [len(a) for a in np.array_split(np.arange(batch), m)]
    labels = batch_bytes(world, chain, batch) - input_bytes(chain, batch)
    loss = SoftmaxCrossEntropy()
    for s, st in enumerate(plan.stages):
        held[st.device] += chain.param_bytes(st.start, st.stop)
        held[st.device] += (1 + slots) * 4 * chain.n_params(st.start, st.stop)
        in_flight = m if plan.schedule == "gpipe" else min(p - s, m)
        for n in sizes[:in_flight]:
            costs = chain.costs(n)
            held[st.device] += sum(c.saved_bytes for c in costs[st.start:st.stop])
            if s == p - 1:
                held[st.device] += loss.cost(costs[-1].out_shape).saved_bytes
    spec = plan.params.get("checkpoint")
    if spec:  # the checkpoint device holds the whole model's state, each stage a copy of its own
        state = [chain.param_bytes(st.start, st.stop) + 4 * slots * chain.n_params(st.start, st.stop)
                 for st in plan.stages]
        held[spec["to"]] += sum(state)
        for st, nbytes in zip(plan.stages, state):
            if st.device != spec["to"]:
                held[st.device] += nbytes
    first, last = plan.stages[0].device, plan.stages[-1].device
    held[first] += batch_bytes(world, chain, batch)
    if last != first:
        held[last] += labels
