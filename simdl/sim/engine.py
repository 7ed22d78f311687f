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
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import simpy
from simpy.events import NORMAL, PENDING

from simdl.errors import DeviceGone, PlanError
from simdl.hw.devices import (DeviceSpec, background_at, best_unit, device_power, roofline,
                              unit_rates)
from simdl.hw.network import Network
from simdl.sim.flows import Flows
from simdl.sim.kernel import AllOf, Job, Unit, finished, new
from simdl.sim.memory import Memory
from simdl.sim.pool import PoolChanges
from simdl.sim.recorder import EventLog

#: A battery counts as empty below this fraction of its capacity (float guard).
_EMPTY = 1e-12
#: Tickets per priority class: more than any run hands out.
_TICKETS = 2**48
#: `frozen` scopes open (on any thread): the first froze the heap, the last unfreezes it.
_frozen_depth = 0
_frozen_lock = threading.Lock()


@contextmanager
def frozen() -> Iterator[Callable[[], None]]:
    """Everything alive now outlives the work inside: frozen, the garbage collector does
    not walk it again meanwhile (one full pass over a fresh interpreter's objects costs
    as much as tens of thousands of events; over a world or a finished run of 1,024
    replicas, as much as its plan or its result tables). Yields `keep`: freeze what
    lives now too, once it is known to outlive the rest (a world built, a run done).
    Not when someone else has frozen objects: unfreezing would undo theirs. Scopes on
    several threads count as one: the last to end unfreezes."""
    global _frozen_depth
    with _frozen_lock:
        ours = _frozen_depth > 0 or not gc.get_freeze_count()
        if ours:
            if not _frozen_depth:
                gc.freeze()
            _frozen_depth += 1
    if not ours:
        yield _nothing
        return
    try:
        yield gc.freeze
    finally:
        with _frozen_lock:
            _frozen_depth -= 1
            if not _frozen_depth:
                gc.unfreeze()


def _nothing() -> None:
    pass


@dataclass(frozen=True)
class Energy:
    """Joules a device has used so far, by where they went."""

    idle: float
    compute: float
    radio: float

    @property
    def total(self) -> float:
        return self.idle + self.compute + self.radio


class Simulator(PoolChanges):
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
        self.units: dict[tuple[str, str], Unit] = {
            (d, u): Unit(d, u, spec) for d, spec in self.devices.items() for u in spec.units}
        self.gone: dict[str, tuple[float, str]] = {}
        self.leaves = 0
        self.memory = Memory(self.env, self.devices, self.log, self.gone)
        self.memory_used, self.memory_peak = self.memory.used, self.memory.peak
        # The memory calls, bound once (no wrapper on the path of every block).
        self.allocate, self.free = self.memory.allocate, self.memory.free
        self.reserve, self.release = self.memory.reserve, self.memory.release
        self._lanes: dict[tuple[str, str | None, str], Unit] = {}  # see `_lane`
        self._departures = {d: self._departure() for d in self.devices}
        self._arrivals = {d: self.env.event() for d in self.devices}
        self._away = dict.fromkeys(self.devices, 0.0)  # seconds out of the pool before its last join
        self._running = 0  # kernels on units right now, over the whole pool
        self._tickets = 0  # handed out by `ticket`
        self._batteries = [d for d, spec in self.devices.items() if spec.battery is not None]
        self._version = dict.fromkeys(self._batteries, 0)
        self._watching = False
        self._daemons = 0  # battery checks and changes scheduled; alone they do not keep a run going
        self._revivals: dict[str, int] = {}  # see `at`
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
        job = new(Job)  # every field set here (or in _start), as an __init__ would
        job.env, job.sim, job.unit, job.flops, job.nbytes = self.env, self, u, flops, nbytes
        job.dtype, job.fn, job.args, job.label = dtype, fn, args, label
        job.request, job.step, job.priority, job.keep = request, step, priority, keep
        if u.running is None and (u.held is None or u.held == priority):  # a free unit
            u.held = None
            job.callbacks = [finished]
            self._start(job)
        else:  # pending until `finished` of the kernel before it starts it
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

    def _lane(self, device: str, unit: str | None, dtype: str) -> Unit:
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

    def _start(self, job: Job) -> None:
        """Put `job` on its (free) unit and schedule it, as simpy schedules a Timeout, for
        its end, when its first callback is `finished`."""
        u, env = job.unit, self.env
        now = env._now
        u.running, job.t_start = job, now
        self._running += 1
        rate, bandwidth, overhead = u.rates[job.dtype]  # filled by `_lane`
        load = u.load if u.load is not None else background_at(u.spec, now)
        duration = roofline(rate, bandwidth, overhead, load, job.flops, job.nbytes)
        if u.speed != 1.0:
            duration /= u.speed
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
            tx, rx = self.flows.radios.time(device, now)
            radio = spec.radio_tx_power * tx + spec.radio_rx_power * rx
        return Energy(spec.idle_power * (now - self._away[device]), compute, radio)

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

    # -- running -----------------------------------------------------------------

    @property
    def now(self) -> float:
        return self.env.now

    def all_of(self, events: list[simpy.Event]) -> simpy.Event:
        """An event that succeeds with the list of `events`' values (in their order) when
        all of them have happened, as `env.all_of` would at the same point."""
        return AllOf(self.env, events)

    def process(self, generator: Any) -> simpy.Process:
        """Start a plain generator function's process on the clock."""
        return self.env.process(generator)

    def run(self, until: float | simpy.Event | None = None) -> None:
        """Advance the clock until `until` (a time, or an event: until it has happened), or
        until only daemons are left (`at`): then an event not yet happened is a
        RuntimeError, as simpy raises when nothing is left to run.

        Everything alive when the run starts (the world, the interpreter's modules)
        outlives it: `frozen` while the run makes and drops its events.
        """
        with frozen():
            waits = isinstance(until, simpy.Event)
            if (until is not None and not (waits and self._daemons)
                    or not (self._batteries or self._daemons)):
                self.env.run(until=until)
                return
            # simpy has no public queue length; daemons must not extend a run.
            queue = self.env._queue
            while ((not waits or until.callbacks is not None)
                   and (len(queue) > self._daemons or self._revived())):
                self.env.step()
            if waits and until.callbacks is not None:
                raise RuntimeError(f'No scheduled events left but "until" event was not '
                                   f'triggered: {until}')


