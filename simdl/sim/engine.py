"""The Simulator: one simpy clock through which every kernel and transfer runs.

Owns the compute units (simdl's own priority queues; each kernel is itself the one
simpy event its caller waits on), energy accounting per device, battery depletion,
and the event log; memory and its admission are `sim.memory`'s, reached through the
Simulator. Knows devices and the network by their specs; knows nothing of layers: a
kernel is FLOPs, bytes and an optional function to call.
"""
from __future__ import annotations

import gc
import heapq
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import simpy
from simpy.events import NORMAL, PENDING

from simdl.errors import DeviceGone, PlanError
from simdl.hw.devices import (DeviceSpec, background_at, best_unit, device_power, roofline,
                              unit_rates)
from simdl.hw.network import Network
from simdl.sim.flows import Flows
from simdl.sim.memory import Memory
from simdl.sim.recorder import EventLog

#: A battery counts as empty below this fraction of its capacity (float guard).
_EMPTY = 1e-12
#: Tickets per priority class: more than any run hands out.
_TICKETS = 2**48


class _Job(simpy.Event):
    """One kernel waiting for, or running on, a unit; itself the event its caller waits
    on, scheduled for the kernel's end when it starts (one object, one event per kernel).
    Made by `Simulator.compute` without an __init__ call (it is the hot path)."""

    __slots__ = ("env", "callbacks", "_ok", "_value", "sim", "unit", "flops", "nbytes",
                 "dtype", "fn", "args", "label", "request", "step", "t_start", "priority",
                 "keep")


_new = object.__new__  # makes a _Job without calling an __init__


class _Unit:
    """A compute unit: one kernel at a time, the rest wait by (priority, arrival)."""

    __slots__ = ("device", "name", "spec", "queue", "running", "held", "busy", "seq", "rates",
                 "load")

    def __init__(self, device: str, name: str, spec: DeviceSpec):
        self.device, self.name, self.spec = device, name, spec
        self.queue: list[tuple[int, int, _Job]] = []
        self.running: _Job | None = None
        self.held: int | None = None  # kept idle for the next kernel of this priority
        self.busy = 0.0  # seconds of finished kernels
        self.seq = 0
        self.rates: dict[str, tuple[float, float, float]] = {}  # dtype -> roofline constants
        # A fixed background load is read once; a schedule is looked up per kernel.
        self.load = spec.background if isinstance(spec.background, (int, float)) else None


def _finished(job: _Job) -> None:
    """A started kernel's first callback, at its end: only now do its numerics run (a
    kernel lost with its device never runs them), and their value is the one its caller
    resumes with. One module-level function for every kernel: no bound method per job.
    (A kernel lost with its device never gets here: `_fail` takes it off its event.)"""
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
        nxt.callbacks.insert(0, _finished)  # before its waiters' resumes
        sim._start(nxt)


class _AllOf(simpy.Event):
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


@dataclass(frozen=True)
class Energy:
    """Joules a device has used so far, by where they went."""

    idle: float
    compute: float
    radio: float

    @property
    def total(self) -> float:
        return self.idle + self.compute + self.radio


