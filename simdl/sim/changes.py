"""The World's changes played on a Simulator: each source of change a chain of daemons.

A source is a list of (time, value) steps -- a profile's points (repeated every period),
or exponential up and down times drawn from the source's own stream -- of which only the
steps that change the value are played, each a `Simulator.at` daemon that schedules the
next one when it is due. So sources never keep a run going on their own, an endless one
costs one scheduled event at a time, and a run with none is untouched.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from simdl.plan.world import Change, Profile, World
from simdl.rng import stream
from simdl.sim.engine import Simulator

#: Each quantity's value before its source says otherwise: every device here, at full
#: speed, every link at full bandwidth without loss.
USUAL = {"presence": 1.0, "availability": 1.0, "speed": 1.0, "bandwidth": 1.0, "loss": 0.0}
#: Why a device left or joined, as the log's `leave` and `join` rows say it.
ABSENT, PRESENT = "absent", "present"


def start_changes(world: World, sim: Simulator) -> None:
    """Start every source of change in `world.changes` on `sim`, before it runs."""
    for change in world.changes:
        if change.kind == "availability":
            steps = _up_and_down(stream(world.seed, f"availability/{change.target}"),
                                 change.up, change.down)
        else:
            assert change.profile is not None
            steps = _repeated(change.profile)
        _play(sim, change, _changing(steps, USUAL[change.kind]))


def _repeated(profile: Profile) -> Iterator[tuple[float, float]]:
    """A profile's points, then again every period (a period whose points all hold one
    value adds nothing after the first)."""
    yield from profile.points
    if profile.period is None or len({v for _, v in profile.points}) == 1:
        return
    k = 1
    while True:
        for t, v in profile.points:
            yield k * profile.period + t, v
        k += 1


def _up_and_down(rng: np.random.Generator, up: float, down: float) -> Iterator[tuple[float, float]]:
    """Present from 0 for an exponential time of mean `up`, then gone for one of mean
    `down`, and so on."""
    t = 0.0
    while True:
        t += rng.exponential(up)
        yield t, 0.0
        t += rng.exponential(down)
        yield t, 1.0


def _changing(steps: Iterator[tuple[float, float]], value: float) -> Iterator[tuple[float, float]]:
    """The steps that change the value (from `value`)."""
    for t, v in steps:
        if v != value:
            value = v
            yield t, v


def _play(sim: Simulator, change: Change, steps: Iterator[tuple[float, float]]) -> None:
    apply = _action(sim, change)
    kind, target = change.kind, change.target

    def schedule() -> None:
        step = next(steps, None)
        if step is None:
            return
        t, v = step
        revives = (target if kind in ("presence", "availability") and v == 1.0 else
                   "" if kind == "bandwidth" and v > 0 else None)
        sim.at(max(t, sim.now), lambda: (apply(v), schedule()), revives)

    schedule()


def _action(sim: Simulator, change: Change) -> Callable[[float], None]:
    """What a step's value does to the pool."""
    target = change.target
    if change.kind in ("presence", "availability"):
        return lambda v: sim.join(target, PRESENT) if v == 1.0 else sim.leave(target, ABSENT)
    if change.kind == "speed":
        return lambda v: sim.set_speed(target, change.unit, v)
    if change.kind == "bandwidth":
        return lambda v: sim.set_link(target, bandwidth=v)
    return lambda v: sim.set_link(target, loss=v)
