"""Training when workers leave and return: who takes part, how long a step waits for one,
and what a departure cost.

A departure reaches a protocol in two ways: the work it waited for fails with
DeviceGone (`survive` turns that into a value), and `Quorum` stops waiting for a
member whose device left or that a timeout gave up on. `Roster` keeps which workers
take part and admits a returned one only after it fetched the current weights (a real
transfer). `lost_work` sums the engine's `lost` rows. With nothing leaving, none of
this adds an event: runs without churn keep their event order bit for bit.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Generator, Hashable, Mapping
from typing import Any

import simpy
from simpy.events import PENDING

from simdl.errors import DeviceGone
from simdl.sim.engine import Simulator

Gen = Generator[Any, Any, Any]

def close_step(job: Any, step: int, tried: int, done: list[Any], tallies: Mapping[int, Any]
               ) -> None:
    """Record a synchronous step that `tried` workers began and the workers `done`
    finished: how many reports close it, the workers dropped, a step lost by all, and
    each finisher's report."""
    extra = job.metrics.extra
    if len(done) != len(job.workers):
        job.expected[step] = len(done)
    if tried != len(done):
        extra["worker_steps_dropped"] = extra.get("worker_steps_dropped", 0) + tried - len(done)
    if not done:
        extra["steps_lost"] = extra.get("steps_lost", 0) + 1
    for w in done:
        job.report(step, w, tallies[w.rank])


def survive(work: Gen) -> Gen:
    """Run `work` inline (no extra event); its value, or the DeviceGone that ended it."""
    try:
        return (yield from work)
    except DeviceGone as gone:
        return gone


def lost(value: Any) -> bool:
    """Whether a survived work's value says a device it needed left."""
    return isinstance(value, DeviceGone)


def together(sim: Simulator, works: list[Gen]) -> Gen:
    """Run `works` side by side (as processes) until all have ended; their values in
    order, or the first one's DeviceGone raised once all have ended (none is left to
    fail with nobody waiting)."""
    procs = [sim.process(survive(w)) for w in works]
    yield sim.env.all_of(procs)
    values = [p.value for p in procs]
    for v in values:
        if lost(v):
            raise v
    return values


class Quorum(simpy.Event):
    """Succeeds with {key: value} of the members that arrived, once every member has
    arrived, left (its device's departure), failed (a lost transfer) or been given up
    on (`timeout` s after the first arrival; None waits as long as it takes). Built as
    simpy's AllOf: with every member arriving it is scheduled at the same point."""

    def __init__(self, sim: Simulator, events: Mapping[Hashable, simpy.Event],
                 devices: Mapping[Hashable, str], timeout: float | None = None):
        super().__init__(sim.env)
        self.sim, self.timeout = sim, timeout
        self.got: dict[Hashable, Any] = {}
        self.dropped: list[Hashable] = []
        self._open = dict(events)
        self._watch: list[tuple[simpy.Event, Callable[[simpy.Event], None]]] = []
        self._timer: simpy.Event | None = None
        for key, event in events.items():
            if event.callbacks is None:  # processed already
                self._arrived(key, event)
            else:
                event.callbacks.append(lambda ev, key=key: self._arrived(key, ev))
        for key in events:
            if key in self._open:
                departure = sim.departure(devices[key])
                if departure.callbacks is None or devices[key] in sim.gone:
                    self._drop(key)
                else:
                    cb = lambda _ev, key=key: self._drop(key)
                    departure.callbacks.append(cb)
                    self._watch.append((departure, cb))
        self._settle()

    def _arrived(self, key: Hashable, event: simpy.Event) -> None:
        if self._value is not PENDING or key not in self._open:
            return
        del self._open[key]
        if event._ok:
            self.got[key] = event._value
            if self.timeout is not None and self._timer is None and self._open:
                self._timer = self.sim.env.timeout(self.timeout)
                self._timer.callbacks.append(lambda _t: self._give_up())
        else:
            event.defused = True
            self.dropped.append(key)
        self._settle()

    def _drop(self, key: Hashable) -> None:
        if self._value is PENDING and self._open.pop(key, None) is not None:
            self.dropped.append(key)
            self._settle()

    def _give_up(self) -> None:
        for key in list(self._open):
            self._drop(key)

    def _settle(self) -> None:
        if self._value is PENDING and not self._open:
            for departure, cb in self._watch:
                if departure.callbacks is not None and cb in departure.callbacks:
                    departure.callbacks.remove(cb)
            self.succeed(self.got)


