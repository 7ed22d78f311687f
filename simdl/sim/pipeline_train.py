"""Pipeline-parallel training: micro-batches through stages, GPipe or 1F1B, a flush per step.

Runs the per-stage order of forward and backward micro-batch ops that
`plan.schedules` sets (GPipe, 1F1B), and owns the hand-over of activations and gradients between stages, and each step's metrics; the
kernels, their memory, the data, the optimizer and the record are the training
substrate's (`sim.job`). Knows nothing of rooflines, links or routes.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import simpy

from simdl.errors import DeviceGone, PlanError
from simdl.nn.chain import Chain
from simdl.nn.core import ITEMSIZE
from simdl.nn.optim import Optimizer
from simdl.plan.plan import Stage
from simdl.plan.schedules import SCHEDULES
from simdl.plan.training import TrainPlan
from simdl.plan.world import World
from simdl.sim.engine import Simulator
from simdl.sim.exchange import Tally
from simdl.sim.job import Job, stepper
from simdl.sim.recovery import Recovery


def pipeline(plan: TrainPlan, world: World, sim: Simulator,
             progress: Callable[[int], None] | None = None, *, chain: Chain | None = None) -> Job:
    """Pipeline-parallel training: `job.plan.stages`, `microbatches` per step in
    `schedule` order, a synchronous flush per step.

    Each step's global batch (the data owners' draws, `sim.batches`) is brought to the
    first stage's device; its labels go to the last stage at the step's start. The
    micro-batches' loss gradients are weighted by their share of the batch's labels,
    so the accumulated gradient is the full-batch mean gradient (exactly, up to float
    summation order, for models without BatchNorm: BatchNorm normalises each
    micro-batch by its own statistics, as in GPipe). Then every stage updates its own
    parameters with its own optimizer state, and the next step starts when all have.
    `chain` (keyword only): train this chain in place instead of a copy of the world's
    (tests read its weights and gradients; the last step's gradients are kept).
    """
    _check(plan, world)
    job = Job(plan, world, sim, progress, chain=chain, in_place=chain is not None)
    run = _Pipeline(job)
    job.model = lambda: run.chain
    sim.process(run.driver())
    return job


@dataclass
class _Tally:
    """One stage's share of one step."""

    compute: float = 0.0  # s of its kernels
    comm: float = 0.0     # s stalled on an input whose transfer was in flight
    sent: float = 0.0     # bytes it sent to another device
    end: float = 0.0      # when its optimizer update ended


class _Pipeline:
    """The run's state: the stages, the chain being trained, the in-flight messages."""

    def __init__(self, job: Job):
        plan, sim, base = job.plan, job.sim, job.chain
        self.job, self.sim, self.stages = job, sim, plan.stages
        self.p, self.m = len(plan.stages), plan.microbatches
        # Timing needs only costs (shapes): no copy in timing-only mode.
        self.chain = (base if job.in_place else copy.deepcopy(base)) if job.real else base
        self.owners = list(range(len(job.owners)))
        batch = job.load.batch
        if self.m > batch:
            raise PlanError("microbatches", self.m, f"at most the batch size ({batch})")
        self.sizes = [len(a) for a in np.array_split(np.arange(batch), self.m)]
        y = job.world.train_data.y
        self.label_bytes = batch * int(np.prod(y.shape[1:], dtype=np.int64)) * y.itemsize
        self.broken: DeviceGone | None = None  # the loss that ends the step under way
        self.lay_out(plan.stages)
        self.recovery = Recovery(self)

    def lay_out(self, stages: tuple[Stage, ...]) -> None:
        """Run `stages` from now on: each stage's schedule, fresh optimizer, parameter
        names and labels; its weights, gradients and optimizer state held on its device."""
        job, sim, base = self.job, self.sim, self.job.chain
        self.stages, self.p = stages, len(stages)
        self.ops = [SCHEDULES[job.plan.schedule](s, self.p, self.m) for s in range(self.p)]
        self.opts: list[Optimizer] = []
        self.names: list[list[str]] = []  # each stage's parameter names
        blocks = base.names
        self.update_labels = [f"optimizer {blocks[st.start]}..{blocks[st.stop - 1]}"
                              for st in self.stages]
        self.stage_of: dict[str, int] = {}  # kernel label -> stage, to add up kernel time
        for s, st in enumerate(self.stages):
            opt = job.optimizer()
            self.opts.append(opt)
            self.names.append([f"{b.name}.{p}" for b in base.blocks[st.start:st.stop]
                               for p in b.layer.params])
            sim.allocate(st.device, base.param_bytes(st.start, st.stop), f"weights s{s}")
            sim.allocate(st.device, self.state_bytes(st), f"grads and optimizer s{s}")
            for b in range(st.start, st.stop):
                for j in range(self.m):
                    self.stage_of[f"fwd {blocks[b]} mb{j}"] = s
                    self.stage_of[f"bwd {blocks[b]} mb{j}"] = s
            self.stage_of[self.update_labels[s]] = s
        self._reset()

    def state_bytes(self, st: Stage) -> float:
        """A stage's gradients and optimizer state."""
        slots = self.opts[0].slots if self.opts else self.job.optimizer().slots
        return self.job.chain.n_params(st.start, st.stop) * ITEMSIZE * (1 + slots)

    def driver(self) -> Generator[Any, Any, None]:
        """Steps in order; a step lost with a stage's device is redone from the last
        checkpoint on the stages re-planned over the devices left (`sim.recovery`)."""
        i = 0
        while i < self.job.load.steps:
            if self.job.stop:
                return
            try:
                row = yield from self.step(i)
                self.job.record(row)
                yield from self.recovery.checkpoint(i)
                i += 1
            except DeviceGone as gone:
                i = yield from self.recovery.recover(i, gone)

    # -- one step ----------------------------------------------------------------

    def step(self, i: int) -> Generator[Any, Any, dict[str, Any]]:
        """Step i: every stage's schedule, then every stage's update; value: the metrics row."""
        sim, job, first, last = self.sim, self.job, self.stages[0].device, self.stages[-1].device
        t0, mark = sim.now, len(sim.log.rows)
        self._reset()
        fetch = Tally(t0)
        x, y = yield from job.fetch(self.owners, first, i, fetch)
        self.tally[0].comm += fetch.comm()
        if job.real:
            cuts = np.cumsum(self.sizes)[:-1]
            self.xs, self.ys = np.split(x, cuts), np.split(y, cuts)
            counts = [int((part >= 0).sum()) for part in self.ys]  # labelled positions
            self.weights = [c / max(sum(counts), 1) for c in counts]
            self.chain.zero_grad()  # the step's gradient accumulates over its micro-batches
        self._send(0, self.p - 1, ("labels",), self.ys, self.label_bytes, f"labels step {i}", i)
        procs = [sim.process(self._stage(s, i)) for s in range(self.p)]
        yield sim.env.all_of(procs)
        if self.broken is not None:  # every stage has wound down: the step is lost
            raise self.broken
        job.drop(self.owners, first, i)
        if last != first:
            sim.free(last, self.label_bytes, f"labels step {i}", step=i)
        for row in sim.log.rows[mark:]:
            if row[2] == "compute" and row[9] == i and row[5] in self.stage_of:
                self.tally[self.stage_of[row[5]]].compute += row[1] - row[0]
        span = sim.now - t0
        for s, st in enumerate(self.stages):
            sim.log.add(t0, self.tally[s].end, "step", st.device, "pipeline", f"step {i}", step=i)
        compute = [t.compute for t in self.tally]
        comm = [t.comm for t in self.tally]
        loss = sum(self.losses[j] * self.weights[j] for j in range(self.m)) if job.real else np.nan
        return {"step": i, "t": sim.now, "loss": loss,
                "compute_s": float(np.mean(compute)), "comm_s": float(np.mean(comm)),
                "wait_s": float(np.mean([span - c - k for c, k in zip(compute, comm)])),
                "bytes_per_worker": float(np.mean([t.sent for t in self.tally]))}

    def _reset(self) -> None:
        """Forget the last step's messages, caches and tallies."""
        self.boxes: list[dict[tuple[Any, ...], simpy.Event]] = [{} for _ in range(self.p)]
        self.tally = [_Tally() for _ in range(self.p)]
        self.xs: list[Any] = [None] * self.m        # stage 0's micro-batch inputs
        self.ys: list[Any] = [None] * self.m        # their labels (sent to the last stage)
        self.weights = [0.0] * self.m               # each micro-batch's share of the labels
        self.caches: list[dict[int, list[Any]]] = [{} for _ in range(self.p)]
        self.dlogits: dict[int, Any] = {}
        self.losses: dict[int, float] = {}
        self.broken = None

    def _stage(self, s: int, i: int) -> Generator[Any, Any, None]:
        """Stage s's ops of step i; a stage that hears of a loss fails every message
        still awaited, so each other stage winds down as soon as its kernel ends."""
        try:
            yield from self._ops(s, i)
        except DeviceGone as gone:
            if self.broken is None:
                self.broken = gone
                for boxes in self.boxes:
                    for box in boxes.values():
                        if not box.triggered:
                            box.defused = True
                            box.fail(gone)

    def _ops(self, s: int, i: int) -> Generator[Any, Any, None]:
        """Stage s's ops of step i in schedule order, then its optimizer update."""
        for op, j in self.ops[s]:
            if op == "F":
                yield from self._forward(s, i, j)
            else:
                yield from self._backward(s, i, j)
        st, job, names, fn = self.stages[s], self.job, self.names[s], None
        if job.real:
            every, grads = self.chain.params(), self.chain.grads()
            fn = stepper(self.opts[s], {n: every[n] for n in names}, {n: grads[n] for n in names})
        yield from job.update(st.device, self.opts[s], i, fn, names=names,
                              label=self.update_labels[s], unit=st.unit, dtype=st.dtype)
        self.tally[s].end = self.sim.now

    def _forward(self, s: int, i: int, j: int) -> Generator[Any, Any, None]:
        """Micro-batch j through stage s's blocks; the last stage's last kernel also runs
        the loss and its gradient (the substrate's fused loss kernel)."""
        sim, st, n, last = self.sim, self.stages[s], self.sizes[j], s == self.p - 1
        x = self.xs[j] if s == 0 else (yield from self._receive(s, ("act", j)))
        if last and j == 0:  # every schedule starts with micro-batch 0
            yield from self._receive(s, ("labels",))
            if st.device != self.stages[0].device:
                sim.allocate(st.device, self.label_bytes, f"labels step {i}", step=i)
        targets = (self.ys[j],) if last else None
        out, caches = yield from self.job.forward(
            st.device, x, n, i, st.start, st.stop, targets=targets, weight=self.weights[j],
            tag=f" mb{j}", unit=st.unit, dtype=st.dtype, chain=self.chain)
        self.caches[s][j] = caches
        if last:
            if out is not None:
                self.losses[j], self.dlogits[j] = out
        else:
            out_bytes = self.job.chain.costs(n)[st.stop - 1].out_bytes
            self._send(s, s + 1, ("act", j), out, out_bytes, f"act mb{j}", i)

    def _backward(self, s: int, i: int, j: int) -> Generator[Any, Any, None]:
        """Micro-batch j's gradient back through stage s's blocks; gradients accumulate."""
        st, n, last = self.stages[s], self.sizes[j], s == self.p - 1
        dy = self.dlogits.pop(j, None) if last else (yield from self._receive(s, ("grad", j)))
        dy = yield from self.job.backward(
            st.device, dy, n, i, st.start, st.stop, self.caches[s].pop(j), with_loss=last,
            tag=f" mb{j}", unit=st.unit, dtype=st.dtype, chain=self.chain)
        if s > 0:
            self._send(s, s - 1, ("grad", j), dy, self.job.chain.costs(n)[st.start].in_bytes,
                       f"grad mb{j}", i)

    # -- messages between stages ----------------------------------------------------

    def _box(self, s: int, key: tuple[Any, ...]) -> simpy.Event:
        """Stage s's mailbox for `key`: made by whichever of sender and receiver comes first."""
        box = self.boxes[s].get(key)
        if box is None:
            box = self.boxes[s][key] = self.sim.env.event()
            if self.broken is not None:  # nothing more comes this step
                box.defused = True
                box.fail(self.broken)
        return box

    def _send(self, s: int, to: int, key: tuple[Any, ...], payload: Any, nbytes: float,
              label: str, i: int) -> None:
        """Ship `payload` from stage s to stage `to` without waiting (an isend): the
        sender computes on while the bytes travel."""
        src, dst = self.stages[s].device, self.stages[to].device
        box, now = self._box(to, key), self.sim.now
        if box.triggered:  # failed: the step is lost
            return
        if src == dst:  # same device: nothing moves
            box.succeed((payload, now))
            return
        self.tally[s].sent += nbytes
        flow = self.sim.transfer(src, dst, nbytes, label=label, step=i)

        def deliver(ev: simpy.Event) -> None:
            ev.defused = True
            if box.triggered:  # failed: the step is lost
                return
            if ev.ok:
                box.succeed((payload, now))
            else:  # a device left: the receiver hears it
                box.defused = True
                box.fail(ev.value)

        flow.callbacks.append(deliver)

    def _receive(self, s: int, key: tuple[Any, ...]) -> Generator[Any, Any, Any]:
        """Wait for a message; the stall while its bytes were in flight counts as comm,
        the stall before it was even sent as waiting (the bubble)."""
        t0 = self.sim.now
        payload, sent = yield self._box(s, key)
        self.tally[s].comm += self.sim.now - max(t0, sent)
        return payload


def _check(plan: TrainPlan, world: World) -> None:
    """Refuse what this executor does not run: non-contiguous stages, tensor-parallel
    or compressed stages, frozen blocks, an unknown schedule."""
    if plan.schedule not in SCHEDULES:
        raise PlanError("schedule", plan.schedule, f"choose one of: {', '.join(sorted(SCHEDULES))}")
    if not plan.stages:
        raise PlanError("stages", (), "pipeline training needs at least one stage")
    if plan.freeze:
        raise PlanError("freeze", plan.freeze, "pipeline training trains every block (0)")
    n, at = len(world.chain), 0
    for k, s in enumerate(plan.stages):
        if s.start != at or not s.start < s.stop <= n:
            raise PlanError(f"stages[{k}].blocks", (s.start, s.stop), f"stages must cover "
                            f"blocks 0..{n - 1} in order, each at least one block")
        if len(s.devices) != 1 or (s.dtype, s.prune) != ("fp32", 0.0):
            raise PlanError(f"stages[{k}]", f"{'+'.join(s.devices)} {s.dtype} prune {s.prune}",
                            "pipeline training runs one device per stage with fp32 weights")
        at = s.stop
    if at != n:
        raise PlanError("stages", at, f"the last stage must end at block {n}")
