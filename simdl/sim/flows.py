"""Active flows on a simpy clock: latency, then max-min shared bandwidth (SimGrid's flow model),
plain or weighted by route latency (`sharing: rtt`, sim/sharing.py).

Owns the flow state (numpy arrays with slot reuse), the one pending wake-up, and the byte
and busy-time counters; counts flows on and off the air in `radios` (sim/radios.py). Knows
routes and bytes from hw/network.py and rates from hw/maxmin.py; knows nothing of layers,
plans or energy (the engine reads radio time).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import simpy

from simdl.errors import PlanError
from simdl.hw.maxmin import max_min_few, max_min_hops
from simdl.hw.network import Network, Route
from simdl.sim.radios import Radios
from simdl.sim.sharing import weighted_few, weighted_hops

#: A flow is done when less than this fraction of its bytes is left: elapsed time is charged
#: as rate x (t - t_last), and that float product rarely lands on the exact size.
DONE_RTOL = 1e-9
#: A recompute re-solves only the flows that share a resource, directly or through other
#: flows, with one that started or ended; when those are more than this many, it solves
#: every active flow with numpy instead (one call, whatever the count). Up to this many,
#: it uses the plain-Python solver, which costs less than numpy's fixed cost per call.
FEW = 16


@dataclass(frozen=True)
class Flow:
    """One finished transfer. t_start is when its bandwidth phase began (after latency and
    overhead); t_end when its last byte arrived."""

    src: str
    dst: str
    nbytes: float
    t_request: float
    t_start: float
    t_end: float
    route: Route
    label: str = ""
    tags: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Path:
    route: Route
    index: np.ndarray            # resource indices in route order, with multiplicity
    crossings: tuple[int, ...]   # the same, as Python ints for the byte counters
    unique: tuple[int, ...]      # each resource once, for the busy-time counters
    tx: tuple[str, ...]          # nodes whose radio sends: source and relaying devices
    rx: tuple[str, ...]          # nodes whose radio receives: destination and relays
    penalty: float               # rtt sharing: its share goes as 1 / this (route latency)


class Flows:
    """Transfers over `network` on `env`. Rates are max-min fair over every resource the
    active flows cross (weighted by 1 / route latency when `network.sharing` is "rtt", as
    hw.topologies.calibrated sets it; plain otherwise), recomputed (once per instant)
    whenever a flow starts or ends.
    A flow's max-min rate depends only on the flows connected to it through shared
    resources, so a recompute solves that group alone (`FEW`): in a pool of many
    separate links the cost of a start or end does not grow with the pool.

    `on_record(flow)` is called as each transfer ends; `on_change(device)` (set by the
    engine) after a device's radio comes on or goes off (`radios.state`), so radio energy
    can be charged up to now.
    Wake-ups that went stale stay in simpy's queue (a timeout cannot be cancelled) and do
    nothing when they fire, but they do advance env.now: measure makespans from records.
    """

    def __init__(self, env: simpy.Environment, network: Network,
                 on_record: Callable[[Flow], None] | None = None):
        self.env, self.network, self.on_record = env, network, on_record
        self.on_change: Callable[[str], None] | None = None
        self.recomputes = 0
        self._rtt = network.sharing == "rtt"
        self._index = {name: i for i, name in enumerate(network.capacity)}
        self._capacity = np.fromiter(network.capacity.values(), dtype=np.float64)
        self._nominal = self._capacity.copy()               # before `set_link`'s factors
        self._link: dict[int, tuple[float, float]] = {}    # resource -> (factor, loss) set
        n_res = len(self._index)
        self._bytes, self._busy, self._since = [0.0] * n_res, [0.0] * n_res, [0.0] * n_res
        self._on: list[dict[int, None]] = [{} for _ in range(n_res)]  # resource -> its flows' slots
        self._changed: dict[int, None] = {}                # resources that gained or lost a flow
        self._started: list[int] = []                      # slots begun since the last recompute
        self.radios = Radios(env, network.graph.nodes)
        self._paths: dict[tuple[str, str], _Path] = {}
        self._waiting: dict[int, tuple] = {}                # transfer id -> latency phase
        self._next_id = 0
        # Bandwidth phase: one slot per active flow; freed slots are reused.
        self._remaining = np.zeros(16)
        self._size = np.zeros(16)
        self._rate = np.zeros(16)                            # 0 in free slots
        self._penalty = np.ones(16)                          # _Path.penalty per slot
        self._live = np.zeros(16, dtype=bool)
        self._none = n_res                                  # "no hop" sentinel in _hops
        self._hops = np.full((4, 16), n_res, dtype=np.intp)  # (L, slots) resource indices
        self._info: list[tuple | None] = [None] * 16
        self._free: list[int] = []
        self._high = 0                                      # slots ever used
        self._slots: set[int] = set()                       # of flows in their bandwidth phase
        self._t = env.now                                   # remaining bytes are as of _t
        self._version = 0                                   # of the one valid wake-up
        self._pending = False                               # a recompute is queued for now
        self.stalled = False    # flows are live, all at rate 0 (a link at bandwidth 0)

    def transfer(self, src: str, dst: str, nbytes: float, label: str = "",
                 **tags: Any) -> simpy.Event:
        """An event that succeeds with the Flow when the last byte reaches dst. src == dst
        costs nothing; a 0-byte transfer costs only latency and overhead."""
        if not nbytes >= 0:
            raise PlanError(f"transfer {src} -> {dst}.nbytes", nbytes, "must be >= 0 bytes")
        path = self._path(src, dst)
        event, now = self.env.event(), float(self.env.now)
        if src == dst:
            self._done(event, Flow(src, dst, float(nbytes), now, now, now, path.route, label, tags))
            return event
        key = self._next_id
        self._next_id += 1
        self._waiting[key] = (event, src, dst, float(nbytes), now, path, label, tags)
        delay = path.route.latency + self.network.overhead
        if delay > 0:
            self.env.timeout(delay, key).callbacks.append(self._on_latency)
        else:
            self._begin(key)
        return event

    def _path(self, src: str, dst: str) -> _Path:
        found = self._paths.get((src, dst))
        if found is None:
            route = self.network.route(src, dst)
            index = [self._index[r] for r in route.resources]
            kind = self.network.graph.nodes
            relays = tuple(n for n in route.nodes[1:-1] if kind[n]["kind"] == "device")
            found = self._paths[(src, dst)] = _Path(
                route, np.array(index, dtype=np.intp), tuple(index), tuple(dict.fromkeys(index)),
                (src, *relays), (dst, *relays), route.latency if self._rtt else 1.0)
        return found

    def _on_latency(self, timeout: simpy.Event) -> None:
        self._begin(timeout.value)

    def _begin(self, key: int) -> None:
        item = self._waiting.pop(key, None)
        if item is None:                                    # aborted during its latency
            return
        event, src, dst, nbytes, t_request, path, label, tags = item
        now = float(self.env.now)
        if nbytes == 0:
            self._done(event, Flow(src, dst, 0.0, t_request, now, now, path.route, label, tags))
            return
        slot = self._slot(len(path.crossings))
        self._hops[:, slot] = self._none
        self._hops[:len(path.crossings), slot] = path.index
        self._remaining[slot] = self._size[slot] = nbytes
        self._penalty[slot] = path.penalty
        self._rate[slot] = 0.0
        self._live[slot] = True
        self._slots.add(slot)
        self._info[slot] = (key, event, src, dst, nbytes, t_request, now, path, label, tags)
        self._started.append(slot)
        for r in path.unique:
            on = self._on[r]
            if not on:
                self._since[r] = now
            on[slot] = None
        self._radio(path, +1, now)
        self._touch()

    def _slot(self, width: int) -> int:
        if width > len(self._hops):
            more = np.full((width - len(self._hops), len(self._rate)), self._none, dtype=np.intp)
            self._hops = np.vstack([self._hops, more])
        if self._free:
            return self._free.pop()
        if self._high == len(self._rate):
            n = 2 * len(self._rate)
            for name in ("_remaining", "_size", "_rate", "_penalty", "_live"):
                old = getattr(self, name)
                new = np.zeros(n, dtype=old.dtype)
                new[:len(old)] = old
                setattr(self, name, new)
            self._hops = np.hstack([self._hops, np.full_like(self._hops, self._none)])
            self._info.extend([None] * (n - len(self._info)))
        self._high += 1
        return self._high - 1

    def _touch(self) -> None:
        # Coalesce every start and end at this instant into one recompute, queued behind
        # the events already due now.
        if not self._pending:
            self._pending = True
            self.env.timeout(0.0).callbacks.append(self._on_pending)

    def _on_pending(self, _: simpy.Event) -> None:
        self._pending = False
        self._recompute()

    def _wake(self, timeout: simpy.Event) -> None:
        if timeout.value == self._version and not self._pending:
            self._recompute()

    def _advance(self, now: float) -> None:
        """Charge the time since the last change at the rates that held during it."""
        dt = now - self._t
        if dt > 0:
            high = self._high
            self._remaining[:high] -= self._rate[:high] * dt
        self._t = now

    def _recompute(self) -> None:
        """Charge the time since the last change, end the flows that are done, re-solve
        the rates the changes touch, and schedule a wake-up at the next end. Up to FEW
        flows it runs in plain Python (numpy's fixed cost per call outweighs the work),
        else vectorised; both do the same float operations in the same order."""
        now = self.env.now
        self._version += 1
        self.stalled = False
        live = self._settle_few(now) if len(self._slots) <= FEW else self._settle(now)
        group = self._group()
        if not len(live):
            return
        if group is None:
            at = np.asarray(live)
            hops = np.take(self._hops, at, axis=1)
            self._rate[at] = (weighted_hops(hops, self._capacity, self._penalty[at])
                              if self._rtt else max_min_hops(hops, self._capacity))
        elif group:
            paths = [self._info[s][7] for s in group]
            routes = [p.crossings for p in paths]
            self._rate[group] = (weighted_few(routes, self._capacity, [p.penalty for p in paths])
                                 if self._rtt else max_min_few(routes, self._capacity))
        self.recomputes += 1
        wait = self._next_end(live)
        if wait is not None:
            self.env.timeout(wait, self._version).callbacks.append(self._wake)

    def _settle(self, now: float) -> np.ndarray:
        """Charge the time to `now`, end every flow that is done (less than DONE_RTOL of
        its bytes left, or less than one clock tick away) in transfer order; the live
        slots, ascending."""
        self._advance(now)
        live = np.flatnonzero(self._live[:self._high])
        left = self._remaining[live]
        done = left <= np.maximum(DONE_RTOL * self._size[live], self._rate[live] * np.spacing(now))
        if done.any():
            for slot in sorted(live[done].tolist(), key=lambda s: self._info[s][0]):
                self._end(slot, now)
            live = np.flatnonzero(self._live[:self._high])   # callbacks may have changed it
        return live

    def _settle_few(self, now: float) -> list[int]:
        """`_settle` one flow at a time: the same products, differences and comparisons
        (math.ulp is np.spacing for a clock >= 0)."""
        remaining, rate, size = self._remaining, self._rate, self._size
        dt = now - self._t
        self._t = now
        tick = math.ulp(now)
        done = []
        for slot in sorted(self._slots):
            r = remaining.item(slot)
            if dt > 0:
                r -= rate.item(slot) * dt
                remaining[slot] = r
            if r <= max(DONE_RTOL * size.item(slot), rate.item(slot) * tick):
                done.append(slot)
        for slot in sorted(done, key=lambda s: self._info[s][0]):
            self._end(slot, now)
        return sorted(self._slots)

    def _next_end(self, live: np.ndarray | list[int]) -> float | None:
        """Seconds to the first end among `live` at the current rates; None when every one
        is stalled (a link at bandwidth 0 holds its flows until it changes again)."""
        if len(live) > FEW:
            left, rate = self._remaining[live], self._rate[live]
            if not rate.all():
                moving = rate > 0
                if not moving.any():
                    self.stalled = True
                    return None
                left, rate = left[moving], rate[moving]
            return float((left / rate).min())
        remaining, rates = self._remaining, self._rate
        waits = [remaining.item(s) / r for s in live if (r := rates.item(s)) > 0]
        self.stalled = not waits
        return min(waits, default=None)

    def _group(self) -> list[int] | None:
        """The active slots whose rates the starts and ends since the last recompute can
        change, in slot order (as the solver saw them among all: the same bits), or None
        when they are more than FEW. Every other flow keeps its rate: its max-min share
        depends only on the flows it is connected to through shared resources. Consumes
        the record of what changed."""
        group: dict[int, None] = {}
        todo, started = list(self._changed), self._started
        self._changed, self._started = {}, []
        for slot in started:
            if self._live[slot] and slot not in group:
                if len(group) == FEW:
                    return None
                group[slot] = None
                todo.extend(self._info[slot][7].unique)
        seen: set[int] = set()
        while todo:
            r = todo.pop()
            if r in seen:
                continue
            seen.add(r)
            if len(self._on[r]) > FEW:    # a busy shared resource: no need to walk it
                return None
            for slot in self._on[r]:
                if slot not in group:
                    if len(group) == FEW:
                        return None
                    group[slot] = None
                    todo.extend(self._info[slot][7].unique)
        return sorted(group)

    def set_link(self, link: str, bandwidth: float | None = None,
                 loss: float | None = None) -> tuple[str, ...]:
        """From now on `link`'s resources (`Network.resources`) carry `bandwidth` (a
        factor, >= 0; None: as before) times their capacity, times 1 - `loss` (the share
        of packets lost, in [0, 1), each resent until it arrives; None: as before).
        Flows crossing them are re-solved at this instant. Returns the resources."""
        if bandwidth is not None and not 0 <= bandwidth < float("inf"):
            raise PlanError(f"link {link}.bandwidth", bandwidth, "a finite factor >= 0")
        if loss is not None and not 0 <= loss < 1:
            raise PlanError(f"link {link}.loss", loss, "a share of packets lost in [0, 1)")
        names = self.network.resources(link)
        for name in names:
            r = self._index[name]
            factor, lost = self._link.get(r, (1.0, 0.0))
            factor = factor if bandwidth is None else bandwidth
            lost = lost if loss is None else loss
            self._link[r] = (factor, lost)
            self._capacity[r] = self._nominal[r] * factor * (1.0 - lost)
            if self._on[r]:
                self._changed[r] = None
                self._touch()
        return names

    def _end(self, slot: int, now: float, moved: float | None = None) -> Flow:
        """Free the slot and count its bytes; moved=None means all of them arrived."""
        _, event, src, dst, nbytes, t_request, t_start, path, label, tags = self._info[slot]
        self._info[slot] = None
        self._live[slot] = False
        self._slots.discard(slot)
        self._rate[slot] = 0.0
        self._free.append(slot)
        count = nbytes if moved is None else moved
        for r in path.crossings:
            self._bytes[r] += count
        for r in path.unique:
            on = self._on[r]
            del on[slot]
            self._changed[r] = None
            if not on:
                self._busy[r] += now - self._since[r]
        self._radio(path, -1, now)
        flow = Flow(src, dst, count, t_request, t_start, now, path.route, label, tags)
        if moved is None:
            self._done(event, flow)
        return flow

    def _radio(self, path: _Path, delta: int, now: float) -> None:
        flipped = self.radios.count(path.tx, path.rx, delta, now)
        if self.on_change is not None:
            for node in flipped:
                self.on_change(node)

    def _done(self, event: simpy.Event, flow: Flow) -> None:
        if self.on_record is not None:
            self.on_record(flow)
        event.succeed(flow)

    def abort(self, device: str, exc: BaseException) -> list[Flow]:
        """Fail every flow from, to or through `device` with `exc` (whoever waits on them
        must handle it). Returns them as Flows ending now, nbytes = bytes delivered so far;
        those bytes stay in the counters. on_record is not called for them."""
        now = self.env.now
        self._advance(now)
        lost = []
        for key, item in list(self._waiting.items()):
            event, src, dst, _, t_request, path, label, tags = item
            if device in path.route.nodes:
                del self._waiting[key]
                lost.append((key, event, Flow(src, dst, 0.0, t_request, now, now, path.route,
                                              label, tags)))
        for slot in np.flatnonzero(self._live[:self._high]).tolist():
            key, event, nbytes, path = (self._info[slot][i] for i in (0, 1, 4, 7))
            if device in path.route.nodes:
                moved = min(nbytes, max(0.0, nbytes - float(self._remaining[slot])))
                lost.append((key, event, self._end(slot, now, moved)))
        lost.sort(key=lambda item: item[0])
        for _, event, _ in lost:
            event.fail(exc)
        if lost:
            self._touch()
        return [flow for *_, flow in lost]

    @property
    def active(self) -> int:
        """Flows in their bandwidth phase now."""
        return len(self._slots)

    def link_stats(self) -> list[dict[str, Any]]:
        """Per resource, in network order: bytes that crossed it (twice for a medium crossed
        twice) and the time it carried at least one flow, up to env.now."""
        now = self.env.now
        return [{"resource": name, "bytes": self._bytes[i],
                 "busy_time": self._busy[i] + (now - self._since[i] if self._on[i] else 0.0)}
                for name, i in self._index.items()]
