"""Pipeline-parallel training: micro-batches through stages, GPipe or 1F1B, a flush per step.

Owns the per-stage order of forward and backward micro-batch ops (SCHEDULES), the
hand-over of activations and gradients between stages, the memory of activations
saved for backward, and each step's metrics. Knows blocks, costs and the
simulator's calls; knows nothing of rooflines, links or routes.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import simpy

from simdl.errors import PlanError, SimdlError
from simdl.nn.chain import Chain
from simdl.nn.core import ITEMSIZE, Cost
from simdl.nn.dense import SoftmaxCrossEntropy
from simdl.nn.fit import evaluate
from simdl.nn.optim import OPTIMIZERS, Optimizer
from simdl.plan.plan import input_bytes
from simdl.plan.training import TrainPlan
from simdl.plan.world import Training, World
from simdl.rng import stream
from simdl.sim.engine import Simulator
from simdl.sim.metrics import TrainingMetrics

#: One op of a stage's schedule: ("F", j) forward or ("B", j) backward of micro-batch j.
Op = tuple[str, int]


def gpipe(stage: int, stages: int, microbatches: int) -> list[Op]:
    """GPipe (Huang et al. 2019): every forward, then every backward, last micro-batch
    first (LIFO: the last stage turns its freshest activations round at once). All m
    micro-batches' saved activations are alive at the turn."""
    m = microbatches
    return [("F", j) for j in range(m)] + [("B", j) for j in reversed(range(m))]


def one_f_one_b(stage: int, stages: int, microbatches: int) -> list[Op]:
    """1F1B as in PipeDream-Flush (Narayanan et al. 2021): min(p - s - 1, m) warm-up
    forwards, then one forward and one backward in turn, then the cool-down backwards.
    Stage s holds at most min(p - s, m) micro-batches' activations."""
    m = microbatches
    warm = min(stages - stage - 1, m)
    ops = [("F", j) for j in range(warm)]
    for k in range(m - warm):
        ops += [("F", warm + k), ("B", k)]
    return ops + [("B", j) for j in range(m - warm, m)]


SCHEDULES: dict[str, Callable[[int, int, int], list[Op]]] = {
    "gpipe": gpipe,
    "1f1b": one_f_one_b,
}

#: FLOPs per parameter of one optimizer update: SGD p -= lr*g is 2; momentum adds
#: v = mu*v + g (2); Adam's two moments, bias corrections, sqrt and divide about 10.


def train_pipeline(plan: TrainPlan, world: World, sim: Simulator,
                   progress: Callable[[int], None] | None = None, *,
                   chain: Chain | None = None) -> TrainingMetrics:
    """Train `world.chain` (a deep copy of it; `world.chain` is never changed) over
    `plan.stages`, `plan.microbatches` micro-batches per step in `plan.schedule` order.

    Each step draws a global batch of `workload.batch` samples from
    `world.train_data` (epochs shuffled by `stream(world.seed, "batches/pipeline")`,
    a ragged last batch dropped), held on the first stage's device; its labels go to
    the last stage at the step's start. The micro-batches' loss gradients are
    weighted by their share of the batch's labels, so the accumulated gradient is the
    full-batch mean gradient (exactly, up to float summation order, for models
    without BatchNorm: BatchNorm normalises each micro-batch by its own statistics,
    as in GPipe). Then every stage updates its own parameters with its own optimizer
    state, and the next step starts when all have: a synchronous flush.

    `chain` (keyword only): train this chain in place instead of a deep copy (tests
    read its weights and gradients; the last step's gradients are kept).
    `progress(1)` is called after each step. The run ends with the last step.
    """
    run = _Pipeline(plan, world, sim, chain)
    metrics = TrainingMetrics()
    done = sim.env.event()

    def driver() -> Generator[Any, Any, None]:
        for i in range(run.load.steps):
            metrics.add(**(yield from run.step(i)))
            if progress is not None:
                progress(1)
        done.succeed()

    sim.process(driver())
    sim.run(until=done)
    return metrics


@dataclass
class _Tally:
    """One stage's share of one step."""

    compute: float = 0.0  # s of its kernels
    comm: float = 0.0     # s stalled on an input whose transfer was in flight
    sent: float = 0.0     # bytes it sent to another device
    end: float = 0.0      # when its optimizer update ended


