"""Synchronous data parallel (and one device): every step, the workers' gradients are
summed by an all-reduce and every worker takes the same optimizer step.

The sum is formed from what arrived, when it arrived: each worker's (compressed)
gradient is what it sends, and the sum is taken only once the collective's last
transfer is done; a collective cut short by a lost device updates nothing.
"""
from __future__ import annotations

from collections.abc import Callable

from simdl.plan.training import TrainPlan
from simdl.plan.world import World
from simdl.sim import collectives
from simdl.sim.engine import Simulator
from simdl.sim.job import Gen, Job, Tally, stepper, sum_in_order


def data_parallel(plan: TrainPlan, world: World, sim: Simulator,
                  progress: Callable[[int], None] | None = None) -> Job:
    """Every step: all workers' gradients, weighted by their samples, summed by an
    all-reduce; every worker then takes the same optimizer step, so replicas stay equal
    (worker 0's is evaluated). fp16/int8 packets are all-reduced; top-k and sign
    packets cannot be summed on the way, so they are all-gathered (ring)."""
    job = Job(plan, world, sim, progress)
    for w in job.add_workers(plan.workers):
        job.hold(w)
    sim.process(_steps(job))
    return job


def _steps(job: Job) -> Gen:
    sim, ws, sync = job.sim, job.workers, job.plan.sync
    devices = [w.device for w in ws]
    wire = float(sum(job.wire.values()))
    for step in range(job.load.steps):
        if job.stop:
            return
        tallies = [Tally(sim.now) for _ in ws]
        yield sim.env.all_of([sim.process(job.local_step(w, step, t))
                              for w, t in zip(ws, tallies)])
        packets = [job.pack(w, job.scaled_grads(w)) for w in ws] if job.real else None
        if len(ws) > 1:
            label, mark, t = f"gradients step {step}", len(sim.log.rows), sim.now
            if sync.compression in ("topk", "sign"):
                yield collectives.all_gather(sim, devices, len(ws) * wire, "ring", label=label,
                                             step=step)
            else:
                yield collectives.all_reduce(sim, devices, wire, sync.algorithm, label=label,
                                             step=step)
            sent = dict.fromkeys(devices, 0.0)
            for row in sim.log.rows[mark:]:
                if row[2] == "transfer" and row[9] == step and row[5].startswith("gradients"):
                    sent[row[3]] += row[7]
            for w, tally in zip(ws, tallies):
                tally.spans.append((t, sim.now))
                tally.sent += sent[w.device]
        total = sum_in_order(packets) if packets is not None else None  # what arrived
        yield sim.env.all_of([sim.process(job.update(
            w.device, w.opt, step, stepper(w.opt, w.params, total), tally))
            for w, tally in zip(ws, tallies)])
        for w, tally in zip(ws, tallies):
            job.report(step, w, tally)
