"""Executes inference plans: requests arrive, reach replicas, stream through stages.

Requests are dispatched to one replica, split over all, or sent to all and
fused (an ensemble). A request whose device leaves mid-flight is retried on what
still serves, within a budget, and ends completed or failed with its cause, never
lost silently nor counted twice. Which replicas serve is `sim.serving`; how a
micro-batch crosses one replica's stages is `sim.stages`; this module owns
arrivals, attempts, fusion and the record.
"""
from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import simpy

from simdl.nn.dense import softmax
from simdl.plan.plan import Plan
from simdl.plan.queueing import arrival_gaps
from simdl.plan.world import World
from simdl.rng import stream
from simdl.sim.engine import Simulator
from simdl.sim.serving import Policy, Pool
from simdl.sim.stages import ReplicaRunner, first_gone, waited


@dataclass
class Outputs:
    """What the served requests computed (real mode only): the final answer per
    request, and each replica's own answer when every replica saw the request."""

    final: dict[int, np.ndarray] = field(default_factory=dict)
    members: dict[int, dict[int, np.ndarray]] = field(default_factory=dict)


def execute(plan: Plan, world: World, sim: Simulator, runners: list[ReplicaRunner],
            progress: Callable[[int], None] | None = None, policy: Policy = Policy()) -> Outputs:
    """Run the workload under `plan` to its last request (`start`, then the clock until
    its last request ends); return what it computed."""
    done, out = start(plan, world, sim, runners, progress, policy)
    sim.run(until=done)
    return out


def start(plan: Plan, world: World, sim: Simulator, runners: list[ReplicaRunner],
          progress: Callable[[int], None] | None = None, policy: Policy = Policy()
          ) -> tuple[simpy.Event, Outputs]:
    """Start the workload's requests under `plan` on `sim`'s clock: the event of its
    last request's end, and the Outputs it fills in as requests are answered.

    `runners` (one per replica, from `sim.stages.prepare`) hold the deployed
    weights and the shard programs. `progress(1)` is called as each request ends.
    A request's attempt stopped by a device leaving, or older than `policy.timeout`,
    is retried on the replicas that serve (`sim.serving.Pool`) at most
    `policy.retries` times; the request then ends `request` (completed) or `failed`
    (label: the cause) in the log, once. A `retry` row records each abandoned attempt
    (label: why); a late answer from an abandoned attempt is discarded.
    """
    load, out, env = world.workload, Outputs(), sim.env
    classes = _classes(world)
    pool = Pool(plan, world, sim, runners)

    def request(r: int) -> Generator[Any, Any, None]:
        arrival, (cls, priority) = env.now, classes[r]
        x = None if sim.timing_only else inputs(world, r)
        attempt = 0
        while True:
            asked = env.now
            view = yield from pool.acquire()
            if env.now > asked:
                sim.log.add(asked, env.now, "planwait", plan.source, cls, "", request=r)
            if view is None:
                sim.log.add(arrival, env.now, "failed", plan.source, cls, pool.why_not(),
                            request=r)
                break
            routed = view.route(x, load.batch)
            chosen = [i for i, _, _ in routed]
            view.started(chosen)
            began = env.now
            answered, values = None, None
            if policy.timeout is None and len(routed) == 1:  # one answer, no deadline
                (i, px, n), = routed
                values = [(yield from waited(env, view.runners[i].run(
                    sim, r, px, n, priority, attempt)))]
                view.ended(chosen)
            else:
                answered = sim.all_of([sim.process(view.runners[i].run(
                    sim, r, px, n, priority, attempt)) for i, px, n in routed])
                answered.callbacks.append(lambda _e, view=view, chosen=chosen:
                                          view.ended(chosen))
                yield (answered if policy.timeout is None
                       else env.any_of([answered, env.timeout(policy.timeout)]))
                if answered.triggered:
                    values = answered.value
            if values is None:  # abandoned: its answer, if one comes, is discarded (`late`)
                assert answered is not None
                cause = "timeout"
                answered.callbacks.append(
                    lambda e, began=began: _late(sim, e.value, began, plan.source, cls, r))
            else:
                gone = first_gone(values)
                cause = None if gone is None else "device_left"
            if cause is None:
                if x is not None:
                    out.final[r] = _combine(view.plan, values)
                    if view.plan.dispatch == "all" and view.whole:
                        out.members[r] = dict(zip(chosen, values))
                path = (view.runners[chosen[0]].path if len(chosen) == 1
                        else " | ".join([view.runners[i].path for i in chosen]))
                sim.log.add(arrival, env.now, "request", plan.source, cls, path, request=r)
                break
            if plan.source in sim.gone:  # nobody left to ask again or to answer
                cause = "source_left"
            if attempt == policy.retries or cause == "source_left":
                sim.log.add(arrival, env.now, "failed", plan.source, cls, cause, request=r)
                break
            sim.log.add(began, env.now, "retry", plan.source, cls, cause, request=r)
            attempt += 1
        if progress is not None:
            progress(1)
        finished.append(r)
        if len(finished) == load.requests:
            done.succeed()

    # The run ends with its last request, not with a stale wake-up or a battery check.
    finished: list[int] = []
    done = sim.env.event()
    sim.process(arrivals(world, sim, request))
    return done, out


