"""Radio time per device: how long each node's radio has been sending and receiving.

A radio is on while at least one flow in its bandwidth phase sends from (or is relayed
by) the node, or arrives at it. `Flows` counts flows in and out as they start and end;
the engine reads the seconds to charge radio energy. Knows nodes and times, nothing of
links, rates or power.
"""
from __future__ import annotations

from collections.abc import Iterable

import simpy

#: Which side of a radio a count is for.
SEND, RECEIVE = 0, 1


class Radios:
    """Per node and side (SEND, RECEIVE): flows now on the air, when the radio last came
    on, and the seconds it was on before that."""

    def __init__(self, env: simpy.Environment, nodes: Iterable[str]):
        self.env = env
        self._n = {n: [0, 0] for n in nodes}
        self._since = {n: [0.0, 0.0] for n in nodes}
        self._time = {n: [0.0, 0.0] for n in nodes}

    def count(self, senders: Iterable[str], receivers: Iterable[str], delta: int,
              now: float) -> list[str]:
        """One flow on (`delta` +1) or off (-1) the air at `now`; the nodes whose radio
        came on or went off, in the order first seen (senders first)."""
        flipped: dict[str, None] = {}
        for side, nodes in ((SEND, senders), (RECEIVE, receivers)):
            for node in nodes:
                n = self._n[node]
                if delta > 0 and n[side] == 0:
                    self._since[node][side] = now
                    flipped[node] = None
                elif delta < 0 and n[side] == 1:
                    self._time[node][side] += now - self._since[node][side]
                    flipped[node] = None
                n[side] += delta
        return list(flipped)

    def state(self, device: str) -> tuple[bool, bool]:
        """(sending, receiving): at least one flow of `device` is in its bandwidth phase."""
        n = self._n[device]
        return n[SEND] > 0, n[RECEIVE] > 0

    def time(self, device: str, now: float | None = None) -> tuple[float, float]:
        """Seconds spent sending and receiving up to `now` (default env.now)."""
        now = self.env.now if now is None else now
        n, since, total = self._n[device], self._since[device], self._time[device]
        return (total[SEND] + (now - since[SEND] if n[SEND] else 0.0),
                total[RECEIVE] + (now - since[RECEIVE] if n[RECEIVE] else 0.0))
