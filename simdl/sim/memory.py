"""Memory per device: what is held, its peak, and admission of work that must wait for it.

`used` is what devices hold. Reservations promise bytes on top of it: a device's
committed bytes are what it holds outside reservations plus what it has promised,
and nothing, reserved or plain, is granted beyond its capacity. The Simulator owns
one Memory and hands out its calls (`sim.allocate`, `sim.reserve`, ...).
"""
from __future__ import annotations

from collections.abc import Container, Iterable, Mapping

import simpy

from simdl.errors import CapacityError
from simdl.hw.devices import DeviceSpec
from simdl.sim.recorder import EventLog


class Reservation:
    """Bytes promised to one piece of work on several devices at once: its peak on each,
    like the tensor arena a mobile runtime allocates per inference. Granted all at once
    or not at all, so work that runs never waits for more memory (no hold-and-wait)."""

    __slots__ = ("shares", "drawn", "label", "request", "step", "wait", "asked", "short", "log")

    def __init__(self, shares: dict[str, float], label: str, request: int, step: int,
                 log: EventLog):
        self.shares = shares                     # device -> bytes promised (until released)
        self.drawn = dict.fromkeys(shares, 0.0)  # device -> bytes of the share held right now
        self.label, self.request, self.step = label, request, step
        self.wait: simpy.Event | None = None     # what to yield while it waits; None: granted
        self.asked = -1.0                        # when it began to wait
        self.short = ""                          # the first device it waited for
        self.log = log                           # where its `memwait` row goes (its job's)

    @property
    def granted(self) -> bool:
        return self.wait is None or self.wait.triggered



