"""Executes data-parallel training plans: real steps on every worker, synchronised over the pool.

Each worker owns a replica (a deep copy of the world's chain, never the chain itself),
an optimizer, a gradient compressor and the batches of the data owners dealt to it.
This module owns those, a step's kernels and memory, the synchronous all-reduce, and
the record; gossip and local SGD are in `sim.sync`, parameter servers in
`sim.servers`, and which samples each worker draws (the batch rule) in `sim.batches`.

Record: per step (round) and worker, compute = its kernels' time, comm = time in which
one of its transfers (or its collective) was in flight while it waited, wait = the rest
(barriers, stragglers, servers); rows give the means over the step's workers, the loss
weighted by their samples, and every `eval_every` steps the evaluated model's held-out
loss and accuracy (`Job.model`: worker 0's replica, the servers', the workers' mean).
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import simpy

from simdl.errors import PlanError
from simdl.nn.chain import Chain
from simdl.nn.dense import SoftmaxCrossEntropy
from simdl.nn.fit import evaluate
from simdl.nn.gradcomp import Compressor, make, wire_bytes
from simdl.nn.optim import OPTIMIZERS, Optimizer
from simdl.plan.plan import input_bytes
from simdl.plan.training import TrainPlan
from simdl.plan.world import Training, World
from simdl.sim import collectives
from simdl.sim.batches import deal, owner_batches, owner_sizes
from simdl.sim.engine import Simulator
from simdl.sim.metrics import TrainingMetrics

Arrays = dict[str, np.ndarray]
Gen = Generator[Any, Any, Any]

@dataclass
class Tally:
    """One worker's step: its start, kernel time, network spans, bytes it sent, losses."""

    t0: float
    compute: float = 0.0
    spans: list[tuple[float, float]] = field(default_factory=list)
    sent: float = 0.0
    losses: list[float] = field(default_factory=list)

    def comm(self) -> float:
        """Seconds in which at least one of its transfers was in flight while it waited."""
        total, reach = 0.0, -np.inf
        for a, b in sorted(self.spans):
            if b > reach:
                total += b - max(a, reach)
                reach = b
        return total


class Worker:
    """A replica on one device: its data owners, sample count, model, optimizer, compressor."""

    def __init__(self, job: Job, rank: int, device: str, owners: list[int], samples: int):
        self.rank, self.device, self.owners, self.samples = rank, device, owners, samples
        self.costs = job.world.chain.costs(samples)
        self.chain: Chain | None = copy.deepcopy(job.world.chain) if job.real else None
        every, grads = (self.chain.params(), self.chain.grads()) if job.real else ({}, {})
        self.params: Arrays = {n: every[n] for n in job.names if n in every}  # trained only
        self.grads: Arrays = {n: grads[n] for n in job.names if n in grads}
        self.opt: Optimizer = job.optimizer()
        sync = job.plan.sync
        self.comp: Compressor = make(sync.compression, sync.ratio,
                                     sync.compression in ("topk", "sign"))


