"""How data-parallel workers agree on the model without a global barrier per step:
gossip and local SGD / federated averaging (parameter servers are in `sim.servers`,
the all-reduce in `sim.allreduce`, the registry in `sim.training`).

Each protocol is a function (job) -> None that starts the run's processes. Bytes move through the simulator (or its collectives), so they contend on
the network; the numerics (sums, applies, averages) run on the workers' arrays in real
mode and are skipped in timing-only mode without changing any control flow.
"""
from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np

from simdl.nn.chain import Chain
from simdl.nn.gradcomp import make
from simdl.plan.training import TrainPlan
from simdl.plan.world import World
from simdl.rng import stream
from simdl.sim.engine import Simulator
from simdl.sim.job import Arrays, Gen, Job, Tally, Worker, buffers_into


# -- gossip ----------------------------------------------------------------------------------

def consensus(kind: str, ratio: float) -> float:
    """CHOCO-gossip's consensus step (Koloskova et al., ICML 2019, alg. 1). 1 is plain
    gossip averaging; sign and the near-exact codecs did best at 1. Top-k needs a step
    that shrinks with the share sent: measured on a 4-worker ring, by_class, 40 steps,
    the spread stayed lowest near 0.2 at 1% and 0.5 at 10% (at 1 it grew without bound)."""
    return min(1.0, 2.0 * ratio ** 0.5) if kind == "topk" else 1.0


def ring(n: int) -> list[list[int]]:
    """Each worker's neighbours: the previous and next worker of the plan's order in a
    ring (one for two workers, none alone)."""
    if n == 1:
        return [[]]
    if n == 2:
        return [[1], [0]]
    return [[(r - 1) % n, (r + 1) % n] for r in range(n)]


def gossip(plan: TrainPlan, world: World, sim: Simulator,
           progress: Callable[[int], None] | None = None) -> Job:
    """After its local step a worker sends its model change to its ring neighbours and
    mixes in theirs with weight 1/(degree + 1) (CHOCO-gossip: each worker keeps a
    public copy of its own and its neighbours' models, moved by the compressed
    differences sent, which makes compression exact-in-the-limit without error
    feedback). No barrier: a worker waits only for its neighbours' messages of the
    same step. The workers' average model is evaluated."""
    job = Job(plan, world, sim, progress)
    ws, sync = job.add_workers(plan.workers), plan.sync
    nbrs = ring(len(ws))
    held: list[dict[int, Arrays]] = []
    for w in ws:
        w.comp = make(sync.compression, sync.ratio, error_feedback=False)  # copies replace EF
        job.hold(w)
        sim.allocate(w.device, (len(nbrs[w.rank]) + 1) * job.trainable,
                     f"public copies r{w.rank}")
        if job.real:
            held.append({u: {n: p.copy() for n, p in w.params.items()}
                         for u in [w.rank, *nbrs[w.rank]]})

    def average() -> Chain:
        out = copy.deepcopy(ws[0].chain)
        for n, p in out.params().items():
            p[...] = np.mean([w.chain.params()[n] for w in ws], axis=0)
        buffers_into(out, [w.chain for w in ws], [1.0 / len(ws)] * len(ws))
        return out

    job.model = average
    spread = _Spread(job)
    for w in ws:
        sim.process(_gossip_worker(job, w, nbrs[w.rank], held[w.rank] if job.real else {},
                                   spread))
    return job


def _gossip_worker(job: Job, w: Worker, nbrs: list[int], held: dict[int, Arrays],
                   spread: _Spread) -> Gen:
    sim, ws = job.sim, job.workers
    gamma = consensus(job.plan.sync.compression, job.plan.sync.ratio) / (len(nbrs) + 1)
    wire = float(sum(job.wire.values()))
    for step in range(job.load.steps):
        if job.stop:
            return
        tally = Tally(sim.now)
        yield from job.step_alone(w, step, tally)
        q = None
        if job.real:
            spread.add("before", step, w)
            own = held[w.rank]
            q = job.pack(w, {n: w.params[n] - own[n] for n in job.names})
            for n in job.names:
                own[n] += q[n]
        sends = []
        for u in nbrs:
            ev = job.send(w.device, ws[u].device, wire, "gossip", step, tally)
            job.deliver(ev, ("gossip", step, w.rank, u), q)
            sends.append(ev)
        got = yield from job.wait(sends + [job.box(("gossip", step, u, w.rank)) for u in nbrs],
                                  tally)

        def mix() -> None:
            own = held[w.rank]
            for u, (_, qu) in zip(nbrs, got[len(nbrs):]):
                for n in job.names:
                    held[u][n] += qu[n]
            for n in job.names:
                w.params[n] += gamma * sum(held[u][n] - own[n] for u in nbrs)

        t = sim.now
        count = sum(job.size.values())
        yield sim.compute(w.device, 3.0 * len(nbrs) * count, (2 * len(nbrs) + 2) * job.trainable,
                          mix if job.real and nbrs else None, label="mix", step=step)
        tally.compute += sim.now - t
        if job.real:
            spread.add("after", step, w)
        job.report(step, w, tally)