def _late(sim: Simulator, values: list[Any], began: float, source: str, cls: str,
          r: int) -> None:
    """An abandoned attempt's answer came after all: recorded, not used."""
    if first_gone(values) is None:
        sim.log.add(began, sim.now, "late", source, cls, "", request=r)


def _combine(plan: Plan, values: list[np.ndarray]) -> np.ndarray:
    """One answer from the replicas' answers: concatenated, or fused (ensembles)."""
    if plan.dispatch != "all":
        return values[0] if len(values) == 1 else np.concatenate(values)
    return fuse(plan.fuse, values)


def fuse(how: str, logits: list[np.ndarray]) -> np.ndarray:
    """Fuse ensemble members' logits into class scores (argmax is the prediction).

    mean: average of probabilities; vote: count of members voting each class
    (ties go to the lower class index via argmax); confidence: probabilities
    weighted per sample by each member's top probability.
    """
    probs = [softmax(z.astype(np.float64), axis=-1) for z in logits]
    if how == "mean":
        return np.mean(probs, axis=0)
    if how == "vote":
        n_classes = probs[0].shape[-1]
        return np.sum([np.eye(n_classes)[p.argmax(-1)] for p in probs], axis=0)
    weights = [p.max(-1, keepdims=True) for p in probs]
    return np.sum([w * p for w, p in zip(weights, probs)], axis=0) / np.sum(weights, axis=0)


def _classes(world: World) -> list[tuple[str, int]]:
    """Each request's (class name, priority), drawn by the classes' shares."""
    load = world.workload
    if not load.classes:
        return [("", 0)] * load.requests
    shares = np.array([c.share for c in load.classes], dtype=float)
    picks = stream(world.seed, "classes").choice(len(shares), size=load.requests,
                                                 p=shares / shares.sum())
    return [(load.classes[k].name, load.classes[k].priority) for k in picks]


def arrivals(world: World, sim: Simulator, request: Any) -> Generator[Any, Any, None]:
    """Start requests 0..n-1 as the workload's arrival process says."""
    load = world.workload
    arrival, n = load.arrival, load.requests
    gaps = arrival_gaps(world)
    if gaps is not None:
        for r, gap in enumerate(gaps):
            yield sim.env.timeout(gap)
            sim.process(request(r))
    else:  # closed loop: each client sends its next request when the last one ends
        counter = iter(range(n))

        def client() -> Generator[Any, Any, None]:
            for r in counter:
                yield sim.process(request(r))

        for _ in range(min(arrival.concurrency, n)):
            sim.process(client())


def inputs(world: World, r: int) -> np.ndarray:
    """Request r's batch: the next `batch` samples of the world's data, wrapping around
    (a copy of its own, as a request's input is)."""
    which = _samples(world, r)
    return world.data.x[which].copy() if isinstance(which, slice) else world.data.x[which]


def labels(world: World, r: int | np.ndarray) -> np.ndarray:
    """The true labels of request r's samples (for accuracy); for an array of requests,
    one row each."""
    return world.data.y[_samples(world, r)]


def _samples(world: World, r: int | np.ndarray) -> slice | np.ndarray:
    """Which samples request r draws: a slice while they do not wrap around (no index
    array to make); indices for an array of requests."""
    batch, n = world.workload.batch, len(world.data)
    if isinstance(r, int):
        start = r * batch % n
        if start + batch <= n:
            return slice(start, start + batch)
    return (np.asarray(r)[..., None] * batch + np.arange(batch)) % n
