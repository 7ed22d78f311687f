"""One kernel on a compute unit: the unit's queue, the kernel as its own simpy event, and
what happens at its end or when its device leaves. The Simulator (sim/engine.py) makes
and starts them; nothing here knows devices' specs beyond the unit's own.
"""
from __future__ import annotations

import heapq

import simpy
from simpy.events import PENDING

from simdl.errors import DeviceGone
from simdl.hw.devices import DeviceSpec


class Job(simpy.Event):
    """One kernel waiting for, or running on, a unit; itself the event its caller waits
    on, scheduled for the kernel's end when it starts (one object, one event per kernel).
    Made by `Simulator.compute` (with `new`) without an __init__ call (it is the hot path)."""

    __slots__ = ("env", "callbacks", "_ok", "_value", "sim", "unit", "flops", "nbytes",
                 "dtype", "fn", "args", "label", "request", "step", "t_start", "priority",
                 "keep")


new = object.__new__  # makes a Job without calling an __init__


class Unit:
    """A compute unit: one kernel at a time, the rest wait by (priority, arrival)."""

    __slots__ = ("device", "name", "spec", "queue", "running", "held", "busy", "seq", "rates",
                 "load", "speed")

    def __init__(self, device: str, name: str, spec: DeviceSpec):
        self.device, self.name, self.spec = device, name, spec
        self.queue: list[tuple[int, int, Job]] = []
        self.running: Job | None = None
        self.held: int | None = None  # kept idle for the next kernel of this priority
        self.busy = 0.0  # seconds of finished kernels
        self.seq = 0
        self.rates: dict[str, tuple[float, float, float]] = {}  # dtype -> roofline constants
        # A fixed background load is read once; a schedule is looked up per kernel.
        self.load = spec.background if isinstance(spec.background, (int, float)) else None
        self.speed = 1.0  # factor on its rate from `Simulator.set_speed`


def finished(job: Job) -> None:
    """A started kernel's first callback, at its end: only now do its numerics run (a
    kernel lost with its device never runs them), and their value is the one its caller
    resumes with. One module-level function for every kernel: no bound method per job.
    (A kernel lost with its device never gets here: `fail` takes it off its event.)"""
    u, sim = job.unit, job.sim
    if job.fn is not None and not sim.timing_only:
        job._value = job.fn(*job.args)
    now = job.env._now
    u.running, u.busy = None, u.busy + (now - job.t_start)
    sim._running -= 1
    sim.log.rows.append((job.t_start, now, "compute", u.device, u.name, job.label,
                         job.flops, job.nbytes, job.request, job.step))
    if job.keep:  # its caller resumes next and asks for the unit again
        u.held = job.priority
    elif u.queue:
        nxt = heapq.heappop(u.queue)[2]
        nxt.callbacks.insert(0, finished)  # before its waiters' resumes
        sim._start(nxt)



class AllOf(simpy.Event):
    """Succeeds, with its events' values in order, once every one has been processed; fails
    with the first failure. simpy's AllOf, scheduled at the same instant and place, without
    the ConditionValue it builds and takes apart."""

    __slots__ = ("env", "callbacks", "_ok", "_value", "_events", "_left")

    def __init__(self, env: simpy.Environment, events: list[simpy.Event]):
        self.env, self.callbacks, self._value = env, [], PENDING
        self._events, self._left = events, len(events)
        if not events:
            self.succeed([])
        for event in events:
            if event.callbacks is None:  # processed already
                self._check(event)
            else:
                event.callbacks.append(self._check)

    def _check(self, event: simpy.Event) -> None:
        if self._value is not PENDING:
            return
        self._left -= 1
        if not event._ok:
            event._defused = True
            self.fail(event._value)
        elif not self._left:
            self.succeed([e._value for e in self._events])


def fail(env: simpy.Environment, job: Job, error: DeviceGone) -> None:
    """Fail a lost kernel's event now, so whoever waits on it hears at once.

    A running kernel is already scheduled for its end, and simpy cannot cancel it:
    its waiters move to a new event failed now, and the scheduled one is turned into
    a (defused) failure so a late `yield` sees the loss too.
    """
    event: simpy.Event = job
    if job.t_start >= 0:  # started: scheduled for its end
        event = env.event()
        event.callbacks = [c for c in job.callbacks if c is not finished]
        job.callbacks = []
        job._ok, job._value = False, error  # simpy has no public way to cancel
        job.defused = True
    event.fail(error)
    if not event.callbacks:
        event.defused = True  # nobody waits: the log's `lost` row is the record
