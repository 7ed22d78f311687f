"""Adapting a trained model: per-device personalisation and knowledge distillation.

Personalise: every device fine-tunes the unfrozen blocks of the shared model on
its own label-skewed data, which never leaves it. Distill: a teacher on a strong
device trains a small student from its soft labels; the student's weights (not
the data, not the teacher) are shipped to a weak device and timed there.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Generator
from typing import Any

import numpy as np

from simdl.nn.chain import Chain
from simdl.nn.dense import SoftmaxCrossEntropy
from simdl.nn.distill import DistillationLoss
from simdl.nn.fit import evaluate
from simdl.nn.optim import OPTIMIZERS
from simdl.plan.training import TrainPlan
from simdl.plan.world import Training, World
from simdl.rng import stream
from simdl.sim.engine import Simulator
from simdl.sim.metrics import TrainingMetrics


def step_kernels(sim: Simulator, device: str, chain: Chain, opt: Any, batch: int, step: int,
                 fn: Callable[[], Any], first_trained: int = 0,
                 tag: str = "") -> Generator[Any, Any, Any]:
    """One training step of `chain` on `device` as kernels: forward through every block,
    backward through blocks from `first_trained` on, then the optimizer. The numerics
    (`fn`) run once, with the forward kernel of block 0; the timeline is the model's."""
    costs = chain.costs(batch)
    value = None
    for b, c in enumerate(costs):
        out = yield sim.compute(device, c.fwd_flops, c.fwd_bytes, fn if b == 0 else None,
                                label=f"fwd {chain.names[b]} {tag}", step=step)
        value = out if b == 0 else value
    for b in range(len(costs) - 1, first_trained - 1, -1):
        yield sim.compute(device, costs[b].bwd_flops, costs[b].bwd_bytes,
                          label=f"bwd {chain.names[b]} {tag}", step=step)
    flops, nbytes = opt.cost(chain.n_params(first_trained))
    yield sim.compute(device, flops, nbytes, label=f"optimizer {tag}", step=step)
    return value


def _optimizer(load: Training) -> Any:
    kw = {"momentum": load.momentum} if load.optimizer == "sgd" else {}
    return OPTIMIZERS[load.optimizer](lr=load.lr, **kw)