class Memory:
    """Every device's memory on one clock; a departed device (in `gone`) holds nobody back."""

    def __init__(self, env: simpy.Environment, devices: Mapping[str, DeviceSpec], log: EventLog,
                 gone: Mapping[str, object]):
        self.env, self.devices, self.log, self.gone = env, devices, log, gone
        self.used = dict.fromkeys(devices, 0.0)
        self.peak = dict.fromkeys(devices, 0.0)
        self._reserved = dict.fromkeys(devices, 0.0)  # promised to granted reservations
        self._drawn = dict.fromkeys(devices, 0.0)  # of which held now (in `used` too)
        self._waiting: list[Reservation] = []  # reservations not granted yet, oldest first
        self._queued: dict[str, int] = {}  # device -> how many of them name it (if any)

    def allocate(self, device: str, nbytes: float, label: str = "", *,
                 request: int = -1, step: int = -1, under: Reservation | None = None) -> None:
        """Hold `nbytes` on `device`: out of `under`'s share when given (admission made
        room for it), else out of what is neither held nor promised; more raises
        CapacityError."""
        if under is None:
            capacity = self.devices[device].memory
            committed = self._committed(device)
            if committed + nbytes > capacity:
                raise CapacityError(device, nbytes, capacity - committed, capacity, label)
        else:
            share, drawn = under.shares.get(device, 0.0), under.drawn.get(device, 0.0)
            if drawn + nbytes > share:  # the reserved peak was computed wrong: a bug
                raise RuntimeError(f"{label}: {nbytes:.0f} B on {device} overruns the "
                                   f"reservation {under.label!r} ({share - drawn:.0f} of "
                                   f"{share:.0f} B left)")
            under.drawn[device] = drawn + nbytes
            self._drawn[device] += nbytes
        self.used[device] = used = self.used[device] + nbytes
        if used > self.peak[device]:
            self.peak[device] = used
        now = self.env._now
        self.log.rows.append((now, now, "alloc", device, "memory", label, 0.0, nbytes, request,
                              step))

    def free(self, device: str, nbytes: float, label: str = "", *,
             request: int = -1, step: int = -1, under: Reservation | None = None) -> None:
        """Give back `nbytes` held on `device` (to `under`'s share, still promised to it,
        when given; else to free memory, which may admit waiting reservations)."""
        self.used[device] -= nbytes
        if under is not None:
            under.drawn[device] -= nbytes
            self._drawn[device] -= nbytes
        now = self.env._now
        self.log.rows.append((now, now, "alloc", device, "memory", label, 0.0, -nbytes, request,
                              step))
        if under is None and self._waiting:
            self._grant()

    def reserve(self, shares: Mapping[str, float], label: str = "", *,
                request: int = -1, step: int = -1) -> Reservation:
        """Promise `shares` (device -> bytes) to one piece of work, on every device at once.

        Granted now if every share fits beside what its device has committed and no
        earlier reservation still waits for that device; otherwise it waits in line
        (FIFO per device) and `wait` succeeds when it is granted, logged then as a
        `memwait` row. Granted work holds all it will need, so it never waits again
        and frees memory as it goes: the oldest waiting reservation is always granted
        in the end, and nothing deadlocks. A departed device's memory is not waited
        for (work sent there fails anyway). A share larger than its device has beside
        its plain allocations could never be granted: CapacityError.
        """
        res = Reservation(dict(shares), label, request, step, self.log)
        for device, nbytes in res.shares.items():
            plain = self.plain(device)
            capacity = self.devices[device].memory
            if device not in self.gone and plain + nbytes > capacity:
                raise CapacityError(device, nbytes, capacity - plain, capacity, label)
        short = self._short(res, self._queued)
        if short is None:
            self._take(res)
            return res
        res.wait, res.asked, res.short = self.env.event(), self.env.now, short
        self._waiting.append(res)
        for device in res.shares:
            self._queued[device] = self._queued.get(device, 0) + 1
        return res

    def release(self, res: Reservation, devices: Iterable[str] | None = None) -> None:
        """Give back `res`'s shares on `devices` (default: every share it has left),
        first freeing what it still holds there; waiting reservations that now fit
        are granted, oldest first."""
        if not res.granted:
            raise RuntimeError(f"reservation {res.label!r} released before it was granted")
        for device in list(res.shares) if devices is None else list(devices):
            if res.drawn[device]:
                self.free(device, res.drawn[device], res.label, request=res.request,
                          step=res.step, under=res)
            self._reserved[device] -= res.shares.pop(device)
            del res.drawn[device]
        if self._waiting:
            self._grant()

    def plain(self, device: str) -> float:
        """Bytes held on `device` outside reservations (weights, state)."""
        return self.used[device] - self._drawn[device]

    def _committed(self, device: str) -> float:
        """Bytes held outside reservations plus bytes promised to them."""
        return self.plain(device) + self._reserved[device]

    def _short(self, res: Reservation, blocked: Container[str]) -> str | None:
        """The first device on which `res` cannot be granted now: one an earlier
        reservation waits for (in `blocked`), or one where it does not fit. A departed
        device holds nothing back."""
        for device, nbytes in res.shares.items():
            if device not in self.gone and (
                    device in blocked
                    or self._committed(device) + nbytes > self.devices[device].memory):
                return device
        return None

    def _take(self, res: Reservation) -> None:
        for device, nbytes in res.shares.items():
            self._reserved[device] += nbytes
        if res.wait is not None:
            now = self.env.now
            res.log.add(res.asked, now, "memwait", res.short, "memory", res.label, 0.0,
                        res.shares[res.short], res.request, res.step)
            res.wait.succeed(res)

    def _grant(self) -> None:
        """Grant waiting reservations that fit, oldest first; one still waiting keeps
        every later one off its devices, so none is overtaken where it waits."""
        waiting, self._waiting = self._waiting, []
        blocked: set[str] = set()  # membership only: never iterated
        for i, res in enumerate(waiting):
            if self._short(res, blocked) is None:
                for device in res.shares:
                    self._queued[device] -= 1
                    if not self._queued[device]:
                        del self._queued[device]
                self._take(res)
                continue
            self._waiting.append(res)
            blocked.update(d for d in res.shares if d not in self.gone)
            if len(blocked) + len(self.gone) >= len(self.devices):  # nothing else can go
                self._waiting += waiting[i + 1:]
                break

    def regrant(self, _departure: simpy.Event) -> None:
        """A device left: reservations that waited only for it may go now."""
        if self._waiting:
            self._grant()
