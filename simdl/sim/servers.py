"""Parameter servers: workers push (compressed) gradients to the servers owning each
parameter and pull the parameters back, in bsp, asp or ssp mode, while workers may
leave or straggle.

bsp: each server waits for the step's pushes (`sim.churn.Quorum`) until all have
arrived, a pusher's device has left (the server hears the connection close), or
`worker_timeout` seconds have passed since the step's first push reached it; it
applies the sum of the pushes it got, weighted by their share of those pushes'
samples. The step closes when every server has applied and the workers whose pushes
every server took have pulled; a worker dropped (late) finishes its push, pulls the
current shard and joins the first step that opens after that. Shards are judged
apart: a worker late at one server and on time at another counts in the second's
sum only. asp carries on without a worker that left; ssp keeps its staleness bound
over the workers still present.

Owns the sharding of parameters over servers, the servers' model and optimizer state,
and the staleness clock; knows nothing of gossip, local SGD or the SYNCS registry
(`sim.sync`), and moves bytes only through the Job's exchange (`sim.exchange`).
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simdl.errors import DeviceGone, PlanError
from simdl.nn.chain import Chain
from simdl.nn.optim import Optimizer
from simdl.plan.training import TrainPlan, shard_params
from simdl.plan.world import World
from simdl.sim.churn import Quorum, Roster, close_step, lost, survive, together
from simdl.sim.engine import Simulator
from simdl.sim.exchange import Tally
from simdl.sim.job import Arrays, Gen, Job, Worker, buffers_into, stepper, sum_in_order


@dataclass
class Server:
    """One parameter server: its device, the parameters it owns, their optimizer state."""

    rank: int
    device: str
    names: list[str]
    opt: Optimizer
    raw: float       # bytes of its parameters (what a pull moves)
    wire: float      # bytes of one worker's push to it (compressed gradients)
    params: Arrays = field(default_factory=dict)  # views into the server model (real mode)
    version: int = 0  # updates applied so far


def parameter_server(plan: TrainPlan, world: World, sim: Simulator,
                     progress: Callable[[int], None] | None = None) -> Job:
    """Workers push (compressed) gradients to the servers owning each parameter and pull
    the parameters back. bsp: a server applies the sum of the step's pushes once per
    step (see the module). asp: it applies each push on arrival; staleness = its version
    at the apply minus the version the pushing worker last pulled. ssp: asp, but a worker
    starts step t only once t - (the slowest present worker's step) <= `staleness`. The
    server's model is evaluated."""
    job = Job(plan, world, sim, progress)
    sync = plan.sync
    if not sync.servers:
        raise PlanError("sync.servers", sync.servers, "name at least one server device")
    if sync.mode not in ("bsp", "asp", "ssp"):
        raise PlanError("sync.mode", sync.mode, "choose one of: asp, bsp, ssp")
    owner = shard_params({n: job.raw[n] for n in job.names}, len(sync.servers))
    model = copy.deepcopy(job.world.chain) if job.real else None
    every = model.params() if model is not None else {}
    servers = []
    for i, device in enumerate(sync.servers):
        names = [n for n in job.names if owner[n] == i]
        if names:  # a server left without parameters takes no part
            s = Server(len(servers), device, names, job.optimizer(),
                       float(sum(job.raw[n] for n in names)),
                       float(sum(job.wire[n] for n in names)),
                       {n: every[n] for n in names} if job.real else {})
            servers.append(s)
            sim.allocate(device, (2 + s.opt.slots) * s.raw, f"server shard {s.rank}")
    for w in job.add_workers(job.plan.workers):
        job.hold(w, state=False)

    def evaluated() -> Chain:
        buffers_into(model, [job.workers[0].chain], [1.0])
        return model

    job.model = evaluated
    if sync.mode == "bsp":
        sim.process(_bsp_steps(job, servers, Roster(job)))
        return job
    clock = _Clock(job, None if sync.mode == "asp" else sync.staleness)
    gone: set[int] = set()
    for w in job.workers:
        sim.process(_async(job, w, servers, clock, gone))
        sim.departure(w.device).callbacks.append(lambda _ev, w=w: _retire(job, w, clock, gone))
    return job


def _async(job: Job, w: Worker, servers: list[Server], clock: _Clock, gone: set[int]) -> Gen:
    """The asynchronous worker (`sim.servers`' exchange with each server); one that
    loses its device retires, and the others go on."""
    read = [0] * len(servers)  # the version of each server's shard this worker holds
    for step in range(job.load.steps):
        if job.stop or w.rank in gone:
            return
        tally = Tally(job.sim.now)
        try:
            yield from clock.gate(step)
            yield from job.local_step(w, step, tally)
            packed = job.pack(w, job.scaled_grads(w)) if job.real else None
            yield from together(job.sim, [_exchange(job, w, s, step, tally, packed, read)
                                       for s in servers])
        except DeviceGone:
            _retire(job, w, clock, gone)
            return
        clock.tick(w)
        job.report(step, w, tally)


def _retire(job: Job, w: Worker, clock: _Clock, gone: set[int]) -> None:
    """w is gone: it holds no step open and no worker back (its count leaves the clock)."""
    if w.rank in gone or job.done.triggered:
        return
    gone.add(w.rank)
    k = clock.finished[w.rank]
    clock.at[k] -= 1
    if not clock.at[k]:
        del clock.at[k]
    clock.slowest = min(clock.at, default=k)
    moved, clock.moved = clock.moved, job.sim.env.event()
    moved.succeed()
    job.absent(w, k)


def _bsp_steps(job: Job, servers: list[Server], roster: Roster) -> Gen:
    sim, extra = job.sim, job.metrics.extra
    late: set[int] = set()  # dropped from a step and still finishing it
    for step in range(job.load.steps):
        if job.stop:
            return
        yield from roster.admit(step, state=False)  # a returned worker's copy is stale
        ws = [w for w in roster.members() if w.rank not in late]
        if not ws:
            extra["outcome"] = f"no workers left at step {step}"
            job.done.succeed()
            return
        took = [sim.process(_bsp_server(job, s, step, ws)) for s in servers]
        tallies = {w.rank: Tally(sim.now) for w in ws}
        procs = {w.rank: sim.process(survive(_bsp_worker(job, w, servers, step,
                                                          tallies[w.rank])))
                 for w in ws}
        if job.plan.sync.worker_timeout is not None or sim.gone:
            yield sim.env.all_of(took)
            on_time = set.intersection(*(set(p.value) for p in took))
        else:  # nobody can be dropped: the barrier as it always was
            on_time = set(procs)
        yield sim.env.all_of([procs[w.rank] for w in ws if w.rank in on_time])
        done = [w for w in ws if w.rank in on_time and not lost(procs[w.rank].value)]
        for w in ws:
            if w.rank not in on_time and procs[w.rank].callbacks is not None:  # still at it
                late.add(w.rank)
                procs[w.rank].callbacks.append(lambda _ev, r=w.rank: late.discard(r))
        close_step(job, step, len(ws), done, tallies)
    if not job.done.triggered:  # the last steps lost every worker
        job.done.succeed()


def _bsp_worker(job: Job, w: Worker, servers: list[Server], step: int, tally: Tally) -> Gen:
    """Step, push, pull; a worker that loses its step (its device or its data's left)
    fails the pushes it still owes, so no server waits for them."""
    keys = [("push", step, s.rank, w.rank) for s in servers]
    try:
        yield from job.local_step(w, step, tally)
    except DeviceGone as gone:
        for key in keys:
            job.net.box(key).defused = True
            job.net.box(key).fail(gone)
        raise
    packed = job.pack(w, job.scaled_grads(w)) if job.real else None
    pushes = [_push(job, w, s, step, tally, packed, key) for s, key in zip(servers, keys)]
    yield from job.net.wait(pushes, tally)
    yield from together(job.sim, [_bsp_pull(job, w, s, step, tally) for s in servers])


def _bsp_server(job: Job, s: Server, step: int, ws: list[Worker]) -> Gen:
    """Apply the step's pushes that arrived in time; value: the ranks they came from."""
    boxes = {w.rank: job.net.box(("push", step, s.rank, w.rank)) for w in ws}
    got = yield Quorum(job.sim, boxes, {w.rank: w.device for w in ws},
                       job.plan.sync.worker_timeout)
    total = None
    if job.real and got:
        total = sum_in_order([got[r][1] for r in sorted(got)])
        samples = sum(w.samples for w in ws if w.rank in got)
        if samples != job.load.batch:  # the mean over the samples that count
            for a in total.values():
                a *= np.float32(job.load.batch / samples)
    yield from job.update(s.device, s.opt, step, stepper(s.opt, s.params, total),
                          names=s.names, label=f"optimizer shard {s.rank}")
    s.version += 1
    job.net.box(("applied", step, s.rank)).succeed()
    return sorted(got)


def _push(job: Job, w: Worker, s: Server, step: int, tally: Tally, packed: Arrays | None,
          key: Any) -> Any:
    ev = job.net.send(w.device, s.device, s.wire, "push", step, tally)
    job.net.deliver(ev, key, None if packed is None else {n: packed[n] for n in s.names})
    return job.net.box(key)


def _bsp_pull(job: Job, w: Worker, s: Server, step: int, tally: Tally) -> Gen:
    yield job.net.box(("applied", step, s.rank))
    snapshot = {n: s.params[n].copy() for n in s.names} if job.real else None
    yield from job.net.wait([job.net.send(s.device, w.device, s.raw, "pull", step)], tally)
    if snapshot is not None:
        for n, a in snapshot.items():
            np.copyto(w.params[n], a)


class _Clock:
    """Steps each worker has finished; holds back a worker more than `bound` ahead.
    The slowest worker's count is kept as workers finish steps (no scan of all)."""

    def __init__(self, job: Job, bound: int | None):
        self.job, self.bound = job, bound
        self.finished = [0] * len(job.workers)
        self.at = {0: len(job.workers)}  # steps finished -> workers that have done so many
        self.slowest = 0                 # min(self.finished)
        self.moved = job.sim.env.event()
        job.metrics.extra["max_gap"] = 0
        job.metrics.extra["staleness_max"] = 0

    def gate(self, step: int) -> Gen:
        while self.bound is not None and step - self.slowest > self.bound:
            yield self.moved
        extra = self.job.metrics.extra
        extra["max_gap"] = max(extra["max_gap"], step - self.slowest)

    def tick(self, w: Worker) -> None:
        k = self.finished[w.rank]
        self.finished[w.rank] = k + 1
        self.at[k] -= 1
        self.at[k + 1] = self.at.get(k + 1, 0) + 1
        if k == self.slowest and not self.at[k]:
            del self.at[k]
            self.slowest = k + 1
        moved, self.moved = self.moved, self.job.sim.env.event()
        moved.succeed()


def _exchange(job: Job, w: Worker, s: Server, step: int, tally: Tally, packed: Arrays | None,
              read: list[int]) -> Gen:
    """Push to `s`, which applies the gradient as soon as its unit is free, then pull."""
    sim = job.sim
    yield from job.net.wait([job.net.send(w.device, s.device, s.wire, "push", step, tally)], tally)

    def apply() -> Arrays:  # numerics and the snapshot in one kernel: applies stay in order
        s.opt.step(s.params, {n: packed[n] for n in s.names})
        return {n: s.params[n].copy() for n in s.names}

    snapshot = yield from job.update(s.device, s.opt, step, apply if packed is not None else None,
                                     names=s.names, label=f"apply shard {s.rank}")
    stale = s.version - read[s.rank]
    s.version += 1
    read[s.rank] = s.version
    job.staleness.setdefault(step, []).append(float(stale))
    job.metrics.extra["staleness_max"] = max(job.metrics.extra["staleness_max"], stale)
    sim.log.add(sim.now, sim.now, "apply", s.device, w.device, f"staleness {stale}",
                step=step)
    yield from job.net.wait([job.net.send(s.device, w.device, s.raw, "pull", step)], tally)
    if snapshot is not None:
        for n, a in snapshot.items():
            np.copyto(w.params[n], a)
