"""The training planner's judge: the estimate's fastest few re-scored by simulating their
real numerics, ranked by the simulated time they take to reach a held-out loss.

A step-time estimate cannot see that lossy compression, local SGD and stale servers
need more steps to reach the same loss; the simulator trains the real model, so it
can. The shortlist (`plan.train_search.shortlist`) and the `reference` (the fastest
lossless plan) each train, evaluated on the held-out set after every step, until
they reach the target or `patience` times the workload's steps. The target is
`space.target_loss`, by default the lowest held-out loss the reference reaches in
the workload's steps. Plans that reach it rank by the time they took (a lossily
compressed one's times 1 + `margin`: one seed's loss curve does not resolve less,
and the simulator charges no time for encoding); then the rest by their last loss.
Knows training plans, their estimate and the simulator.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from threadpoolctl import threadpool_limits

from simdl.errors import PlanError
from simdl.plan.train_estimate import TrainEstimate
from simdl.plan.train_search import (
    TrainSearch,
    TrainSpace,
    numerics,
    reference,
    shortlist,
    train_search,
)
from simdl.plan.training import TrainPlan
from simdl.plan.world import Training, World
from simdl.sim.engine import Simulator
from simdl.sim.training import PROTOCOLS


@dataclass(frozen=True)
class Trial:
    """One plan trained on the simulator until the target or its last step: its
    estimate, the steps it ran, the simulated time of the first step whose held-out
    loss reached the target (inf: never; `reached_at` that step), the held-out loss
    after each step, and when each step ended."""

    estimate: TrainEstimate
    target: float
    steps: int
    reached_at: int | None
    time_to_target: float
    losses: tuple[float, ...]
    times: tuple[float, ...]

    @property
    def plan(self) -> TrainPlan:
        return self.estimate.plan

    @property
    def final_loss(self) -> float:
        """The last held-out loss (inf if the run diverged)."""
        last = self.losses[-1] if self.losses else math.nan
        return last if np.isfinite(last) else math.inf

    @property
    def step(self) -> float:
        """Simulated seconds per step (a local SGD round), over the steps it ran."""
        return self.times[-1] / self.steps if self.steps else math.nan


@dataclass(frozen=True)
class TrainChoice:
    """The simulated winner (`best`, its estimate, as `TrainSearch.best` has), every
    trial ranked (winner first), the held-out loss they raced to, the reference's
    trial, and the search the shortlist came from."""

    best: TrainEstimate
    trials: tuple[Trial, ...]
    target: float
    reference: Trial
    found: TrainSearch

    @property
    def examined(self) -> int:
        return self.found.examined

    @property
    def refused(self) -> int:
        return self.found.refused


def rank_key(trial: Trial, margin: float) -> tuple[int, float]:
    """Those that reached the target first, by time (a lossily compressed plan's times
    1 + `margin`); then the others by their last held-out loss."""
    if trial.reached_at is None:
        return (1, trial.final_loss)
    lossy = trial.plan.sync.compression != "none"
    return (0, trial.time_to_target * (1.0 + margin if lossy else 1.0))


def train_choice(world: World, space: TrainSpace, *,
                 progress: Callable[[str], None] | None = None) -> TrainChoice:
    """Search `space` by the estimate, then simulate the shortlist and the reference and
    return the one that reaches the target first. `progress` hears one line per trial."""
    found = train_search(world, space)
    ref = reference(found)
    picks = [ref, *shortlist(found, space.top, without=(numerics(ref.plan),))]
    steps = world.workload.steps
    cap = math.ceil(space.patience * steps)
    say = progress or (lambda line: None)
    first = trial(ref, world, space.target_loss, steps if space.target_loss is None else cap)
    target = first.target
    if not math.isfinite(target):
        raise PlanError("space.target_loss", None, f"a held-out loss to reach: the reference "
                        f"({ref.plan.describe()}) diverged, so it sets none")
    trials = [first]
    say(_line(1, len(picks), first))
    for k, e in enumerate(picks[1:], start=2):
        trials.append(trial(e, world, target, cap))
        say(_line(k, len(picks), trials[-1]))
    order = sorted(range(len(trials)), key=lambda i: (rank_key(trials[i], space.margin), i))
    ranked = tuple(trials[i] for i in order)
    return TrainChoice(ranked[0].estimate, ranked, target, first, found)


def trial(estimate: TrainEstimate, world: World, target: float | None, steps: int) -> Trial:
    """Train `estimate.plan` with real numerics for at most `steps` steps, evaluating the
    held-out loss after each, stopping at the first that reaches `target`. Without a
    target, run every step and take the lowest loss reached as the target."""
    load = world.workload
    assert isinstance(load, Training), "trial trains training workloads"
    world = replace(world, workload=replace(load, steps=steps, eval_every=1,
                                            target_accuracy=None))
    losses: list[float] = []
    times: list[float] = []
    jobs = []
    with threadpool_limits(limits=1, user_api="blas"):
        sim = Simulator(world.devices, world.network, timing_only=False)
        enough = sim.env.event()

        def seen(_: int) -> None:
            row = jobs[0].metrics.rows[-1]
            loss = float(row.get("eval_loss", math.nan))
            losses.append(loss if np.isfinite(loss) else math.inf)
            times.append(float(row["t"]))
            if target is not None and loss <= target and not enough.triggered:
                enough.succeed()

        jobs.append(PROTOCOLS[estimate.plan.sync.kind](estimate.plan, world, sim, seen))
        sim.run(until=sim.env.any_of([enough, jobs[0].finished]))
    goal = min(losses) if target is None else target
    hit = next((k for k, v in enumerate(losses) if v <= goal), None)
    return Trial(estimate, goal, len(losses), hit,
                 times[hit] if hit is not None else math.inf, tuple(losses), tuple(times))


def why(t: Trial, choice: TrainChoice, margin: float) -> str:
    """Why `t` ranks where it does: when it reached the target (and the margin a lossy
    plan pays) or its last loss, whether it is the reference, and, for the winner, how
    much sooner than the reference; the estimated and simulated step where they differ
    by more than 1 %."""
    parts = ["reference (fastest lossless)"] if t is choice.reference else []
    if t.reached_at is None:
        parts.append(f"never reached {t.target:.4g}: last loss {t.final_loss:.4g} "
                     f"after {t.steps} steps")
    else:
        parts.append(f"loss {t.target:.4g} at step {t.reached_at + 1}")
        if t.plan.sync.compression != "none" and margin:
            parts.append(f"lossy: ranked as {1 + margin:g}x its time")
    ref = choice.reference
    if t is choice.trials[0] and t is not ref and ref.reached_at is not None:
        parts.append(f"{ref.time_to_target / t.time_to_target:.3g}x sooner than the reference")
    if abs(t.estimate.step - t.step) > 0.01 * t.step:
        parts.append(f"step estimated {t.estimate.step:.4g} s, simulated {t.step:.4g} s")
    return "; ".join(parts)


def _line(k: int, n: int, t: Trial) -> str:
    got = (f"held-out loss {t.target:.4g} at {t.time_to_target:.4g} s (step {t.reached_at + 1})"
           if t.reached_at is not None else f"never reached {t.target:.4g}: last loss "
           f"{t.final_loss:.4g} after {t.steps} steps")
    return f"simulated {k}/{n}: {t.plan.describe()}: {got}"


__all__ = ["TrainChoice", "Trial", "rank_key", "train_choice", "trial", "why"]
