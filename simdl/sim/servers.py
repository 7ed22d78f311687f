"""Parameter servers: workers push (compressed) gradients to the servers owning each
parameter and pull the parameters back, in bsp, asp or ssp mode.

Owns the sharding of parameters over servers, the servers' model and optimizer state,
and the staleness clock; knows nothing of gossip, local SGD or the SYNCS registry
(`sim.sync`), and moves bytes only through the Job (`sim.job`).
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simdl.errors import PlanError
from simdl.nn.chain import Chain
from simdl.nn.optim import Optimizer
from simdl.plan.training import TrainPlan, shard_params
from simdl.plan.world import World
from simdl.sim.engine import Simulator
from simdl.sim.job import Arrays, Gen, Job, Tally, Worker, buffers_into, stepper, sum_in_order


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
    the parameters back. bsp: a server applies the sum of all pushes once per step. asp:
    it applies each push on arrival; staleness = its version at the apply minus the version
    the pushing worker last pulled. ssp: asp, but a worker starts step t only once
    t - (the slowest worker's step) <= `staleness`. The server's model is evaluated."""
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
        sim.process(_bsp_steps(job, servers))
        return job
    clock = _Clock(job, None if sync.mode == "asp" else sync.staleness)
    for w in job.workers:
        sim.process(_async_worker(job, w, servers, clock))
    return job


def _bsp_steps(job: Job, servers: list[Server]) -> Gen:
    sim = job.sim
    for step in range(job.load.steps):
        if job.stop:
            return
        for s in servers:
            sim.process(_bsp_server(job, s, step))
        tallies = [Tally(sim.now) for _ in job.workers]
        yield sim.env.all_of([sim.process(_bsp_worker(job, w, servers, step, t))
                              for w, t in zip(job.workers, tallies)])
        for w, tally in zip(job.workers, tallies):
            job.report(step, w, tally)


def _push(job: Job, w: Worker, s: Server, step: int, tally: Tally, packed: Arrays | None,
          key: Any) -> Any:
    ev = job.send(w.device, s.device, s.wire, "push", step, tally)
    job.deliver(ev, key, None if packed is None else {n: packed[n] for n in s.names})
    return job.box(key)


def _bsp_worker(job: Job, w: Worker, servers: list[Server], step: int, tally: Tally) -> Gen:
    yield from job.local_step(w, step, tally)
    packed = job.pack(w, job.scaled_grads(w)) if job.real else None
    pushes = [_push(job, w, s, step, tally, packed, ("push", step, s.rank, w.rank))
              for s in servers]
    yield from job.wait(pushes, tally)
    yield job.sim.env.all_of([job.sim.process(_bsp_pull(job, w, s, step, tally))
                              for s in servers])


def _bsp_server(job: Job, s: Server, step: int) -> Gen:
    boxes = [job.box(("push", step, s.rank, w.rank)) for w in job.workers]
    yield job.sim.env.all_of(boxes)
    total = sum_in_order([b.value[1] for b in boxes]) if job.real else None
    yield from job.update(s.device, s.opt, step, stepper(s.opt, s.params, total),
                          names=s.names, label=f"optimizer shard {s.rank}")
    s.version += 1
    job.box(("applied", step, s.rank)).succeed()


def _bsp_pull(job: Job, w: Worker, s: Server, step: int, tally: Tally) -> Gen:
    yield job.box(("applied", step, s.rank))
    snapshot = {n: s.params[n].copy() for n in s.names} if job.real else None
    yield from job.wait([job.send(s.device, w.device, s.raw, "pull", step)], tally)
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


def _async_worker(job: Job, w: Worker, servers: list[Server], clock: _Clock) -> Gen:
    read = [0] * len(servers)  # the version of each server's shard this worker holds
    for step in range(job.load.steps):
        if job.stop:
            return
        tally = Tally(job.sim.now)
        yield from clock.gate(step)
        yield from job.local_step(w, step, tally)
        packed = job.pack(w, job.scaled_grads(w)) if job.real else None
        yield job.sim.env.all_of([job.sim.process(_exchange(job, w, s, step, tally, packed, read))
                                  for s in servers])
        clock.tick(w)
        job.report(step, w, tally)


def _exchange(job: Job, w: Worker, s: Server, step: int, tally: Tally, packed: Arrays | None,
              read: list[int]) -> Gen:
    """Push to `s`, which applies the gradient as soon as its unit is free, then pull."""
    sim = job.sim
    yield from job.wait([job.send(w.device, s.device, s.wire, "push", step, tally)], tally)

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
    yield from job.wait([job.send(s.device, w.device, s.raw, "pull", step)], tally)
    if snapshot is not None:
        for n, a in snapshot.items():
            np.copyto(w.params[n], a)
