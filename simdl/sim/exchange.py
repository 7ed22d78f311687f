"""How training workers exchange bytes: transfers, waits, mailboxes; and the step account.

A protocol (`sim.sync`, `sim.servers`, `sim.allreduce`, ...) moves bytes only through
its job's Exchange (`Job.net`), so every transfer is charged the same way: the bytes a
worker sends and the time it spends waiting on transfers land in that worker's Tally,
which the job's record (`Job.report`) turns into the step's comm and bytes columns.
A mailbox pairs a payload (arrays, in real mode) with the transfer that carries it, so
a receiver reads the payload only once its bytes have arrived.
"""
from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import simpy

from simdl.sim.engine import Simulator


@dataclass
class Tally:
    """One worker's step: its start, kernel time, network spans, bytes it sent, losses."""

    t0: float
    compute: float = 0.0
    spans: list[tuple[float, float]] = field(default_factory=list)
    sent: float = 0.0
    losses: list[float] = field(default_factory=list)

    def comm(self) -> float:
        """Seconds in which at least one of its transfers was in flight while it waited."""
        total, reach = 0.0, -np.inf
        for a, b in sorted(self.spans):
            if b > reach:
                total += b - max(a, reach)
                reach = b
        return total


class Exchange:
    """The network as a training job's workers see it: send, wait, mailboxes."""

    def __init__(self, sim: Simulator):
        self.sim = sim
        self._boxes: dict[Any, simpy.Event] = {}

    def send(self, src: str, dst: str, nbytes: float, label: str, step: int,
             tally: Tally | None = None) -> simpy.Event:
        """A transfer; a device sending to itself moves nothing (an event already done,
        no log row). `tally` counts the bytes as sent by that worker."""
        if src == dst:
            event = self.sim.env.event()
            event.succeed(None)
            return event
        if tally is not None:
            tally.sent += nbytes
        flow = self.sim.transfer(src, dst, nbytes, label=label, step=step)
        flow.callbacks.append(_heard)
        return flow

    def wait(self, events: Sequence[simpy.Event], tally: Tally) -> Generator[Any, Any, list[Any]]:
        """Wait for transfers; the part of each flow after the wait began counts as comm.
        Events may hold a Flow or a (Flow, payload) pair; the values come back in order."""
        t = self.sim.now
        yield self.sim.env.all_of(events)
        values = [e.value for e in events]
        for v in values:
            flow = v[0] if isinstance(v, tuple) else v
            if flow is not None and flow.t_end > t:  # arrived before the wait: no time lost
                tally.spans.append((max(t, flow.t_request), flow.t_end))
        return values

    def box(self, key: Any) -> simpy.Event:
        """A mailbox event for `key` (created by whichever side asks first)."""
        if key not in self._boxes:
            self._boxes[key] = self.sim.env.event()
        return self._boxes[key]

    def deliver(self, transfer: simpy.Event, key: Any, payload: Any) -> None:
        """When `transfer` arrives, its mailbox gets (Flow, payload); a transfer lost with
        a device fails the mailbox (DeviceGone), so its payload is never used."""
        box = self.box(key)

        def arrived(ev: simpy.Event) -> None:
            if ev.ok:
                box.succeed((ev.value, payload))
            else:
                ev.defused = box.defused = True  # whoever waits on the box hears it
                box.fail(ev.value)

        transfer.callbacks.append(arrived)


def _heard(event: simpy.Event) -> None:
    """A transfer lost with a device fails whoever waits on it; one that fails after its
    waiter already gave up (a sibling failed first) crashes nothing: its `lost` row is
    the record."""
    if not event.ok:
        event.defused = True
