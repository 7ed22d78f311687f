"""The pool changes under the Simulator: devices leave and join, units slow down, links
fade, and daemons (callbacks at set times that keep no run going by themselves) drive it.

A mixin of `Simulator` (sim/engine.py), by idea: the engine runs work, this changes what
it runs on. `sim.changes` plays a scenario's changes through these calls.
"""
from __future__ import annotations

import heapq
from collections.abc import Callable

import simpy
from simpy.events import NORMAL

from simdl.errors import DeviceGone, PlanError
from simdl.hw.devices import DeviceSpec
from simdl.sim.flows import Flows
from simdl.sim.kernel import Job, Unit, fail
from simdl.sim.memory import Memory
from simdl.sim.recorder import EventLog


class PoolChanges:
    """Presence, speed and link changes, and daemons, on the Simulator's state (the
    attributes below are set by `Simulator.__init__`)."""

    env: simpy.Environment
    devices: dict[str, DeviceSpec]
    units: dict[tuple[str, str], Unit]
    gone: dict[str, tuple[float, str]]
    leaves: int  # how many times a device has left so far: what changed since, if not this
    memory: Memory
    log: EventLog
    flows: Flows | None
    _lanes: dict[tuple[str, str | None, str], Unit]
    _departures: dict[str, simpy.Event]
    _arrivals: dict[str, simpy.Event]
    _away: dict[str, float]
    _running: int
    _daemons: int
    _revivals: dict[str, int]
    _watching: bool
    _version: dict[str, int]

    def departure(self, device: str) -> simpy.Event:
        """An event that succeeds (value: the reason) when `device` next leaves the pool
        (while it is gone: the one that marked its last departure)."""
        return self._departures[device]

    def arrival(self, device: str) -> simpy.Event:
        """An event that succeeds (value: the reason) when `device` next joins the pool."""
        return self._arrivals[device]

    def _departure(self) -> simpy.Event:
        event = self.env.event()
        event.callbacks.append(self.memory.regrant)  # a departed device holds nobody back
        return event

    def join(self, device: str, why: str) -> None:
        """Bring a departed `device` back (no-op if it is present): its units are free and
        its memory empty -- what it held outside reservations was lost when it left and is
        given back now, one `alloc` row (reservations are given back by their owners, who
        heard DeviceGone). A `join` row; `departure` is re-armed and `arrival` fires. The
        time away costs it no idle energy."""
        if device not in self.devices:
            raise self._no_unit(device, None)
        if device not in self.gone:
            return
        now = self.env.now
        left_at, _ = self.gone.pop(device)
        self._away[device] += now - left_at
        memory = self.memory
        plain = memory.plain(device)  # what nobody will give back
        if plain:
            memory.free(device, plain, "lost at leave")
        self.log.add(now, now, "join", device, "", why)
        self._departures[device] = self._departure()
        arrival, self._arrivals[device] = self._arrivals[device], self.env.event()
        arrival.succeed(why)
        if self._watching and device in self._version:  # its battery is watched again
            self._version[device] += 1
            self._check(device, self._version[device])

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
        self.leaves += 1
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
                fail(self.env, job, error)
        if self.flows is not None:
            self.flows.abort(device, error)  # their `lost` rows are written as they fail
        self._departures[device].succeed(why)

    def at(self, when: float, fn: Callable[[], None], revives: str | None = None) -> None:
        """Call `fn()` at time `when` (>= now, exactly) as a daemon: like a battery check,
        it does not keep a run going by itself, unless it `revives` what the run waits
        for: a device's name (it joins, and someone waits for its `arrival`) or "" (a
        link changes, and a flow is stalled on a link at bandwidth 0)."""
        if not when >= self.env.now:
            raise PlanError("at", when, f"a time >= now ({self.env.now!r} s)")
        self._daemons += 1
        if revives is not None:
            self._revivals[revives] = self._revivals.get(revives, 0) + 1
        event = self.env.event()
        event._ok, event._value = True, None  # triggered, due at `when` (as `_start` does)
        event.callbacks.append(lambda _e: self._due(fn, revives))
        heapq.heappush(self.env._queue, (when, NORMAL, next(self.env._eid), event))

    def _due(self, fn: Callable[[], None], revives: str | None) -> None:
        self._daemons -= 1
        if revives is not None:
            self._revivals[revives] -= 1
        fn()

    def _revived(self) -> bool:
        """With only daemons scheduled: whether one of them revives what someone waits
        for (`at`), so the run goes on."""
        if not self.env._queue or not self._revivals:
            return False
        if self._revivals.get("") and self.flows is not None and self.flows.stalled:
            return True
        return any(self._revivals.get(d) and self._arrivals[d].callbacks for d in self.gone)

    def set_speed(self, device: str, unit: str | None, factor: float) -> None:
        """`unit`'s (None: every unit's) rate times `factor` (> 0) from now on, as a spike
        of background load would make it. A running kernel's remaining work goes at the
        new rate: it ends at now + (old end - now) x old factor / new factor."""
        if device not in self.devices or (unit is not None and (device, unit) not in self.units):
            raise self._no_unit(device, unit)
        if not factor > 0:
            raise PlanError("speed", factor, "a factor on a unit's rate must be > 0")
        now = self.env.now
        for name in self.devices[device].units if unit is None else (unit,):
            u = self.units[device, name]
            old, u.speed = u.speed, factor
            self.log.add(now, now, "speed", device, name, f"x{factor:g}")
            if u.running is not None and factor != old:
                ratio = old / factor
                self._reschedule(u.running, lambda end, r=ratio: now + (end - now) * r)

    def _reschedule(self, job: Job, end: Callable[[float], float]) -> None:
        """Move a running kernel's end (scheduled in simpy's queue, which has no public
        way to cancel) from t to end(t): its entry is taken out and pushed again."""
        queue = self.env._queue
        i = next(i for i, entry in enumerate(queue) if entry[3] is job)
        t = queue[i][0]
        queue[i] = queue[-1]
        queue.pop()
        heapq.heapify(queue)
        heapq.heappush(queue, (end(t), NORMAL, next(self.env._eid), job))

    def set_link(self, link: str, bandwidth: float | None = None,
                 loss: float | None = None) -> None:
        """`link`'s bandwidth factor and loss from now on (`Flows.set_link`): flows in
        progress are re-solved (max-min) at once. A `link` row (resource: the link)."""
        if self.flows is None:
            raise PlanError("network", None, "a link change needs a network; give the pool one")
        self.flows.set_link(link, bandwidth, loss)
        said = ([] if bandwidth is None else [f"bandwidth x{bandwidth:g}"]) + (
            [] if loss is None else [f"loss {loss:g}"])
        now = self.env.now
        self.log.add(now, now, "link", "", link, ", ".join(said))