class Roster:
    """Which workers take part: a worker whose device left is out until it returns
    (`Simulator.arrival`, when the engine has it) and has fetched the current weights and
    optimizer state from a member still in (`admit`, a real transfer that the step waits
    for). `away` holds the ranks out; `back` those returned and not yet admitted."""

    def __init__(self, job: Any):
        self.job, self.sim = job, job.sim
        self.away: set[int] = set()
        self.back: list[Any] = []
        for w in job.workers:
            self._watch(w)

    def _watch(self, w: Any) -> None:
        """Hear w's next departure (a device that leaves and returns within one step
        is out all the same: it missed an update)."""
        self.sim.departure(w.device).callbacks.append(lambda _ev: self.leave(w))

    def present(self, w: Any) -> bool:
        """Whether w takes part now."""
        if w.rank not in self.away and w.device in self.sim.gone:
            self.leave(w)  # gone this instant; its departure's callbacks have not run yet
        return w.rank not in self.away

    def members(self) -> list[Any]:
        """The workers taking part now, in rank order."""
        return [w for w in self.job.workers if self.present(w)]

    def leave(self, w: Any) -> None:
        """w is out; it is admitted again after its device returns."""
        if w.rank in self.away:
            return
        self.away.add(w.rank)
        self.sim.arrival(w.device).callbacks.append(lambda _ev: self.back.append(w))

    def admit(self, step: int, state: bool = True) -> Gen:
        """Returned workers fetch the weights (and optimizer state when `state`) from the
        first member, all at once; each that arrives is in again with a copy of that
        member's replica. Nothing moves (no event) when nobody returned."""
        if not self.back:
            return
        job, sim = self.job, self.sim
        back, self.back = self.back, []
        members = self.members()
        if not members:
            self.back = back
            return
        donor = members[0]
        nbytes = job.chain.param_bytes() + (donor.opt.slots * job.trainable if state else 0)
        moves = {w.rank: job.net.send(donor.device, w.device, nbytes, "rejoin weights", step)
                 for w in back if w.device not in sim.gone}
        got = yield Quorum(sim, moves, {w.rank: w.device for w in back})
        for w in back:
            if w.rank in got and donor.device not in sim.gone:
                job.hold(w, state)
                if job.real:
                    _copy_replica(job, donor, w)
                self.away.discard(w.rank)
                self._watch(w)
                extra = job.metrics.extra
                extra["rejoins"] = extra.get("rejoins", 0) + 1
            elif w.device not in sim.gone:
                self.back.append(w)  # the donor left: try again next step


def _copy_replica(job: Any, donor: Any, w: Any) -> None:
    """w's model, gradients' views and optimizer become a copy of donor's."""
    w.chain = copy.deepcopy(donor.chain)
    every, grads = w.chain.params(), w.chain.grads()
    w.params = {n: every[n] for n in job.names if n in every}
    w.grads = {n: grads[n] for n in job.names if n in grads}
    w.opt = copy.deepcopy(donor.opt)


def lost_work(sim: Simulator) -> dict[str, float]:
    """Work the departures threw away, from the engine's `lost` rows: kernels' FLOPs,
    unit-seconds and joules (the unit's active power over its lost run) and the bytes
    of transfers cut short; and the departures counted."""
    flops = seconds = joules = nbytes = 0.0
    leaves = 0
    for row in sim.log.rows:
        kind = row[2]
        if kind == "leave":
            leaves += 1
        elif kind == "lost":
            device, resource = row[3], row[4]
            units = sim.devices[device].units if device in sim.devices else {}
            if resource in units:
                span = row[1] - row[0]
                flops += row[6]
                seconds += span
                joules += span * units[resource].active_power
            else:
                nbytes += row[7]
    return {"departures": leaves, "lost_flops": flops, "lost_s": seconds,
            "lost_J": joules, "lost_bytes": nbytes}

