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

from simdl.errors import DeviceGone
from simdl.nn.chain import Chain
from simdl.nn.gradcomp import make
from simdl.plan.training import TrainPlan
from simdl.plan.world import World
from simdl.rng import stream
from simdl.sim.churn import Quorum, lost, survive
from simdl.sim.engine import Simulator
from simdl.sim.exchange import Tally
from simdl.sim.job import Arrays, Gen, Job, Worker, buffers_into

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
        here = [w for w in ws if w.device not in sim.gone and w.rank not in job.retired] or ws
        out = copy.deepcopy(here[0].chain)
        for n, p in out.params().items():
            p[...] = np.mean([w.chain.params()[n] for w in here], axis=0)
        buffers_into(out, [w.chain for w in here], [1.0 / len(here)] * len(here))
        return out

    job.model = average
    spread = _Spread(job)
    for w in ws:
        sim.process(_gossip_worker(job, w, nbrs[w.rank], held[w.rank] if job.real else {},
                                   spread))
    return job


def _gossip_worker(job: Job, w: Worker, nbrs: list[int], held: dict[int, Arrays],
                   spread: _Spread) -> Gen:
    """A gossip worker until the last step; one whose device leaves stops, and its
    neighbours go on with the rest of the ring (`_gossip_steps`)."""
    at = [0]  # the step w is in
    gone = yield from survive(_gossip_steps(job, w, nbrs, held, spread, at))
    if lost(gone):
        for u in nbrs:  # what it owes its neighbours will not come
            box = job.net.box(("gossip", at[0], w.rank, u))
            if not box.triggered:
                box.defused = True
                box.fail(gone)
        job.absent(w, at[0])


def _gossip_steps(job: Job, w: Worker, every: list[int], held: dict[int, Arrays],
                  spread: _Spread, at: list[int]) -> Gen:
    """Each step: the local step, then the exchange with the ring neighbours still
    present (the graph that remains: a neighbour that left is not waited for, nor
    mixed in). `at[0]` follows the step w is in."""
    sim, ws = job.sim, job.workers
    gamma = consensus(job.plan.sync.compression, job.plan.sync.ratio) / (len(every) + 1)
    wire = float(sum(job.wire.values()))
    for step in range(job.load.steps):
        if job.stop:
            return
        tally, at[0] = Tally(sim.now), step
        nbrs = [u for u in every if ws[u].device not in sim.gone and u not in job.retired]
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
            ev = job.net.send(w.device, ws[u].device, wire, "gossip", step, tally)
            job.net.deliver(ev, ("gossip", step, w.rank, u), q)
            sends.append(ev)
        events = {("send", u): e for u, e in zip(nbrs, sends)}
        events |= {u: job.net.box(("gossip", step, u, w.rank)) for u in nbrs}
        t = sim.now
        arrived = yield Quorum(sim, events, {k: ws[k[1] if isinstance(k, tuple) else k].device
                                             for k in events})
        for flow in (v[0] if isinstance(v, tuple) else v for v in arrived.values()):
            if flow is not None and flow.t_end > t:
                tally.spans.append((max(t, flow.t_request), flow.t_end))
        if w.device in sim.gone:
            raise DeviceGone(w.device, *sim.gone[w.device])
        heard = [u for u in nbrs if u in arrived]

        def mix() -> None:
            own = held[w.rank]
            for u in heard:
                for n in job.names:
                    held[u][n] += arrived[u][1][n]
            for n in job.names:
                w.params[n] += gamma * sum(held[u][n] - own[n] for u in heard)

        t = sim.now
        count = sum(job.size.values())
        yield sim.compute(w.device, 3.0 * len(heard) * count,
                          (2 * len(heard) + 2) * job.trainable,
                          mix if job.real and heard else None, label="mix", step=step)
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
        if len(got) == len(self.job.workers) - len(self.job.retired):
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
    """Rounds; clients are sampled among those online (FedScale's selection); one
    whose device leaves before its model change has arrived does not count: the round
    averages the clients that reported, and a round none reported to changes nothing."""
    sim, ws, sync = job.sim, job.workers, job.plan.sync
    n = len(ws)
    m = sync.clients if 0 < sync.clients < n else n
    rng = stream(job.world.seed, "clients")
    server = ws[0]
    for r in range(job.load.steps):
        if job.stop:
            return
        here = [i for i in range(n) if ws[i].device not in sim.gone]  # those online
        if len(here) == n:
            picked = sorted(int(i) for i in rng.choice(n, size=m, replace=False)) if m < n \
                else list(range(n))
        else:  # as FedScale selects: among the clients online
            k = min(m, len(here))
            picked = sorted(here[int(j)] for j in rng.choice(len(here), size=k, replace=False)) \
                if k < len(here) else here
        tallies = [Tally(sim.now) for _ in picked]
        procs = [sim.process(survive(_client(job, ws[i], r, t, glob, model)))
                 for i, t in zip(picked, tallies)]
        yield sim.env.all_of(procs)
        came = [k for k, p in enumerate(procs) if not lost(p.value)]  # the clients that reported
        job.expected[r] = len(came)
        extra = job.metrics.extra
        if len(came) < len(picked):
            extra["clients_dropped"] = extra.get("clients_dropped", 0) + len(picked) - len(came)
        if not came:
            extra["steps_lost"] = extra.get("steps_lost", 0) + 1
            continue
        total = sum(ws[picked[k]].samples for k in came)
        weights = [ws[picked[k]].samples / total for k in came]

        def average() -> None:
            for name in job.names:
                glob[name] += sum(np.float32(wt) * procs[k].value[name]
                                  for wt, k in zip(weights, came))
            buffers_into(model, [ws[picked[k]].chain for k in came], weights)

        yield sim.compute(server.device, 2.0 * len(came) * sum(job.size.values()),
                          (len(came) + 2) * job.trainable, average if job.real else None,
                          label="average", step=r)
        for k in came:
            job.report(r, ws[picked[k]], tallies[k])
    if not job.done.triggered:  # the last rounds lost every client
        job.done.succeed()


def _client(job: Job, w: Worker, r: int, tally: Tally, glob: Arrays,
            model: Chain | None) -> Gen:
    server = job.workers[0]
    yield from job.net.wait([job.net.send(server.device, w.device, job.trainable, "model", r)], tally)
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
    yield from job.net.wait([job.net.send(w.device, server.device, wire, "delta", r, tally)], tally)
    return delta
