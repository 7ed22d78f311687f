"""The training substrate: what every training protocol shares, written once.

A Job owns one training run: the model being trained and its costs, the optimizer
factory, the step's kernels (forward per block, the loss fused into the last block's
kernels, backward per trained block, the optimizer step), the memory rules, the data
(which samples each step draws, `sim.batches`, and the transfers that bring them to
the device that trains on them), the record (one metrics row per step), the held-out
evaluation and the target check. Bytes move through `Job.net` (`sim.exchange`). The
protocols (`sim.training` registers them) say only who computes what when and how
workers agree.

Work takes effect when its simulated time is done: every numeric change runs as the
function of the kernel that charges for it, at that kernel's end (`Simulator.compute`).

Record: per step (round) and worker, compute = its kernels' time, comm = time in which
one of its transfers (or its collective) was in flight while it waited, wait = the rest
(barriers, stragglers, servers); rows give the means over the step's workers, the loss
weighted by their samples, and every `eval_every` steps the evaluated model's held-out
loss and accuracy (`Job.evaluated`, by default `Job.model`: worker 0's replica).
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Generator, Sequence
from typing import Any, Protocol

import numpy as np

from simdl.errors import PlanError
from simdl.nn.chain import Chain
from simdl.nn.core import Cost
from simdl.nn.dense import SoftmaxCrossEntropy
from simdl.nn.fit import evaluate
from simdl.nn.gradcomp import Compressor, make, wire_bytes
from simdl.nn.optim import Optimizer
from simdl.plan.training import TrainPlan, batch_bytes, deal, optimizer, owner_sizes
from simdl.plan.world import Training, World
from simdl.sim.batches import owner_batches
from simdl.sim.engine import Simulator
from simdl.sim.exchange import Exchange, Tally
from simdl.sim.metrics import TrainingMetrics

Arrays = dict[str, np.ndarray]
Gen = Generator[Any, Any, Any]


class Loss(Protocol):
    """A training loss on the last block's output: SoftmaxCrossEntropy or distillation."""

    def forward(self, logits: np.ndarray, *targets: Any) -> tuple[float, Any]: ...
    def backward(self, cache: Any) -> np.ndarray: ...
    def cost(self, in_shape: tuple[int, ...]) -> Cost: ...


class Worker:
    """A replica on one device: its data owners, sample count, model, optimizer, compressor."""

    def __init__(self, job: Job, rank: int, device: str, owners: list[int], samples: int):
        self.rank, self.device, self.owners, self.samples = rank, device, owners, samples
        self.chain: Chain | None = copy.deepcopy(job.chain) if job.real else None
        every, grads = (self.chain.params(), self.chain.grads()) if job.real else ({}, {})
        self.params: Arrays = {n: every[n] for n in job.names if n in every}  # trained only
        self.grads: Arrays = {n: grads[n] for n in job.names if n in grads}
        self.opt: Optimizer = job.optimizer()
        sync = job.plan.sync
        self.comp: Compressor = make(sync.compression, sync.ratio,
                                     sync.compression in ("topk", "sign"))