def personalise(plan: TrainPlan, world: World, sim: Simulator,
                progress: Callable[[int], None] | None = None) -> TrainingMetrics:
    """Each worker fine-tunes blocks >= plan.freeze of its own copy on its own data."""
    load, metrics = world.workload, TrainingMetrics()
    assert isinstance(load, Training)
    n, k = len(plan.workers), plan.freeze
    local = {w: world.train_data.by_class(i, n) for i, w in enumerate(plan.workers)}
    tests = {w: world.data.restricted(np.unique(d.y)) for w, d in local.items()}
    models = {w: copy.deepcopy(world.chain) for w in plan.workers}
    shared = {w: evaluate(world.chain, tests[w])[1] for w in plan.workers}
    batch = max(1, load.batch // n)
    losses: dict[int, list[float]] = {}
    spans: dict[int, list[tuple[float, float]]] = {}
    done = sim.env.event()
    finished: list[str] = []

    def worker(w: str) -> Generator[Any, Any, None]:
        chain, opt, ce = models[w], _optimizer(load), SoftmaxCrossEntropy()
        sim.allocate(w, chain.param_bytes() * (2 + opt.slots), f"model {w}")
        rng = stream(world.seed, f"batches/{w}")
        draws = local[w].forever(batch, rng)
        for step in range(load.steps):
            x, y = next(draws)

            def learn() -> float:
                chain.zero_grad()
                h, early = chain.forward(x, start=0, stop=k)
                z, caches = chain.forward(h, train=True, start=k)
                loss, cache = ce.forward(z, y)
                chain.backward(ce.backward(cache), caches, start=k)
                grads = {name: g for name, g in chain.grads().items()
                         if chain.index(name.split(".")[0]) >= k}
                opt.step({name: chain.params()[name] for name in grads}, grads)
                return loss

            t0 = sim.now
            loss = yield from step_kernels(sim, w, chain, opt, len(x), step, learn, k, w)
            sim.log.add(t0, sim.now, "step", w, "personalise", f"step {step}", step=step)
            losses.setdefault(step, []).append(np.nan if loss is None else loss)
            spans.setdefault(step, []).append((t0, sim.now))
        finished.append(w)
        if len(finished) == n:
            done.succeed()

    for w in plan.workers:
        sim.process(worker(w))
    sim.run(until=done)
    for step in range(load.steps):  # workers never wait for each other: all compute
        metrics.add(step=step, t=max(end for _, end in spans[step]), loss=float(np.mean(losses[step])),
                    compute_s=float(np.mean([end - start for start, end in spans[step]])),
                    comm_s=0.0, wait_s=0.0, bytes_per_worker=0.0)
        if progress is not None:
            progress(1)
    if not sim.timing_only:
        personal = {w: evaluate(models[w], tests[w])[1] for w in plan.workers}
        metrics.rows[-1]["accuracy"] = float(np.mean(list(personal.values())))
        for w in plan.workers:
            metrics.extra[f"accuracy_shared@{w}"] = shared[w]
            metrics.extra[f"accuracy_personal@{w}"] = personal[w]
    return metrics


def distill(plan: TrainPlan, world: World, sim: Simulator,
            progress: Callable[[int], None] | None = None) -> TrainingMetrics:
    """The teacher (the main model) trains the student on `plan.workers[0]`; the
    student ships to `target`, where one batch of inference is timed."""
    load, metrics = world.workload, TrainingMetrics()
    assert isinstance(load, Training)
    device, target = plan.workers[0], plan.params["target"]
    teacher = world.chain
    student = copy.deepcopy(world.models[plan.params["student"]])
    loss_fn = DistillationLoss(plan.params["temperature"], plan.params["alpha"])
    opt, rng = _optimizer(load), stream(world.seed, "batches/distill")
    draws = world.train_data.forever(load.batch, rng)
    out: dict[str, float] = {}
    done = sim.env.event()

    def run() -> Generator[Any, Any, None]:
        sim.allocate(device, teacher.param_bytes() + student.param_bytes() * (2 + opt.slots),
                     "teacher and student")
        for step in range(load.steps):
            x, y = next(draws)

            def learn() -> float:
                soft = teacher.forward(x)[0]
                student.zero_grad()
                z, caches = student.forward(x, train=True)
                loss, cache = loss_fn.forward(z, soft, y)
                student.backward(loss_fn.backward(cache), caches)
                opt.step(student.params(), student.grads())
                return loss

            t0 = sim.now
            for b, c in enumerate(teacher.costs(len(x))):  # the teacher's soft labels
                yield sim.compute(device, c.fwd_flops, c.fwd_bytes,
                                  label=f"teacher {teacher.names[b]}", step=step)
            loss = yield from step_kernels(sim, device, student, opt, len(x), step, learn, 0,
                                           "student")
            sim.log.add(t0, sim.now, "step", device, "distill", f"step {step}", step=step)
            row: dict[str, Any] = {"step": step, "t": sim.now, "loss": np.nan if loss is None else loss}
            if not sim.timing_only and ((step + 1) % load.eval_every == 0 or step == load.steps - 1):
                row["eval_loss"], row["accuracy"] = evaluate(student, world.data)
            metrics.add(**row, comm_s=0.0, bytes_per_worker=0.0)
            if progress is not None:
                progress(1)
        size = student.param_bytes()
        yield sim.transfer(device, target, size, label="student weights")
        sim.allocate(target, size, "student weights")
        t0 = sim.now
        for b, c in enumerate(student.costs(load.batch)):
            yield sim.compute(target, c.fwd_flops, c.fwd_bytes, label=f"student {student.names[b]}")
        out["student_latency_ms"] = (sim.now - t0) * 1e3
        out["shipped_MB"] = size / 1e6
        done.succeed()

    sim.process(run())
    sim.run(until=done)
    metrics.extra |= out | {"teacher_MB": teacher.param_bytes() / 1e6,
                            "student_MB": student.param_bytes() / 1e6}
    if not sim.timing_only:
        metrics.extra["teacher_accuracy"] = evaluate(teacher, world.data)[1]
        metrics.extra["student_accuracy"] = evaluate(student, world.data)[1]
    return metrics
