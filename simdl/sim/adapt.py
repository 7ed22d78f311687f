"""Adapting a trained model: per-device personalisation and knowledge distillation.

Both are protocols on the training substrate (`sim.job`): the same kernels, memory,
data placement, optimizer, record and target as every other training strategy.
Personalise: every worker fine-tunes the unfrozen blocks of its own copy of the
shared model on the data dealt to it (with `shards: by_class`, its own label-skewed
data, which never leaves it when it owns it); nothing is synchronised. Distill: a
teacher on a strong device trains a small student from its soft labels; the
student's weights (not the data, not the teacher) are shipped to a weak device and
timed there.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from simdl.errors import DeviceGone
from simdl.nn.data import Dataset
from simdl.nn.distill import DistillationLoss
from simdl.nn.fit import evaluate
from simdl.plan.training import TrainPlan
from simdl.plan.world import World
from simdl.sim.batches import owner_shares
from simdl.sim.engine import Simulator
from simdl.sim.exchange import Tally
from simdl.sim.job import Gen, Job, Worker


def personalise(plan: TrainPlan, world: World, sim: Simulator,
                progress: Callable[[int], None] | None = None) -> Job:
    """Each worker fine-tunes blocks >= plan.freeze of its own copy on its own data.
    Evaluated: each worker's copy on the held-out samples of the classes its data
    holds, averaged over workers; the shared model's accuracy there is kept beside."""
    job = Job(plan, world, sim, progress)
    shares = owner_shares(world, job.owners)
    tests: dict[int, Dataset] = {}
    for w in job.add_workers(plan.workers):
        job.hold(w)
        classes = np.unique(np.concatenate([shares[j].y for j in w.owners]))
        tests[w.rank] = world.data.restricted(classes)
        job.metrics.extra[f"accuracy_shared@{w.device}"] = evaluate(world.chain, tests[w.rank])[1]

    def personal() -> tuple[float, float]:
        scores = [evaluate(w.chain, tests[w.rank]) for w in job.workers]
        for w, (_, acc) in zip(job.workers, scores):
            job.metrics.extra[f"accuracy_personal@{w.device}"] = acc
        return float(np.mean([s[0] for s in scores])), float(np.mean([s[1] for s in scores]))

    job.evaluated = personal
    for w in job.workers:
        sim.process(_alone(job, w))
    return job


def _alone(job: Job, w: Worker) -> Gen:
    """w's steps; a worker whose device leaves stops, and the others go on."""
    for step in range(job.load.steps):
        if job.stop:
            return
        tally = Tally(job.sim.now)
        try:
            yield from job.step_alone(w, step, tally)
        except DeviceGone:
            job.absent(w, step)
            return
        job.report(step, w, tally)


def distill(plan: TrainPlan, world: World, sim: Simulator,
            progress: Callable[[int], None] | None = None) -> Job:
    """The teacher (the main model) trains the student on `plan.workers[0]`: per step,
    the teacher's forward kernels make soft targets, then the student's step runs with
    the distillation loss. Then the student ships to `target`, where one batch of
    inference is timed."""
    student = world.models[plan.params["student"]]
    loss = DistillationLoss(plan.params["temperature"], plan.params["alpha"])
    job = Job(plan, world, sim, progress, chain=student, loss=loss, teacher=world.chain)
    (w,) = job.add_workers(plan.workers)
    job.hold(w)
    sim.allocate(w.device, world.chain.param_bytes(), "teacher weights")
    job.finished = sim.env.event()
    sim.process(_distill(job, w, plan.params["target"]))
    return job


def _distill(job: Job, w: Worker, target: str) -> Gen:
    sim = job.sim
    yield from _alone(job, w)
    student, size = job.chain, job.chain.param_bytes()
    yield sim.transfer(w.device, target, size, label="student weights")
    sim.allocate(target, size, "student weights")
    t0 = sim.now
    for b, c in enumerate(student.costs(job.load.batch)):
        yield sim.compute(target, c.fwd_flops, c.fwd_bytes, label=f"student {student.names[b]}")
    extra = job.metrics.extra
    extra["student_latency_ms"] = (sim.now - t0) * 1e3
    extra["shipped_MB"] = size / 1e6
    extra["teacher_MB"] = job.teacher.param_bytes() / 1e6
    extra["student_MB"] = size / 1e6
    if job.real:
        extra["teacher_accuracy"] = evaluate(job.teacher, job.world.data)[1]
        extra["student_accuracy"] = evaluate(w.chain, job.world.data)[1]
    job.finished.succeed()