class Job:
    """The runtime state of one training run; the protocols drive it.

    `chain` is the model trained (default: the world's main model); workers train
    copies of it; `in_place` asks a protocol that trains one model (a pipeline) to
    train `chain` itself (tests read its weights and gradients); `loss` is its loss;
    `teacher` (distillation) a model whose forward kernels make the soft targets the
    loss also takes.
    """

    def __init__(self, plan: TrainPlan, world: World, sim: Simulator,
                 progress: Callable[[int], None] | None, *, chain: Chain | None = None,
                 in_place: bool = False, loss: Loss | None = None,
                 teacher: Chain | None = None):
        load = world.workload
        if not isinstance(load, Training) or world.train_data is None:
            raise PlanError("workload.kind", type(load).__name__, "training needs a training "
                            "workload and training data")
        self.plan, self.world, self.sim, self.load, self.progress = plan, world, sim, load, progress
        self.chain = world.chain if chain is None else chain
        self.in_place = in_place
        if not 0 <= plan.freeze < len(self.chain):
            raise PlanError("freeze", plan.freeze, f"0..{len(self.chain) - 1}: at least one "
                            "block must train")
        optimizer(load)  # refuse an unknown optimizer before anything runs
        self.real = not sim.timing_only
        self.loss: Loss = SoftmaxCrossEntropy() if loss is None else loss
        self.teacher = teacher
        k = plan.freeze
        self.blocks = self.chain.names  # block names, read for every kernel's label
        self.names = [f"{b.name}.{p}" for b in self.chain.blocks[k:] for p in b.layer.params]
        every = self.chain.params()
        self.size = {n: int(every[n].size) for n in self.names}
        self.raw = {n: int(every[n].nbytes) for n in self.names}  # float32 bytes as stored
        self.trainable = sum(self.raw.values())
        self.count = sum(self.size.values())      # trained parameters
        self._loss_costs: dict[int, Cost] = {}    # see loss_cost
        self._batch_bytes: dict[int, float] = {}  # see batch_bytes
        sync = plan.sync
        self.wire = {n: wire_bytes(sync.compression, self.size[n], sync.ratio) for n in self.names}
        if not load.data_on:
            raise PlanError("workload.data_on", (), "name the devices that hold the training data")
        self.owners = list(load.data_on)  # world.build fills it with the pool when not given
        self.owner_sizes = owner_sizes(load.batch, len(self.owners))
        self.draws = owner_batches(world, self.owners) if self.real else []
        self.workers: list[Worker] = []
        self.metrics = TrainingMetrics()
        self.stop = False                       # set at the target accuracy (real mode)
        self.done = sim.env.event()             # training is over (last step or target)
        self.finished = self.done               # the run is over (distillation ships after)
        self.expected: dict[int, int] = {}      # step -> reports that close it (default: all)
        self.reports: dict[int, list[tuple[Worker, Tally, float]]] = {}
        self.staleness: dict[int, list[float]] = {}
        self.retired: dict[int, int] = {}        # rank gone for good -> the first step it missed
        self.model: Callable[[], Chain] = lambda: self.workers[0].chain  # what is evaluated
        self.evaluated: Callable[[], tuple[float, float]] = (
            lambda: evaluate(self.model(), world.data))  # (held-out loss, accuracy)
        self.series: dict[str, list[float]] = {}  # per-step diagnostics (real mode), e.g. spread
        self.net = Exchange(sim)  # every transfer of the job goes through it

    def add_workers(self, devices: Sequence[str]) -> list[Worker]:
        """A replica per device, the data owners dealt to them by the batch rule."""
        dealt = deal(len(self.owners), len(devices))
        counts = [sum(self.owner_sizes[j] for j in d) for d in dealt]
        if min(counts) == 0:
            raise PlanError("workers", list(devices), f"at most one worker per data owner "
                            f"({len(self.owners)}) and per sample of the batch ({self.load.batch})")
        self.workers = [Worker(self, r, d, dealt[r], counts[r]) for r, d in enumerate(devices)]
        return self.workers

    def optimizer(self) -> Optimizer:
        """A fresh optimizer (every worker, server and stage gets its own)."""
        return optimizer(self.load)

    def loss_cost(self, n: int) -> Cost:
        """The loss's cost on n samples, computed once per n."""
        got = self._loss_costs.get(n)
        if got is None:
            got = self._loss_costs[n] = self.loss.cost(self.chain.costs(n)[-1].out_shape)
        return got

    # -- memory ------------------------------------------------------------------------
    def hold(self, w: Worker, state: bool = True) -> None:
        """A worker's lasting memory: weights (all blocks), gradients of the trained ones,
        optimizer state when it updates locally, error-feedback residuals."""
        sim = self.sim
        sim.allocate(w.device, self.chain.param_bytes(), f"weights r{w.rank}")
        sim.allocate(w.device, self.trainable, f"gradients r{w.rank}")
        if state and w.opt.slots:
            sim.allocate(w.device, w.opt.slots * self.trainable, f"optimizer r{w.rank}")
        if w.comp.error_feedback and w.comp.kind != "none":
            sim.allocate(w.device, self.trainable, f"residuals r{w.rank}")

    # -- data --------------------------------------------------------------------------
    def batch_bytes(self, owners: Sequence[int]) -> float:
        """Bytes of the owners' per-step draws: inputs and labels (once per sample count)."""
        n = sum(self.owner_sizes[j] for j in owners)
        got = self._batch_bytes.get(n)
        if got is None:
            got = self._batch_bytes[n] = batch_bytes(self.world, self.chain, n)
        return got

    def fetch(self, owners: Sequence[int], device: str, step: int,
              tally: Tally | None = None) -> Gen:
        """The owners' draws for this step, brought to `device` (owners elsewhere send
        theirs as "data" transfers) and held there until `drop`; value (x, y), or
        (None, None) in timing-only mode. Every step draws, whoever trains."""
        moves = [self.net.send(self.owners[j], device, self.batch_bytes([j]), "data", step)
                 for j in owners if self.owners[j] != device]
        if moves:
            yield from self.net.wait(moves, tally or Tally(self.sim.now))
        self.sim.allocate(device, self.batch_bytes(owners), f"batch step {step}", step=step)
        if not self.real:
            return None, None
        parts = [next(self.draws[j]) for j in owners]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def drop(self, owners: Sequence[int], device: str, step: int) -> None:
        """The step's batch is no longer needed on `device`."""
        self.sim.free(device, self.batch_bytes(owners), f"batch step {step}", step=step)

    # -- kernels -------------------------------------------------------------------------
    def forward(self, device: str, x: Any, n: int, step: int, start: int, stop: int, *,
                targets: tuple[Any, ...] | None = None, weight: float = 1.0, tag: str = "",
                unit: str | None = None, dtype: str = "fp32", chain: Chain | None = None) -> Gen:
        """Blocks [start, stop) for n samples, one kernel each; blocks before `freeze`
        run in inference mode and keep nothing, the others hold their saved activations
        until `backward`. With `targets`, the last block's kernel also runs the loss and
        its gradient, scaled by `weight` (its cost added to that kernel and to the last
        backward kernel). Value: (output, caches), or ((loss, dlogits), caches) with
        `targets`; None parts in timing-only mode. The numerics run on `chain` (a
        replica; default the job's chain)."""
        sim, k, chain = self.sim, self.plan.freeze, chain or self.chain
        costs, names, caches = self.chain.costs(n), self.blocks, []
        for b in range(start, stop):
            c, with_loss = costs[b], targets is not None and b == stop - 1
            flops, moved, saved = c.fwd_flops, c.fwd_bytes, c.saved_bytes
            fn, args = _forward_block, (chain, x, b, b >= k)
            if with_loss:
                lc = self.loss_cost(n)
                flops, moved, saved = flops + lc.fwd_flops, moved + lc.fwd_bytes, saved + lc.saved_bytes
                fn, args = _forward_loss, (chain, self.loss, x, b, targets, weight)
            out = yield sim.compute(device, flops, moved, fn if self.real else None, args,
                                    unit=unit, dtype=dtype, label=f"fwd {names[b]}{tag}",
                                    step=step)
            if b >= k:
                sim.allocate(device, saved, f"saved {names[b]}{tag}", step=step)
            x, cache = out if out is not None else (None, None)
            caches.append(cache)
        return x, caches

    def backward(self, device: str, dy: Any, n: int, step: int, start: int, stop: int,
                 caches: list[Any], *, with_loss: bool = False, tag: str = "",
                 unit: str | None = None, dtype: str = "fp32", chain: Chain | None = None) -> Gen:
        """The gradient back through the trained blocks of [start, stop), one kernel each;
        parameter gradients accumulate in the chain, saved activations are freed. Value:
        the gradient at the range's input."""
        sim, costs, names, chain = self.sim, self.chain.costs(n), self.blocks, chain or self.chain
        for b in range(stop - 1, max(start, self.plan.freeze) - 1, -1):
            c, saved = costs[b], costs[b].saved_bytes
            flops, moved = c.bwd_flops, c.bwd_bytes
            if with_loss and b == stop - 1:
                lc = self.loss_cost(n)
                flops, moved, saved = flops + lc.bwd_flops, moved + lc.bwd_bytes, saved + lc.saved_bytes
            dy = yield sim.compute(device, flops, moved,
                                   _backward_block if self.real else None,
                                   (chain, dy, caches[b - start], b, b > self.plan.freeze),
                                   unit=unit, dtype=dtype,
                                   label=f"bwd {names[b]}{tag}", step=step)
            sim.free(device, saved, f"saved {names[b]}{tag}", step=step)
        return dy

    def local_step(self, w: Worker, step: int, tally: Tally) -> Generator[Any, Any, float | None]:
        """A worker's step: fetch its owners' batch, (the teacher's soft targets,) forward,
        loss, backward; the gradients land in `w.grads`. Value: the batch loss (None in
        timing-only mode)."""
        x, y = yield from self.fetch(w.owners, w.device, step, tally)
        t, n, chain = self.sim.now, w.samples, w.chain
        targets: tuple[Any, ...] = (y,)
        if self.teacher is not None:
            soft = yield from self._teach(w.device, x, n, step)
            targets = (soft, y)
        if chain is not None:
            chain.zero_grad()
        out, caches = yield from self.forward(w.device, x, n, step, 0, len(self.chain),
                                              targets=targets, chain=chain)
        loss, dlogits = out if out is not None else (None, None)
        yield from self.backward(w.device, dlogits, n, step, 0, len(self.chain), caches,
                                 with_loss=True, chain=chain)
        self.drop(w.owners, w.device, step)
        tally.compute += self.sim.now - t
        tally.losses.append(np.nan if loss is None else loss)
        return loss

    def step_alone(self, w: Worker, step: int, tally: Tally) -> Gen:
        """A local step, then w's own optimizer on its own gradients (no one else's)."""
        loss = yield from self.local_step(w, step, tally)
        yield from self.update(w.device, w.opt, step,
                               stepper(w.opt, w.params, w.grads) if self.real else None, tally)
        return loss

    def _teach(self, device: str, x: Any, n: int, step: int) -> Gen:
        """The teacher's forward, block by block in inference mode: the soft targets."""
        teacher, h = self.teacher, x
        for b, c in enumerate(teacher.costs(n)):
            h = yield self.sim.compute(device, c.fwd_flops, c.fwd_bytes,
                                       _infer_block if self.real else None, (teacher, h, b),
                                       label=f"teacher {teacher.names[b]}", step=step)
        return h

    def update(self, device: str, opt: Optimizer, step: int, fn: Callable[[], Any] | None,
               tally: Tally | None = None, names: Sequence[str] | None = None,
               label: str = "optimizer", unit: str | None = None, dtype: str = "fp32") -> Gen:
        """An optimizer step over `names` (default: every trained parameter) as a kernel:
        `Optimizer.cost`: its FLOPs per parameter, reading p, g and state, writing p and state.
        `fn` does the numerics (None in timing-only mode); its value is returned."""
        count = self.count if names is None else sum(self.size[n] for n in names)
        flops, nbytes = opt.cost(count)
        t = self.sim.now
        value = yield self.sim.compute(device, flops, nbytes, fn if self.real else None,
                                       unit=unit, dtype=dtype, label=label, step=step)
        if tally is not None:
            tally.compute += self.sim.now - t
        return value

    def pack(self, w: Worker, arrays: Arrays) -> Arrays:
        """What receivers decode from `w`'s compressed `arrays` (exact for "none")."""
        if w.comp.kind == "none":
            return arrays
        return {n: w.comp.roundtrip(n, a)[0] for n, a in arrays.items()}

    def scaled_grads(self, w: Worker, samples: int | None = None) -> Arrays:
        """w's gradient times its share of `samples` (default: the global batch): summed
        over the workers whose samples make `samples`, it is the gradient of their mean
        loss (fewer when a worker's gradient is dropped from the step)."""
        scale = np.float32(w.samples / (self.load.batch if samples is None else samples))
        return {n: g * scale for n, g in w.grads.items()}

    # -- the record --------------------------------------------------------------------
    def report(self, step: int, w: Worker, tally: Tally) -> None:
        """w finished `step` now: its "step" log row; the step's metrics row once every
        worker expected in it has reported."""
        sim = self.sim
        sim.log.add(tally.t0, sim.now, "step", w.device, self.plan.sync.kind, f"step {step}",
                    nbytes=tally.sent, step=step)
        rows = self.reports.setdefault(step, [])
        rows.append((w, tally, sim.now))
        if len(rows) == self._expected(step):
            self._close(step)

    def absent(self, w: Worker, step: int) -> None:
        """w reports no step from `step` on (it left): the steps it leaves open close on
        the others' reports; with nobody left the job is done."""
        self.retired[w.rank] = step
        for k in sorted(self.reports):
            if k >= step and len(self.reports[k]) >= self._expected(k):
                self._close(k)
        if len(self.retired) == len(self.workers) and not self.done.triggered:
            self.metrics.extra["outcome"] = f"no workers left at step {max(self.retired.values())}"
            self.done.succeed()

    def _expected(self, step: int) -> int:
        """Reports that close `step`: `expected[step]`, else every worker not retired."""
        if step in self.expected:
            return self.expected[step]
        return len(self.workers) - sum(1 for k in self.retired.values() if k <= step)

    def _close(self, step: int) -> None:
        rows = self.reports.pop(step)
        comm = [t.comm() for _, t, _ in rows]
        wait = [max(0.0, end - t.t0 - t.compute - c) for (_, t, end), c in zip(rows, comm)]
        stale = self.staleness.pop(step, [0.0])
        self.record(dict(
            step=step, t=self.sim.now,
            loss=float(np.average([np.mean(t.losses) for _, t, _ in rows],
                                  weights=[w.samples for w, _, _ in rows])),
            compute_s=float(np.mean([t.compute for _, t, _ in rows])), comm_s=float(np.mean(comm)),
            wait_s=float(np.mean(wait)),
            bytes_per_worker=float(np.mean([t.sent for _, t, _ in rows])),
            staleness=float(np.mean(stale))))

    def record(self, row: dict[str, Any]) -> None:
        """The step's metrics row; the held-out evaluation every `eval_every` steps and at
        the last; the target check (the one value-dependent decision of a training run:
        timing-only mode cannot take it, see `sim.training.DECISIONS`); the job is done
        after its last step or at the target, or diverged at the first infinite or NaN
        loss (real mode: timing-only has no loss), since every step after it is NaN too."""
        step = row["step"]
        last = step == self.load.steps - 1
        if self.real and not np.isfinite(row["loss"]):
            self.stop = True
            self.metrics.extra["outcome"] = f"diverged at step {step}"
        elif self.real and ((step + 1) % self.load.eval_every == 0 or last):
            row["eval_loss"], row["accuracy"] = self.evaluated()
            target = self.load.target_accuracy
            self.stop = target is not None and row["accuracy"] >= target
        self.metrics.add(**row)
        if self.progress is not None:
            self.progress(1)
        if (last or self.stop) and not self.done.triggered:
            self.done.succeed()


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


