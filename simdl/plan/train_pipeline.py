"""One step of pipeline-parallel training replayed op by op, without simpy.

The batch goes to the first stage and the labels to the last; each stage runs its
schedule (`plan.schedules`) in order, a forward waiting for its activation and a
backward for its gradient (sent without blocking the sender); then each stage's
optimizer. The flows of one hop share it (processor sharing); the replay is repeated
until their release times settle. Flows of different hops are taken alone.
"""
from __future__ import annotations

import numpy as np

from simdl.plan.costs import Costs
from simdl.plan.schedules import SCHEDULES
from simdl.plan.timeline import processor_sharing
from simdl.plan.train_costs import (
    alone,
    fluid,
    optimizer_time,
    split_kernels,
)
from simdl.plan.training import TrainPlan, batch_bytes, owner_sizes
from simdl.plan.world import World


def pipeline_step(plan: TrainPlan, world: World, costs: Costs) -> tuple[float, float, float, list[str]]:
    """One step replayed op by op: the batch to the first stage and the labels to the
    last, then each stage's schedule (`plan.schedules`) in order, a forward waiting for
    its activation and a backward for its gradient (sent without blocking the sender),
    then each stage's optimizer. The flows of one hop share it (processor sharing, the
    replay repeated until their release times settle); different hops are taken alone."""
    load, chain = world.workload, world.chain
    p, m = len(plan.stages), plan.microbatches
    sizes = [load.batch // m + (j < load.batch % m) for j in range(m)]
    owners = list(load.data_on)
    first, last = plan.stages[0].device, plan.stages[-1].device
    moves = [(o, first, batch_bytes(world, world.chain, n), 0.0)
             for o, n in zip(owners, owner_sizes(load.batch, len(owners))) if o != first]
    t0 = max(fluid(costs, moves), default=0.0)
    y = world.train_data.y
    labels = t0 + alone(costs.hop(first, last), load.batch * y.itemsize
                         * int(np.prod(y.shape[1:], dtype=np.int64)))
    kernels = [[split_kernels(world, costs, s.device, n, s.start, s.stop, 0) for n in sizes]
               for s in plan.stages]
    ops = [SCHEDULES[plan.schedule](s, p, m) for s in range(p)]
    # a message (kind, to stage, micro-batch) -> its hop and bytes
    msgs = {}
    for s in range(1, p):
        a, b = plan.stages[s - 1], plan.stages[s]
        for j, n in enumerate(sizes):
            msgs[("F", s, j)] = (costs.hop(a.device, b.device), chain.costs(n)[a.stop - 1].out_bytes)
            msgs[("B", s - 1, j)] = (costs.hop(b.device, a.device), chain.costs(n)[b.start].in_bytes)
    arrive: dict[tuple[str, int, int], float] = {}
    for _ in range(20):
        clock, released = replay(ops, kernels, msgs, arrive, t0, labels)
        settled = shared_hops(msgs, released)
        if settled == arrive:
            break
        arrive = settled
    for s, st in enumerate(plan.stages):
        clock[s] += optimizer_time(world, costs, st.device, chain.n_params(st.start, st.stop))
    compute = max(sum(f + b for f, b in ks) for ks in kernels)
    sent = sum(nb for _, nb in msgs.values())
    return max(clock), compute, sent, ["pipeline hops each share only with themselves"]


def replay(ops: list[list[tuple[str, int]]], kernels: list, msgs: dict, arrive: dict,
            t0: float, labels: float) -> tuple[list[float], dict]:
    """Each stage's ops in order from t0; a message arrives at `arrive[key]` if known
    (else when it would alone). Returns the stages' clocks and each message's release."""
    p = len(ops)
    clock, at, done, released = [t0] * p, [0] * p, {}, {}
    while any(at[s] < len(ops[s]) for s in range(p)):
        moved = False
        for s in range(p):
            while at[s] < len(ops[s]):
                op, j = ops[s][at[s]]
                src = ("F", s - 1, j) if op == "F" and s > 0 else (
                    ("B", s + 1, j) if op == "B" and s < p - 1 else None)
                if (src is not None and src not in done) or (op == "B" and ("F", s, j) not in done):
                    break
                ready = [clock[s]]
                if src is not None:
                    key = (op, s, j)
                    hop, nb = msgs[key]
                    released[key] = done[src]
                    ready.append(arrive.get(key, done[src] + alone(hop, nb)))
                if op == "F" and s == p - 1 and j == 0:
                    ready.append(labels)
                f, b = kernels[s][j]
                clock[s] = done[(op, s, j)] = max(ready) + (f if op == "F" else b)
                at[s] += 1
                moved = True
        assert moved, "a schedule waits for itself"
    return clock, released


def shared_hops(msgs: dict, released: dict) -> dict:
    """Arrival of each message when the messages of one hop share it equally."""
    by_hop: dict = {}
    for key in released:
        by_hop.setdefault((msgs[key][0].src, msgs[key][0].dst), []).append(key)
    out = {}
    for keys in by_hop.values():
        hop = msgs[keys[0]][0]
        if not hop.uses:
            out.update({k: released[k] for k in keys})
            continue
        ends = processor_sharing([released[k] + hop.delay for k in keys],
                                 [msgs[k][1] / hop.rate for k in keys])
        out.update(zip(keys, ends))
    return out


