"""Synchronous data parallel (and one device) that survives its workers leaving: every
step, the gradients of the workers still present are summed by an all-reduce over
them, and each of them takes the same optimizer step.

A worker whose device leaves during its local step is dropped from the step; one that
leaves during the all-reduce cuts it short, and the collective runs again from the
start over the workers left (ring, tree, halving-doubling and hierarchical all
re-form over any member list; the bytes and time of the cut attempt are spent). The
sum is of what arrived: each member's gradient weighted by its share of the members'
samples, so it is the mean gradient over the samples that count. A worker that
returns fetches the current weights and optimizer state from a member (a real
transfer the step waits for) and takes part from that step on (`sim.churn.Roster`).
"""
from __future__ import annotations

from collections.abc import Callable

import simpy

from simdl.errors import DeviceGone
from simdl.plan.training import TrainPlan
from simdl.plan.world import World
from simdl.sim import collectives
from simdl.sim.churn import Roster, close_step, lost, survive
from simdl.sim.engine import Simulator
from simdl.sim.exchange import Tally
from simdl.sim.job import Gen, Job, stepper, sum_in_order


def data_parallel(plan: TrainPlan, world: World, sim: Simulator,
                  progress: Callable[[int], None] | None = None) -> Job:
    """Every step: the present workers' gradients, weighted by their samples, summed by
    an all-reduce; every one of them then takes the same optimizer step, so replicas
    stay equal (the first present worker's is evaluated). fp16/int8 packets are
    all-reduced; top-k and sign packets cannot be summed on the way, so they are
    all-gathered (ring)."""
    job = Job(plan, world, sim, progress)
    for w in job.add_workers(plan.workers):
        job.hold(w)
    roster = Roster(job)
    job.model = lambda: (roster.members() or job.workers)[0].chain
    sim.process(_steps(job, roster))
    return job


def _steps(job: Job, roster: Roster) -> Gen:
    sim, extra = job.sim, job.metrics.extra
    wire = float(sum(job.wire.values()))
    for step in range(job.load.steps):
        if job.stop:
            return
        yield from roster.admit(step)
        ws = roster.members()
        if not ws:
            extra["outcome"] = f"no workers left at step {step}"
            job.done.succeed()
            return
        tallies = {w.rank: Tally(sim.now) for w in ws}
        procs = [sim.process(survive(job.local_step(w, step, tallies[w.rank]))) for w in ws]
        yield sim.env.all_of(procs)
        ok = [w for w, p in zip(ws, procs) if not lost(p.value) and roster.present(w)]
        t, mark = sim.now, len(sim.log.rows)
        while len(ok) > 1:
            try:
                yield _gradients(job, [w.device for w in ok], wire, step)
                break
            except DeviceGone:  # cut short: again over the workers still present
                ok = [w for w in ok if roster.present(w)]
        if len(ws) > 1:
            sent = dict.fromkeys([w.device for w in ws], 0.0)
            for row in sim.log.rows[mark:]:
                if row[2] == "transfer" and row[9] == step and row[5].startswith("gradients"):
                    sent[row[3]] += row[7]
            for w in ok:
                tallies[w.rank].spans.append((t, sim.now))
                tallies[w.rank].sent += sent[w.device]
        samples = sum(w.samples for w in ok)
        total = sum_in_order([job.pack(w, job.scaled_grads(w, samples)) for w in ok]) \
            if job.real and ok else None  # what arrived
        updates = [sim.process(survive(job.update(w.device, w.opt, step,
                                                  stepper(w.opt, w.params, total),
                                                  tallies[w.rank])))
                   for w in ok]
        yield sim.env.all_of(updates)
        done = [w for w, p in zip(ok, updates) if not lost(p.value) and roster.present(w)]
        close_step(job, step, len(ws), done, tallies)
    if not job.done.triggered:  # the last steps lost every worker
        job.done.succeed()


def _gradients(job: Job, devices: list[str], wire: float, step: int) -> simpy.Process:
    """The step's gradient collective over `devices`."""
    sim, sync, label = job.sim, job.plan.sync, f"gradients step {step}"
    if sync.compression in ("topk", "sign"):
        return collectives.all_gather(sim, devices, len(devices) * wire, "ring", label=label,
                                      step=step)
    return collectives.all_reduce(sim, devices, wire, sync.algorithm, label=label, step=step)