def stepper(opt: Optimizer, params: Arrays, grads: Arrays | None) -> Callable[[], None] | None:
    """The update as a kernel's function; None (no numerics) without gradients."""
    return None if grads is None else (lambda: opt.step(params, grads))


def _forward_block(chain: Chain, x: np.ndarray, b: int, train: bool) -> tuple[np.ndarray, Any]:
    y, caches = chain.forward(x, train=train, start=b, stop=b + 1)
    return y, caches[0]


def _forward_loss(chain: Chain, loss: Loss, x: np.ndarray, b: int, targets: tuple[Any, ...],
                  weight: float) -> tuple[tuple[float, np.ndarray], Any]:
    """The last block, the loss, and d(loss)/d(logits) scaled by `weight`."""
    logits, caches = chain.forward(x, train=True, start=b, stop=b + 1)
    value, cache = loss.forward(logits, *targets)
    return (value, loss.backward(cache) * np.float32(weight)), caches[0]


def _backward_block(chain: Chain, dy: np.ndarray, cache: Any, b: int,
                    need_dx: bool) -> np.ndarray | None:
    return chain.backward(dy, [cache], start=b, stop=b + 1, need_dx=need_dx)


def _infer_block(chain: Chain, x: np.ndarray, b: int) -> np.ndarray:
    return chain.forward(x, start=b, stop=b + 1)[0]