class _Spread:
    """How far the workers' models are from their mean, before and after each step's
    mixing (real mode): job.series["spread_before"/"spread_after"], the root mean square
    over workers of the L2 distance to the mean model."""

    def __init__(self, job: Job):
        self.job = job
        self.seen: dict[tuple[str, int], dict[int, np.ndarray]] = {}

    def add(self, when: str, step: int, w: Worker) -> None:
        got = self.seen.setdefault((when, step), {})
        got[w.rank] = np.concatenate([w.params[n].ravel() for n in self.job.names])
        if len(got) == len(self.job.workers):
            flat = np.stack([got[r] for r in sorted(got)])
            value = float(np.sqrt(np.mean((flat - flat.mean(axis=0)) ** 2) * flat.shape[1]))
            self.job.series.setdefault(f"spread_{when}", []).append(value)
            if when == "after":
                self.job.metrics.extra["disagreement"] = value
            del self.seen[(when, step)]


# -- local SGD / federated averaging -----------------------------------------------------------

def local_sgd(plan: TrainPlan, world: World, sim: Simulator,
              progress: Callable[[int], None] | None = None) -> Job:
    """Rounds: the server (the first worker) sends its model to the sampled clients
    (stream "clients"; all when `clients` is 0), each takes `local_steps` steps on its
    own data and sends back its (compressed) model change; the server adds the changes'
    mean weighted by samples. Unsampled clients idle. The server's model is evaluated."""
    job = Job(plan, world, sim, progress)
    ws = job.add_workers(plan.workers)
    model = copy.deepcopy(world.chain) if job.real else None
    every = model.params() if model is not None else {}
    sim.allocate(ws[0].device, 2 * job.trainable, "global model and sum of changes")
    for w in ws:
        job.hold(w)
        sim.allocate(w.device, job.trainable, f"round start r{w.rank}")
    job.model = lambda: model
    sim.process(_rounds(job, {n: every[n] for n in job.names} if job.real else {}, model))
    return job


def _rounds(job: Job, glob: Arrays, model: Chain | None) -> Gen:
    sim, ws, sync = job.sim, job.workers, job.plan.sync
    n = len(ws)
    m = sync.clients if 0 < sync.clients < n else n
    rng = stream(job.world.seed, "clients")
    server = ws[0]
    for r in range(job.load.steps):
        if job.stop:
            return
        picked = sorted(int(i) for i in rng.choice(n, size=m, replace=False)) if m < n \
            else list(range(n))
        job.expected[r] = m
        tallies = [Tally(sim.now) for _ in picked]
        procs = [sim.process(_client(job, ws[i], r, t, glob, model))
                 for i, t in zip(picked, tallies)]
        yield sim.env.all_of(procs)
        total = sum(ws[i].samples for i in picked)
        weights = [ws[i].samples / total for i in picked]

        def average() -> None:
            for name in job.names:
                glob[name] += sum(np.float32(wt) * p.value[name] for wt, p in zip(weights, procs))
            buffers_into(model, [ws[i].chain for i in picked], weights)

        yield sim.compute(server.device, 2.0 * m * sum(job.size.values()),
                          (m + 2) * job.trainable, average if job.real else None,
                          label="average", step=r)
        for i, tally in zip(picked, tallies):
            job.report(r, ws[i], tally)


def _client(job: Job, w: Worker, r: int, tally: Tally, glob: Arrays,
            model: Chain | None) -> Gen:
    server = job.workers[0]
    yield from job.wait([job.send(server.device, w.device, job.trainable, "model", r)], tally)
    start = None
    if job.real:
        for n in job.names:
            np.copyto(w.params[n], glob[n])
        buffers_into(w.chain, [model], [1.0])
        start = {n: w.params[n].copy() for n in job.names}
    for _ in range(job.plan.sync.local_steps):
        yield from job.step_alone(w, r, tally)
    delta = job.pack(w, {n: w.params[n] - start[n] for n in job.names}) if job.real else None
    wire = float(sum(job.wire.values()))
    yield from job.wait([job.send(w.device, server.device, wire, "delta", r, tally)], tally)
    return delta
