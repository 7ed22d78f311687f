"""Several jobs on one Simulator: each job's view of the shared clock, pool and network.

A job's code runs against a `JobSim` as it would against a Simulator of its own: the
units, memory, batteries, links and clock are the shared Simulator's, so the jobs
contend for them; what differs is the log (the job's rows, each also written to the
shared log in the order they happened) and the queue priority (a job's kernels are
served after every kernel of a job with a lower `priority`, then in today's order).
Pool events (leave, join, speed, link, kernels lost with a device) are the pool's,
in the shared log only.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import simpy

from simdl.sim.engine import Simulator
from simdl.sim.recorder import EventLog

#: A job's priority counts this many times any priority within a job (tickets included).
_JOB_RANK = 2**96


class _Rows(list):  # type: ignore[type-arg]
    """A job's rows, each also appended to the shared log's rows as it is recorded."""

    def __init__(self, shared: list[tuple[Any, ...]]):
        super().__init__()
        self.shared = shared

    def append(self, row: tuple[Any, ...]) -> None:
        super().append(row)
        self.shared.append(row)


class JobSim:
    """One job's Simulator: the shared one with the job's own log and queue rank.

    Anything not named here is the shared Simulator's own attribute. `compute` and
    `transfer` are the Simulator's methods run on this view (they only read its
    attributes), so a kernel's and a flow's rows reach the job's log."""

    def __init__(self, sim: Simulator, priority: int):
        self.__dict__["_sim"] = sim
        self.__dict__["_rank"] = priority * _JOB_RANK
        log = EventLog()
        log.rows = _Rows(sim.log.rows)
        self.__dict__["log"] = log

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sim, name)

    def __setattr__(self, name: str, value: Any) -> None:
        # A kernel's end counts itself off the shared Simulator (`kernel.finished`).
        setattr(self._sim, name, value)

    def compute(self, *args: Any, priority: int = 0, **kwargs: Any) -> simpy.Event:
        return Simulator.compute(self, *args, priority=self._rank + priority,  # type: ignore[arg-type]
                                 **kwargs)

    def transfer(self, *args: Any, **kwargs: Any) -> simpy.Event:
        return Simulator.transfer(self, *args, **kwargs)  # type: ignore[arg-type]

    def _mine(self, call: Callable[..., Any]) -> Callable[..., Any]:
        """`call` (a memory call) with its rows written to this job's log."""
        memory = self._sim.memory

        def logged(*args: Any, **kwargs: Any) -> Any:
            shared, memory.log = memory.log, self.log
            try:
                return call(*args, **kwargs)
            finally:
                memory.log = shared
        return logged

    @property
    def allocate(self) -> Callable[..., Any]:
        return self._mine(self._sim.memory.allocate)

    @property
    def free(self) -> Callable[..., Any]:
        return self._mine(self._sim.memory.free)

    @property
    def reserve(self) -> Callable[..., Any]:
        return self._mine(self._sim.memory.reserve)

    @property
    def release(self) -> Callable[..., Any]:
        return self._mine(self._sim.memory.release)