class Job:
    """The runtime state of one training run; `sim.sync` protocols drive it."""

    def __init__(self, plan: TrainPlan, world: World, sim: Simulator,
                 progress: Callable[[int], None] | None):
        load = world.workload
        if not isinstance(load, Training) or world.train_data is None:
            raise PlanError("workload.kind", type(load).__name__, "training needs a training "
                            "workload and training data")
        if not 0 <= plan.freeze < len(world.chain):
            raise PlanError("freeze", plan.freeze, f"0..{len(world.chain) - 1}: at least one "
                            "block must train")
        if load.optimizer not in OPTIMIZERS:
            raise PlanError("workload.optimizer", load.optimizer,
                            f"choose one of: {', '.join(sorted(OPTIMIZERS))}")
        self.plan, self.world, self.sim, self.load, self.progress = plan, world, sim, load, progress
        self.real = not sim.timing_only
        chain, k = world.chain, plan.freeze
        self.names = [f"{b.name}.{p}" for b in chain.blocks[k:] for p in b.layer.params]
        every = chain.params()
        self.size = {n: int(every[n].size) for n in self.names}
        self.raw = {n: int(every[n].nbytes) for n in self.names}  # float32 bytes as stored
        self.trainable = sum(self.raw.values())
        sync = plan.sync
        self.wire = {n: wire_bytes(sync.compression, self.size[n], sync.ratio) for n in self.names}
        owners = list(load.data_on) or list(plan.workers)
        n = len(plan.workers)
        sizes = owner_sizes(load.batch, len(owners))
        self.owners, self.owner_sizes = owners, sizes
        dealt = deal(len(owners), n)
        if min(sum(sizes[j] for j in d) for d in dealt) == 0:
            raise PlanError("workers", list(plan.workers), f"at most one worker per data owner "
                            f"({len(owners)}) and per sample of the batch ({load.batch})")
        self.workers = [Worker(self, r, d, dealt[r], sum(sizes[j] for j in dealt[r]))
                        for r, d in enumerate(plan.workers)]
        self.draws = owner_batches(world, owners) if self.real else []
        self.metrics = TrainingMetrics()
        self.stop = False                       # set at the target accuracy (real mode)
        self.done = sim.env.event()
        self.expected: dict[int, int] = {}      # step -> reports that close it (default: all)
        self.reports: dict[int, list[tuple[Worker, Tally, float]]] = {}
        self.staleness: dict[int, list[float]] = {}
        self.model: Callable[[], Chain] = lambda: self.workers[0].chain  # what is evaluated
        self.series: dict[str, list[float]] = {}  # per-step diagnostics (real mode), e.g. spread
        self._sce = SoftmaxCrossEntropy()
        self._boxes: dict[Any, simpy.Event] = {}

    def optimizer(self) -> Optimizer:
        kw = {"momentum": self.load.momentum} if self.load.optimizer == "sgd" else {}
        return OPTIMIZERS[self.load.optimizer](lr=self.load.lr, **kw)

    # -- memory ------------------------------------------------------------------------
    def hold(self, w: Worker, state: bool = True) -> None:
        """A worker's lasting memory: weights (all blocks), gradients of the trained ones,
        optimizer state when it updates locally, error-feedback residuals."""
        sim = self.sim
        sim.allocate(w.device, self.world.chain.param_bytes(), f"weights r{w.rank}")
        sim.allocate(w.device, self.trainable, f"gradients r{w.rank}")
        if state and w.opt.slots:
            sim.allocate(w.device, w.opt.slots * self.trainable, f"optimizer r{w.rank}")
        if w.comp.error_feedback and w.comp.kind != "none":
            sim.allocate(w.device, self.trainable, f"residuals r{w.rank}")

    # -- one worker's kernels ------------------------------------------------------------
    def local_step(self, w: Worker, step: int, tally: Tally) -> Generator[Any, Any, float | None]:
        """Fetch the batch, forward every block (frozen ones in inference mode), backward
        through the trained ones; saved activations are held between the two. Returns the
        batch loss (None in timing-only mode). The gradients land in `w.grads`."""
        sim, chain, k = self.sim, w.chain, self.plan.freeze
        fetch = [self.send(self.owners[j], w.device, self._data_bytes(j), "data", step)
                 for j in w.owners if self.owners[j] != w.device]
        if fetch:
            yield from self.wait(fetch, tally)
        x = y = None
        if self.real:
            parts = [next(self.draws[j]) for j in w.owners]
            x, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        t, h, caches = sim.now, x, []
        names = self.world.chain.names
        for i, c in enumerate(w.costs):
            out = yield sim.compute(w.device, c.fwd_flops, c.fwd_bytes,
                                    chain.forward if chain is not None else None,
                                    (h, i >= k, i, i + 1),
                                    label=f"fwd {names[i]}", step=step)
            h, cache = (out[0], out[1][0]) if out is not None else (None, None)
            if i >= k:
                sim.allocate(w.device, c.saved_bytes, f"activations {names[i]}", step=step)
                caches.append(cache)
        loss, dy = None, None
        if chain is not None:
            chain.zero_grad()
            loss, lcache = self._sce.forward(h, y)
            dy = self._sce.backward(lcache)
        for i in range(len(w.costs) - 1, k - 1, -1):
            c = w.costs[i]
            dy = yield sim.compute(w.device, c.bwd_flops, c.bwd_bytes,
                                   chain.backward if chain is not None else None,
                                   (dy, [caches[i - k]], i, i + 1),
                                   label=f"bwd {names[i]}", step=step)
            sim.free(w.device, c.saved_bytes, f"activations {names[i]}", step=step)
        tally.compute += sim.now - t
        tally.losses.append(np.nan if loss is None else loss)
        return loss

    def _data_bytes(self, j: int) -> float:
        y = self.world.train_data.y
        per_label = y.itemsize * int(np.prod(y.shape[1:], dtype=np.int64))
        n = self.owner_sizes[j]
        return float(input_bytes(self.world.chain, n) + n * per_label)

    def update(self, device: str, opt: Optimizer, step: int, fn: Callable[[], Any] | None,
               tally: Tally | None = None, names: Sequence[str] | None = None,
               label: str = "optimizer") -> Generator[Any, Any, Any]:
        """An optimizer step over `names` (default: every trained parameter) as a kernel:
        `Optimizer.cost`: its FLOPs per parameter, reading p, g and state, writing p and state.
        `fn` does the numerics (None in timing-only mode); its value is returned."""
        names = self.names if names is None else names
        flops, nbytes = opt.cost(sum(self.size[n] for n in names))
        t = self.sim.now
        value = yield self.sim.compute(device, flops, nbytes, fn if self.real else None,
                                       label=label, step=step)
        if tally is not None:
            tally.compute += self.sim.now - t
        return value

    def pack(self, w: Worker, arrays: Arrays) -> Arrays:
        """What receivers decode from `w`'s compressed `arrays` (exact for "none")."""
        if w.comp.kind == "none":
            return arrays
        return {n: w.comp.roundtrip(n, a)[0] for n, a in arrays.items()}

    def scaled_grads(self, w: Worker) -> Arrays:
        """w's gradient times its share of the global batch: summed over workers it is the
        gradient of the mean loss over the global batch."""
        scale = np.float32(w.samples / self.load.batch)
        return {n: g * scale for n, g in w.grads.items()}

    # -- the network -------------------------------------------------------------------
    def send(self, src: str, dst: str, nbytes: float, label: str, step: int,
             tally: Tally | None = None) -> simpy.Event:
        """A transfer; a device sending to itself moves nothing (an event already done,
        no log row). `tally` counts the bytes as sent by that worker."""
        if src == dst:
            event = self.sim.env.event()
            event.succeed(None)
            return event
        if tally is not None:
            tally.sent += nbytes
        return self.sim.transfer(src, dst, nbytes, label=label, step=step)

    def wait(self, events: Sequence[simpy.Event], tally: Tally) -> Generator[Any, Any, list[Any]]:
        """Wait for transfers; the part of each flow after the wait began counts as comm.
        Events may hold a Flow or a (Flow, payload) pair; the values come back in order."""
        t = self.sim.now
        yield self.sim.env.all_of(events)
        values = [e.value for e in events]
        for v in values:
            flow = v[0] if isinstance(v, tuple) else v
            if flow is not None and flow.t_end > t:  # arrived before the wait: no time lost
                tally.spans.append((max(t, flow.t_request), flow.t_end))
        return values

    def box(self, key: Any) -> simpy.Event:
        """A mailbox event for `key` (created by whichever side asks first)."""
        if key not in self._boxes:
            self._boxes[key] = self.sim.env.event()
        return self._boxes[key]

    def deliver(self, transfer: simpy.Event, key: Any, payload: Any) -> None:
        """When `transfer` arrives, its mailbox gets (Flow, payload)."""
        box = self.box(key)
        transfer.callbacks.append(lambda ev: box.succeed((ev.value, payload)))

    # -- the record --------------------------------------------------------------------
    def report(self, step: int, w: Worker, tally: Tally) -> None:
        """w finished `step` now: its "step" log row; the step's metrics row once every
        worker expected in it has reported."""
        sim = self.sim
        sim.log.add(tally.t0, sim.now, "step", w.device, self.plan.sync.kind, f"step {step}",
                    nbytes=tally.sent, step=step)
        rows = self.reports.setdefault(step, [])
        rows.append((w, tally, sim.now))
        if len(rows) == self.expected.get(step, len(self.workers)):
            self._close(step)

    def _close(self, step: int) -> None:
        rows = self.reports.pop(step)
        comm = [t.comm() for _, t, _ in rows]
        wait = [max(0.0, end - t.t0 - t.compute - c) for (_, t, end), c in zip(rows, comm)]
        stale = self.staleness.pop(step, [0.0])
        row: dict[str, Any] = dict(
            step=step, t=self.sim.now,
            loss=float(np.average([np.mean(t.losses) for _, t, _ in rows],
                                  weights=[w.samples for w, _, _ in rows])),
            compute_s=float(np.mean([t.compute for _, t, _ in rows])), comm_s=float(np.mean(comm)),
            wait_s=float(np.mean(wait)),
            bytes_per_worker=float(np.mean([t.sent for _, t, _ in rows])),
            staleness=float(np.mean(stale)))
        last = step == self.load.steps - 1
        if self.real and ((step + 1) % self.load.eval_every == 0 or last):
            row["eval_loss"], row["accuracy"] = evaluate(self.model(), self.world.data)
            target = self.load.target_accuracy
            self.stop = target is not None and row["accuracy"] >= target
        self.metrics.add(**row)
        if self.progress is not None:
            self.progress(1)
        if (last or self.stop) and not self.done.triggered:
            self.done.succeed()


