"""Which replicas may serve a request now, as devices leave and return.

A replica serves while every device of it is present and still holds the weights it
was given (a device that left lost its memory, even once it is back). Requests go to
the replicas that serve (`View`); when none does, the pool re-plans through
`plan.replan` on the devices present, and the weights the new plan lacks move as real
transfers (simulated time and energy) before it serves; requests wait meanwhile. When
every device of the original plan is back, the original plan is restored the same
way. This module owns that state; `sim.inference` owns requests, attempts and fates.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import simpy

from simdl.errors import DeviceGone, PlanError
from simdl.plan.plan import Plan, replica_batches
from simdl.plan.queueing import dispatcher
from simdl.plan.replan import replan, weights_to_move, without
from simdl.plan.world import World
from simdl.sim.engine import Simulator
from simdl.sim.stages import ReplicaRunner, prepare

#: Why a request failed: a device of its last attempt left; its last attempt took longer
#: than the timeout; no plan could serve it (no replica left and re-planning found none);
#: the source (which owns the input and gets the answer) was gone.
CAUSES = ("device_left", "timeout", "no_plan", "source_left")


@dataclass(frozen=True)
class Policy:
    """How a request outlives a pool that changes: an attempt taking longer than
    `timeout` seconds (None: no limit; a lost device is noticed anyway) is abandoned and
    retried, as is one stopped by a device leaving, at most `retries` times."""

    timeout: float | None = None
    retries: int = 2

    def __post_init__(self) -> None:
        if self.timeout is not None and not self.timeout > 0:
            raise PlanError("workload.timeout", self.timeout, "a time > 0 (or none)")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise PlanError("workload.retries", self.retries, "a whole number >= 0")


@dataclass
class View:
    """The replicas (of the plan serving now) a request may be sent to, and the dispatch
    over them: shares renormalised over the survivors, own in-flight counts."""

    plan: Plan  # the serving plan's replicas that serve, nothing else
    runners: list[ReplicaRunner]
    whole: bool  # every replica of the original plan, as deployed before the run
    busy: list[int] = field(init=False)
    pick: Callable[[list[int]], int] = field(init=False)
    moved: Callable[[int], None] = field(init=False)

    def __post_init__(self) -> None:
        self.busy = [0] * len(self.runners)
        self.pick, self.moved = dispatcher(self.plan.dispatch,
                                           [rep.share for rep in self.plan.replicas], self.busy)

    def route(self, x: np.ndarray | None, batch: int) -> list[tuple[int, Any, int]]:
        """(replica index in this view, its input, its samples) for one request."""
        if self.plan.dispatch == "all":
            return [(i, x, batch) for i in range(len(self.runners))]
        if self.plan.dispatch == "split":
            split = replica_batches(self.plan, batch)
            chosen = [i for i, n in enumerate(split) if n > 0]
            sizes = [split[i] for i in chosen]
            parts = (np.split(x, np.cumsum(sizes)[:-1]) if x is not None
                     else [None] * len(sizes))
            return list(zip(chosen, parts, sizes))
        return [(self.pick(self.busy), x, batch)]

    def started(self, chosen: list[int]) -> None:
        for i in chosen:
            self.busy[i] += 1
            self.moved(i)

    def ended(self, chosen: list[int]) -> None:
        for i in chosen:
            self.busy[i] -= 1
            self.moved(i)


#: Weights a runner placed: per stage, (device, bytes, label, that device's departure
#: event when they were placed); they are still held while that event has not fired.
Held = list[list[tuple[str, float, str, simpy.Event]]]


class Pool:
    """The serving plan, its runners and what they hold; re-plans and restores."""

    def __init__(self, plan: Plan, world: World, sim: Simulator, runners: list[ReplicaRunner]):
        self.original, self.world, self.sim = plan, world, sim
        self.plan, self.runners = plan, runners
        self.held = [self._place(r) for r in runners]
        self.moving: simpy.Event | None = None  # pending while weights move to a new plan
        self.view: View | None = View(plan, runners, True)
        self._serving = list(range(len(runners)))
        self._calm: int | None = None  # see `refresh`
        for d in world.devices:
            self._watch_departure(d)

    # -- what serves -----------------------------------------------------------

    def acquire(self) -> Any:
        """A process step: the View to send a request to, waiting while weights move;
        None when nothing can serve (`why_not` says why)."""
        self.refresh()
        while not self.view and self.moving is not None:
            yield self.moving
            self.refresh()
        return self.view

    def why_not(self) -> str:
        return "source_left" if self.original.source in self.sim.gone else "no_plan"

    def refresh(self) -> None:
        """Bring the view up to date with the pool; start a re-plan or a restore when due.

        While the original plan serves whole, nothing changes until a device leaves:
        the pool's count of leaves is all it looks at then (`_calm`, the count then)."""
        if self._calm == self.sim.leaves:
            return
        serving = [i for i, h in enumerate(self.held) if _intact(h)]
        if self.original.source in self.sim.gone:
            serving = []
        if serving != self._serving or (self.view is None) != (not serving):
            self._serving = serving
            self.view = self._view(serving) if serving else None
        if self.moving is None and self.original.source not in self.sim.gone:
            target, moves = self._target(serving)
            if target is not None:
                self.moving = self.sim.env.event()
                self.sim.process(self._move(target, moves))
        whole = (self.plan is self.original and self.moving is None
                 and len(serving) == len(self.runners))
        watched = [self.original.source, *self.original.devices]
        self._calm = (self.sim.leaves if whole and not any(d in self.sim.gone for d in watched)
                      else None)

    def _view(self, serving: list[int]) -> View:
        if len(serving) == len(self.runners):
            return View(self.plan, self.runners, self.plan is self.original)
        reps = [self.plan.replicas[i] for i in serving]
        total = sum(rep.share for rep in reps)
        plan = replace(self.plan, replicas=tuple(replace(rep, share=rep.share / total)
                                                 for rep in reps))
        return View(plan, [self.runners[i] for i in serving], False)

    def _target(self, serving: list[int]) -> tuple[Plan | None, list[Any]]:
        """The plan to move to, and the weights to move: the original once all its devices
        are back (if anything of it is missing); a re-plan when no replica serves."""
        gone = self.sim.gone
        whole = self.plan is self.original and len(serving) == len(self.runners)
        if not whole and not any(d in gone for d in self.original.devices):
            return self.original, weights_to_move(self._held_plan(), self.original, self.world)
        if serving:
            return None, []
        try:
            found = replan(self._held_plan(), without(self.world, gone))
        except PlanError:
            return None, []
        return found.plan, list(found.moves)

    def _held_plan(self) -> Plan:
        """The serving plan cut to the stages whose weights are still held."""
        reps = []
        for rep, held in zip(self.plan.replicas, self.held):
            kept = tuple(s for s, h in zip(rep.stages, held) if _intact([h]))
            if kept:
                reps.append(replace(rep, stages=kept))
        return replace(self.plan, replicas=tuple(reps))

    # -- moving to another plan ------------------------------------------------

    def _move(self, target: Plan, moves: list[Any]) -> Any:
        """Send the weights `target` lacks, then serve it; a `replan` row records the move
        (label: the new plan's path; nbytes: what moved)."""
        sim, start = self.sim, self.sim.now
        flows = [sim.transfer(m.src, m.dst, m.nbytes, label=f"replan weights {m.block}")
                 for m in moves]
        for flow in flows:  # the first loss fails all_of; the others are heard here
            flow.callbacks.append(_defuse)
        arrived = True
        if flows:
            try:
                yield sim.all_of(flows)
            except DeviceGone:
                arrived = False
        if arrived and not any(d in sim.gone for d in target.devices):
            for held in self.held:  # the old plan's weights make room for the new
                for device, nbytes, label, left in (x for h in held for x in h):
                    if not left.triggered:
                        sim.free(device, nbytes, label)
            runners = self.runners if target is self.plan else prepare(target, self.world)
            self.plan, self.runners = target, runners
            self.held = [self._place(r) for r in runners]
            self._serving = []  # a new plan: a new view
            sim.log.add(start, sim.now, "replan", target.source, "",
                        target.path, nbytes=float(sum(m.nbytes for m in moves)))
        done, self.moving = self.moving, None
        self.refresh()
        assert done is not None
        done.succeed()

    def _place(self, runner: ReplicaRunner) -> Held:
        placed = runner.place_weights(self.sim)
        return [[(d, b, label, self.sim.departure(d)) for d, b, label in stage]
                for stage in placed]

    # -- watching the pool -----------------------------------------------------

    def _watch_departure(self, device: str) -> None:
        self.sim.departure(device).callbacks.append(lambda _e: self._left(device))

    def _left(self, device: str) -> None:
        self.refresh()
        self.sim.arrival(device).callbacks.append(lambda _e: self._back(device))

    def _back(self, device: str) -> None:
        self.refresh()
        self._watch_departure(device)


def _defuse(event: simpy.Event) -> None:
    if not event.ok:
        event.defused = True


def _intact(held: Held) -> bool:
    """Whether every device of these placed weights has stayed since they were placed."""
    return not any(left.triggered for stage in held for *_, left in stage)