class _Pipeline:
    """The run's state: the stages, the chain being trained, the in-flight messages."""

    def __init__(self, plan: TrainPlan, world: World, sim: Simulator, chain: Chain | None):
        load = world.workload
        if not isinstance(load, Training):
            raise PlanError("workload", type(load).__name__,
                            "pipeline training needs a training workload")
        if world.train_data is None:
            raise SimdlError("world.train_data", None, "a training workload needs a training set")
        _check(plan, world)
        self.plan, self.world, self.sim, self.load = plan, world, sim, load
        self.stages = plan.stages
        self.p, self.m = len(plan.stages), plan.microbatches
        self.real = not sim.timing_only
        base = world.chain
        # Timing needs only costs (shapes), read from world.chain: no copy in timing-only mode.
        self.chain = (chain if chain is not None else copy.deepcopy(base)) if self.real else base
        data = world.train_data
        self.batch = min(load.batch, len(data))  # a training set smaller than a batch: all of it
        if self.m > self.batch:
            raise PlanError("microbatches", self.m, f"at most the batch size ({self.batch})")
        self.sizes = [len(a) for a in np.array_split(np.arange(self.batch), self.m)]
        self.costs = {n: base.costs(n) for n in sorted(set(self.sizes))}
        logits = self.costs[self.sizes[0]][-1].out_shape
        self.loss_cost = {n: SoftmaxCrossEntropy().cost((n, *logits[1:])) for n in self.costs}
        per_sample = int(np.prod(data.y.shape[1:], dtype=np.int64)) * data.y.itemsize
        self.label_bytes = self.batch * per_sample
        self.batch_bytes = input_bytes(base, self.batch) + self.label_bytes
        self.ops = [SCHEDULES[plan.schedule](s, self.p, self.m) for s in range(self.p)]
        self.draws = (data.forever(self.batch, stream(world.seed, "batches/pipeline"))
                      if self.real else None)
        self.opts: list[Optimizer] = []
        self.params: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = []
        self.stage_of: dict[str, int] = {}  # kernel label -> stage, to add up kernel time
        for s, st in enumerate(self.stages):
            opt = _optimizer(load)
            self.opts.append(opt)
            sub = self.chain[st.start:st.stop]  # shares the layers of self.chain
            self.params.append((sub.params(), sub.grads()))
            n = base.n_params(st.start, st.stop)
            sim.allocate(st.device, base.param_bytes(st.start, st.stop), f"weights s{s}")
            sim.allocate(st.device, n * ITEMSIZE * (1 + opt.slots), f"grads and optimizer s{s}")
            for b in range(st.start, st.stop):
                for j in range(self.m):
                    self.stage_of[f"fwd {base.names[b]} mb{j}"] = s
                    self.stage_of[f"bwd {base.names[b]} mb{j}"] = s
            self.stage_of[self._update_label(s)] = s
        self._reset()

    # -- one step ----------------------------------------------------------------

    def step(self, i: int) -> Generator[Any, Any, dict[str, Any]]:
        """Step i: every stage's schedule, then every stage's update; value: the metrics row."""
        sim, first, last = self.sim, self.stages[0].device, self.stages[-1].device
        t0, mark = sim.now, len(sim.log.rows)
        self._reset()
        if self.real:
            x, y = next(self.draws)
            cuts = np.cumsum(self.sizes)[:-1]
            self.xs, self.ys = np.split(x, cuts), np.split(y, cuts)
            counts = [int((part >= 0).sum()) for part in self.ys]  # labelled positions
            self.weights = [c / max(sum(counts), 1) for c in counts]
            self.chain.zero_grad()  # the step's gradient accumulates over its micro-batches
        sim.allocate(first, self.batch_bytes, f"batch step {i}", step=i)
        self._send(0, self.p - 1, ("labels",), self.ys, self.label_bytes, f"labels step {i}", i)
        procs = [sim.process(self._stage(s, i)) for s in range(self.p)]
        yield sim.env.all_of(procs)
        sim.free(first, self.batch_bytes, f"batch step {i}", step=i)
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
        loss = sum(self.losses[j] * self.weights[j] for j in range(self.m)) if self.real else np.nan
        row: dict[str, Any] = {
            "step": i, "t": sim.now, "loss": loss,
            "compute_s": float(np.mean(compute)), "comm_s": float(np.mean(comm)),
            "wait_s": float(np.mean([span - c - k for c, k in zip(compute, comm)])),
            "bytes_per_worker": float(np.mean([t.sent for t in self.tally]))}
        if self.real and ((i + 1) % self.load.eval_every == 0 or i == self.load.steps - 1):
            row["eval_loss"], row["accuracy"] = evaluate(self.chain, self.world.data)
        return row

    def _reset(self) -> None:
        """Forget the last step's messages, caches and tallies."""
        self.boxes: list[dict[tuple[Any, ...], simpy.Event]] = [{} for _ in range(self.p)]
        self.tally = [_Tally() for _ in range(self.p)]
        self.xs: list[Any] = [None] * self.m        # stage 0's micro-batch inputs
        self.ys: list[Any] | None = None            # their labels (sent to the last stage)
        self.weights = [0.0] * self.m               # each micro-batch's share of the labels
        self.caches: list[dict[int, list[Any]]] = [{} for _ in range(self.p)]
        self.dlogits: dict[int, Any] = {}
        self.losses: dict[int, float] = {}

    def _stage(self, s: int, i: int) -> Generator[Any, Any, None]:
        """Stage s's ops of step i in schedule order, then its optimizer update."""
        for op, j in self.ops[s]:
            if op == "F":
                yield from self._forward(s, i, j)
            else:
                yield from self._backward(s, i, j)
        st = self.stages[s]
        flops, moved = self.opts[s].cost(self.world.chain.n_params(st.start, st.stop))
        yield self.sim.compute(st.device, flops, moved, self.opts[s].step, self.params[s],
                               unit=st.unit, dtype=st.dtype, label=self._update_label(s), step=i)
        self.tally[s].end = self.sim.now

    def _forward(self, s: int, i: int, j: int) -> Generator[Any, Any, None]:
        """Micro-batch j through stage s's blocks, one kernel each; the last stage's last
        kernel also runs the loss and its gradient (its cost added to that kernel)."""
        sim, st, n = self.sim, self.stages[s], self.sizes[j]
        costs, names, last = self.costs[n], self.world.chain.names, s == self.p - 1
        x = self.xs[j] if s == 0 else (yield from self._receive(s, ("act", j)))
        if last and j == 0:  # every schedule starts with micro-batch 0
            yield from self._receive(s, ("labels",))
            if st.device != self.stages[0].device:
                sim.allocate(st.device, self.label_bytes, f"labels step {i}", step=i)
        caches: list[Any] = []
        for b in range(st.start, st.stop):
            c = costs[b]
            fn, args, flops, moved = _forward_block, (self.chain, x, b), c.fwd_flops, c.fwd_bytes
            if last and b == st.stop - 1:
                lc = self.loss_cost[n]
                y = self.ys[j] if self.real else None
                fn, args = _forward_loss, (self.chain, x, b, y, self.weights[j])
                flops, moved = flops + lc.fwd_flops, moved + lc.fwd_bytes
            out = yield sim.compute(st.device, flops, moved, fn, args, unit=st.unit, dtype=st.dtype,
                                    label=f"fwd {names[b]} mb{j}", step=i)
            sim.allocate(st.device, self._saved(c, n, last and b == st.stop - 1),
                         f"saved {names[b]} mb{j}", step=i)
            if out is not None:
                x, cache = out[0], out[1]
                caches.append(cache)
                if last and b == st.stop - 1:
                    self.losses[j], self.dlogits[j] = out[0], out[2]
        self.caches[s][j] = caches
        if not last:
            self._send(s, s + 1, ("act", j), x, costs[st.stop - 1].out_bytes, f"act mb{j}", i)

    def _backward(self, s: int, i: int, j: int) -> Generator[Any, Any, None]:
        """Micro-batch j's gradient back through stage s's blocks; gradients accumulate."""
        sim, st, n = self.sim, self.stages[s], self.sizes[j]
        costs, names, last = self.costs[n], self.world.chain.names, s == self.p - 1
        dy = self.dlogits.pop(j, None) if last else (yield from self._receive(s, ("grad", j)))
        caches = self.caches[s].pop(j)
        for b in reversed(range(st.start, st.stop)):
            c = costs[b]
            flops, moved = c.bwd_flops, c.bwd_bytes
            if last and b == st.stop - 1:
                lc = self.loss_cost[n]
                flops, moved = flops + lc.bwd_flops, moved + lc.bwd_bytes
            cache = caches[b - st.start] if caches else None
            dy = yield sim.compute(st.device, flops, moved, _backward_block,
                                   (self.chain, dy, cache, b), unit=st.unit, dtype=st.dtype,
                                   label=f"bwd {names[b]} mb{j}", step=i)
            sim.free(st.device, self._saved(c, n, last and b == st.stop - 1),
                     f"saved {names[b]} mb{j}", step=i)
        if s > 0:
            self._send(s, s - 1, ("grad", j), dy, costs[st.start].in_bytes, f"grad mb{j}", i)

    # -- messages between stages ----------------------------------------------------

    def _box(self, s: int, key: tuple[Any, ...]) -> simpy.Event:
        """Stage s's mailbox for `key`: made by whichever of sender and receiver comes first."""
        box = self.boxes[s].get(key)
        if box is None:
            box = self.boxes[s][key] = self.sim.env.event()
        return box

    def _send(self, s: int, to: int, key: tuple[Any, ...], payload: Any, nbytes: float,
              label: str, i: int) -> None:
        """Ship `payload` from stage s to stage `to` without waiting (an isend): the
        sender computes on while the bytes travel."""
        src, dst = self.stages[s].device, self.stages[to].device
        box, now = self._box(to, key), self.sim.now
        if src == dst:  # same device: nothing moves
            box.succeed((payload, now))
            return
        self.tally[s].sent += nbytes
        flow = self.sim.transfer(src, dst, nbytes, label=label, step=i)

        def deliver(ev: simpy.Event) -> None:
            if ev.ok:
                box.succeed((payload, now))
            else:  # a device left: the receiver hears it (faults end the run)
                ev.defused = True
                box.fail(ev.value)

        flow.callbacks.append(deliver)

    def _receive(self, s: int, key: tuple[Any, ...]) -> Generator[Any, Any, Any]:
        """Wait for a message; the stall while its bytes were in flight counts as comm,
        the stall before it was even sent as waiting (the bubble)."""
        t0 = self.sim.now
        payload, sent = yield self._box(s, key)
        self.tally[s].comm += self.sim.now - max(t0, sent)
        return payload

    # -- helpers -------------------------------------------------------------------

    def _saved(self, c: Cost, n: int, with_loss: bool) -> float:
        """Bytes block b keeps from forward to backward (plus the loss's probabilities)."""
        return c.saved_bytes + (self.loss_cost[n].saved_bytes if with_loss else 0)

    def _update_label(self, s: int) -> str:
        names, st = self.world.chain.names, self.stages[s]
        return f"optimizer {names[st.start]}..{names[st.stop - 1]}"


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


def _optimizer(load: Training) -> Optimizer:
    kw = {"momentum": load.momentum} if load.optimizer == "sgd" else {}
    return OPTIMIZERS[load.optimizer](lr=load.lr, **kw)


_LOSS = SoftmaxCrossEntropy()


def _forward_block(chain: Chain, x: np.ndarray, b: int) -> tuple[np.ndarray, Any]:
    y, caches = chain.forward(x, train=True, start=b, stop=b + 1)
    return y, caches[0]


def _forward_loss(chain: Chain, x: np.ndarray, b: int, y: np.ndarray,
                  weight: float) -> tuple[float, Any, np.ndarray]:
    """The last block, the loss, and d(loss)/d(logits) scaled by the micro-batch's share."""
    logits, caches = chain.forward(x, train=True, start=b, stop=b + 1)
    loss, cache = _LOSS.forward(logits, y)
    return loss, caches[0], _LOSS.backward(cache) * np.float32(weight)


def _backward_block(chain: Chain, dy: np.ndarray, cache: Any, b: int) -> np.ndarray | None:
    return chain.backward(dy, [cache], start=b, stop=b + 1)