# -- synchronous all-reduce (and one device); the others: sim.sync, sim.servers -----------

def sum_in_order(parts: Sequence[Arrays]) -> Arrays:
    """Element-wise sum in the given order (a fixed order: reruns match bit for bit)."""
    total = {n: a.copy() for n, a in parts[0].items()}
    for p in parts[1:]:
        for n, a in p.items():
            total[n] += a
    return total


def buffers_into(dst: Chain, sources: Sequence[Chain], weights: Sequence[float]) -> None:
    """dst's buffers (BatchNorm statistics) := the weighted mean of the sources'."""
    srcs = [s.buffers() for s in sources]
    for n, b in dst.buffers().items():
        b[...] = sum(w * s[n] for w, s in zip(weights, srcs))


def data_parallel(job: Job) -> None:
    """Every step: all workers' gradients, weighted by their samples, summed by an
    all-reduce; every worker then takes the same optimizer step, so replicas stay equal
    (worker 0's is evaluated). fp16/int8 packets are all-reduced; top-k and sign
    packets cannot be summed on the way, so they are all-gathered (ring)."""
    for w in job.workers:
        job.hold(w)
    job.sim.process(_allreduce_steps(job))


def _allreduce_steps(job: Job) -> Gen:
    sim, ws, sync = job.sim, job.workers, job.plan.sync
    devices = [w.device for w in ws]
    wire = float(sum(job.wire.values()))
    for step in range(job.load.steps):
        if job.stop:
            return
        tallies = [Tally(sim.now) for _ in ws]
        yield sim.env.all_of([sim.process(job.local_step(w, step, t))
                              for w, t in zip(ws, tallies)])
        total = sum_in_order([job.pack(w, job.scaled_grads(w)) for w in ws]) if job.real else None
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
        yield sim.env.all_of([sim.process(job.update(
            w.device, w.opt, step, stepper(w.opt, w.params, total), tally))
            for w, tally in zip(ws, tallies)])
        for w, tally in zip(ws, tallies):
            job.report(step, w, tally)


def stepper(opt: Optimizer, params: Arrays, grads: Arrays | None) -> Callable[[], None] | None:
    """The update as a kernel's function; None (no numerics) without gradients."""
    return None if grads is None else (lambda: opt.step(params, grads))


def execute(plan: TrainPlan, world: World, sim: Simulator,
            progress: Callable[[int], None] | None = None) -> Job:
    """Run the plan's training to its last step (or its target accuracy); the Job holds
    the workers' replicas, the evaluated model (`job.model()`) and the metrics."""
    from simdl.sim.sync import SYNCS  # the protocols drive a Job: they import this module

    if plan.sync.kind not in SYNCS:
        raise PlanError("sync.kind", plan.sync.kind, f"this executor runs: "
                        f"{', '.join(sorted(SYNCS))} (pipeline: sim.pipeline_train)")
    job = Job(plan, world, sim, progress)
    SYNCS[plan.sync.kind](job)
    sim.run(until=job.done)
    return job


def train(plan: TrainPlan, world: World, sim: Simulator,
          progress: Callable[[int], None] | None = None) -> TrainingMetrics:
    """Train under `plan` on the simulated pool; one metrics row per step (round)."""
    return execute(plan, world, sim, progress).metrics