class Simulator:
    """A device pool and its network on a simpy clock.

    `compute` and `transfer` return simpy events whose value is the kernel's
    result (None in timing-only mode) or the finished Flow. Timing-only mode
    skips the functions and nothing else, so both modes give one timeline.
    """

    def __init__(self, devices: Mapping[str, DeviceSpec], network: Network | None = None,
                 timing_only: bool = False):
        self.env = simpy.Environment()
        self.devices = dict(devices)
        self.network = network
        self.timing_only = timing_only
        self.log = EventLog()
        self.units: dict[tuple[str, str], _Unit] = {
            (d, u): _Unit(d, u, spec) for d, spec in self.devices.items() for u in spec.units}
        self.gone: dict[str, tuple[float, str]] = {}
        self.memory = Memory(self.env, self.devices, self.log, self.gone)
        self.memory_used, self.memory_peak = self.memory.used, self.memory.peak
        # The memory calls, bound once (no wrapper on the path of every block).
        self.allocate, self.free = self.memory.allocate, self.memory.free
        self.reserve, self.release = self.memory.reserve, self.memory.release
        self._lanes: dict[tuple[str, str | None, str], _Unit] = {}  # see `_lane`
        self._departures = {d: self.env.event() for d in self.devices}
        for departure in self._departures.values():  # a departed device holds nobody back
            departure.callbacks.append(self.memory.regrant)
        self._running = 0  # kernels on units right now, over the whole pool
        self._tickets = 0  # handed out by `ticket`
        self._batteries = [d for d, spec in self.devices.items() if spec.battery is not None]
        self._version = dict.fromkeys(self._batteries, 0)
        self._watching = False
        self._daemons = 0  # battery checks scheduled; they alone do not keep a run going
        self.flows = Flows(self.env, network) if network is not None else None
        if self.flows is not None:
            self.flows.on_change = lambda _device: self._wake()

    # -- compute ---------------------------------------------------------------

    def compute(self, device: str, flops: float, nbytes: float = 0.0,
                fn: Callable[..., Any] | None = None, args: tuple = (), *,
                unit: str | None = None, dtype: str = "fp32", label: str = "",
                priority: int = 0, request: int = -1, step: int = -1,
                keep: bool = False) -> simpy.Event:
        """Run `fn(*args)` as a kernel of `flops` and `nbytes` on a unit of `device`.

        The unit is held for the roofline time of the device model; kernels on a
        busy unit wait in its queue, lower `priority` first, then in arrival order.
        `keep`: the caller's next kernel of the same `priority` (a `ticket`) follows at
        once; the unit waits for it instead of starting a queued one, as a runtime runs
        one invocation of a stage's blocks to its end before the next.
        """
        u = self._lanes.get((device, unit, dtype))  # none for a departed device
        if u is None:
            if device in self.gone:
                event = self.env.event()
                event.fail(DeviceGone(device, *self.gone[device]))
                return event
            u = self._lane(device, unit, dtype)
        job = _new(_Job)  # every field set here (or in _start), as an __init__ would
        job.env, job.sim, job.unit, job.flops, job.nbytes = self.env, self, u, flops, nbytes
        job.dtype, job.fn, job.args, job.label = dtype, fn, args, label
        job.request, job.step, job.priority, job.keep = request, step, priority, keep
        if u.running is None and (u.held is None or u.held == priority):  # a free unit
            u.held = None
            job.callbacks = [_finished]
            self._start(job)
        else:  # pending until `_finished` of the kernel before it starts it
            job.callbacks, job._value, job.t_start = [], PENDING, -1.0
            u.seq += 1
            heapq.heappush(u.queue, (priority, u.seq, job))
        return job

    def ticket(self, priority: int = 0) -> int:
        """A queue priority of `priority`'s class that no other work has: the name of one
        invocation of a stage, whose kernels `keep` the unit for each other. Tickets of a
        class order as they were handed out, after every lower class."""
        self._tickets += 1
        return priority * _TICKETS + self._tickets

    def _lane(self, device: str, unit: str | None, dtype: str) -> _Unit:
        """The unit a kernel of `dtype` asking for `unit` (None: the fastest) runs on,
        found once per (device, unit, dtype) and then read from `_lanes`."""
        if device not in self.devices:
            raise self._no_unit(device, None)
        u = self.units.get((device, unit or best_unit(self.devices[device], dtype)))
        if u is None:
            raise self._no_unit(device, unit)
        if dtype not in u.rates:
            u.rates[dtype] = unit_rates(u.spec, u.name, dtype)
        self._lanes[device, unit, dtype] = u
        return u

    def _no_unit(self, device: str, unit: str | None) -> PlanError:
        if device not in self.devices:
            return PlanError("device", device, f"choose one of: {', '.join(self.devices)}")
        return PlanError(f"devices.{device}.units", unit,
                         f"choose one of: {', '.join(self.devices[device].units)}")

    def _start(self, job: _Job) -> None:
        """Put `job` on its (free) unit and schedule it, as simpy schedules a Timeout, for
        its end, when its first callback is `_finished`."""
        u, env = job.unit, self.env
        now = env._now
        u.running, job.t_start = job, now
        self._running += 1
        rate, bandwidth, overhead = u.rates[job.dtype]  # filled by `_lane`
        load = u.load if u.load is not None else background_at(u.spec, now)
        duration = roofline(rate, bandwidth, overhead, load, job.flops, job.nbytes)
        job._ok, job._value = True, None
        heapq.heappush(env._queue, (now + duration, NORMAL, next(env._eid), job))  # schedule()
        if not self._watching:
            self._wake()

    # -- network ---------------------------------------------------------------

    def transfer(self, src: str, dst: str, nbytes: float, *, label: str = "",
                 request: int = -1, step: int = -1) -> simpy.Event:
        """Move `nbytes` from `src` to `dst` as a flow on the network; value: the Flow."""
        if self.flows is None:
            raise PlanError("network", None, "a transfer needs a network; give the pool one")
        for d in (src, dst):
            if d in self.gone:
                event = self.env.event()
                event.fail(DeviceGone(d, *self.gone[d]))
                return event
        flow = self.flows.transfer(src, dst, nbytes, label)

        def record(ev: simpy.Event) -> None:
            if ev.ok:
                f = ev.value
                self.log.rows.append((f.t_request, f.t_end, "transfer", src, dst, label,
                                      0.0, nbytes, request, step))
            else:
                self.log.add(self.env.now, self.env.now, "lost", src, dst, label,
                             nbytes=nbytes, request=request, step=step)

        flow.callbacks.append(record)
        return flow

    # -- energy and batteries ----------------------------------------------------

    def busy_time(self, device: str, unit: str) -> float:
        """Seconds `unit` has run kernels so far, the running one included."""
        u = self.units[device, unit]
        return u.busy + (self.env.now - u.running.t_start if u.running else 0.0)

    def energy(self, device: str) -> Energy:
        """Joules used by `device` from t=0 until now (or until it left)."""
        spec, now = self.devices[device], self.env.now
        if device in self.gone:
            now = min(now, self.gone[device][0])
        compute = sum(unit.active_power * self.busy_time(device, name)
                      for name, unit in spec.units.items())
        radio = 0.0
        if self.flows is not None:
            tx, rx = self.flows.radio_time(device, now)
            radio = spec.radio_tx_power * tx + spec.radio_rx_power * rx
        return Energy(spec.idle_power * now, compute, radio)

    def _wake(self) -> None:
        """Something started: watch every battery until the whole pool is idle again.

        A check at now + left / max_power can never be late (a device cannot drain
        faster than its maximum power), and checks close in geometrically on the
        empty instant. While nothing runs anywhere every device draws idle power,
        so an empty instant inside an idle gap is found exactly on waking.
        """
        if self._watching:
            return
        self._watching = True
        for device in self._batteries:
            if device not in self.gone:
                self._version[device] += 1
                self._check(device, self._version[device], woke=True)

    def _check(self, device: str, version: int, woke: bool = False) -> None:
        if device in self.gone or version != self._version[device]:
            return
        spec = self.devices[device]
        left = spec.battery - self.energy(device).total
        if left <= _EMPTY * spec.battery:
            at = self.env.now + left / spec.idle_power if woke and left < 0 else None
            self.leave(device, "battery empty", at=at)
            return
        if not self._active():
            self._watching = False
            return
        spec_max = device_power(spec, spec.units, True, True)
        self._daemons += 1
        timer = self.env.timeout(left / spec_max)
        timer.callbacks.append(lambda _t: self._checked(device, version))

    def _checked(self, device: str, version: int) -> None:
        self._daemons -= 1
        self._check(device, version)

    def _active(self) -> bool:
        return self._running > 0 or (self.flows is not None and self.flows.active > 0)

    # -- the pool changes --------------------------------------------------------

    def departure(self, device: str) -> simpy.Event:
        """An event that succeeds (value: the reason) when `device` leaves the pool."""
        return self._departures[device]

    def leave(self, device: str, why: str, at: float | None = None) -> None:
        """Take `device` out of the pool now; its running and queued kernels fail.

        Every lost kernel is logged as `lost` and its event fails with DeviceGone,
        so the process that waited for it decides whether to redo or report it.
        `at` back-dates the record when the instant fell inside an idle gap.
        """
        if device in self.gone:
            return
        now = self.env.now
        when = now if at is None else at
        self.gone[device] = (when, why)
        self._lanes = {k: u for k, u in self._lanes.items() if k[0] != device}
        self.log.add(when, when, "leave", device, "", why)
        error = DeviceGone(device, when, why)
        for (d, _), u in self.units.items():
            if d != device:
                continue
            jobs = ([u.running] if u.running else []) + [j for _, _, j in sorted(u.queue)]
            if u.running is not None:
                u.busy += now - u.running.t_start
                self._running -= 1
            u.running, u.queue, u.held = None, [], None
            for job in jobs:
                self.log.add(job.t_start if job.t_start >= 0 else now, now, "lost", device, u.name,
                             job.label, job.flops, job.nbytes, job.request, job.step)
                _fail(self.env, job, error)
        if self.flows is not None:
            self.flows.abort(device, error)  # their `lost` rows are written as they fail
        self._departures[device].succeed(why)

    # -- running -----------------------------------------------------------------

    @property
    def now(self) -> float:
        return self.env.now

    def all_of(self, events: list[simpy.Event]) -> simpy.Event:
        """An event that succeeds with the list of `events`' values (in their order) when
        all of them have happened, as `env.all_of` would at the same point."""
        return _AllOf(self.env, events)

    def process(self, generator: Any) -> simpy.Process:
        """Start a plain generator function's process on the clock."""
        return self.env.process(generator)

    def run(self, until: float | simpy.Event | None = None) -> None:
        """Advance the clock until `until`, or until only battery checks are left.

        Everything alive when the run starts (the world, the interpreter's modules)
        outlives it: frozen, the garbage collector does not walk it again while the
        run makes and drops its events (one full pass over a fresh interpreter's
        objects costs as much as tens of thousands of events). Not when someone else
        has frozen objects: unfreezing would undo theirs.
        """
        freeze = gc.get_freeze_count() == 0
        if freeze:
            gc.freeze()
        try:
            if until is not None or not self._batteries:
                self.env.run(until=until)
                return
            # simpy has no public queue length; battery checks must not extend a run.
            while len(self.env._queue) > self._daemons:
                self.env.step()
        finally:
            if freeze:
                gc.unfreeze()


def _fail(env: simpy.Environment, job: _Job, error: DeviceGone) -> None:
    """Fail a lost kernel's event now, so whoever waits on it hears at once.

    A running kernel is already scheduled for its end, and simpy cannot cancel it:
    its waiters move to a new event failed now, and the scheduled one is turned into
    a (defused) failure so a late `yield` sees the loss too.
    """
    event: simpy.Event = job
    if job.t_start >= 0:  # started: scheduled for its end
        event = env.event()
        event.callbacks = [c for c in job.callbacks if c is not _finished]
        job.callbacks = []
        job._ok, job._value = False, error  # simpy has no public way to cancel
        job.defused = True
    event.fail(error)
    if not event.callbacks:
        event.defused = True  # nobody waits: the log's `lost` row is the record
