"""Executes inference plans: requests arrive, reach replicas, stream through stages.

Requests are dispatched to one replica, split over all, or sent to all and
fused (an ensemble). A request whose device leaves mid-flight is recorded as
dropped, never lost silently. How a micro-batch crosses one replica's stages
is `sim.stages`; this module owns arrivals, dispatch, fusion and the record.
"""
from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simdl.nn.dense import softmax
from simdl.plan.plan import Plan, replica_batches
from simdl.plan.queueing import arrival_gaps, dispatcher
from simdl.plan.world import World
from simdl.rng import stream
from simdl.sim.engine import Simulator
from simdl.sim.stages import ReplicaRunner, first_gone


@dataclass
class Outputs:
    """What the served requests computed (real mode only): the final answer per
    request, and each replica's own answer when every replica saw the request."""

    final: dict[int, np.ndarray] = field(default_factory=dict)
    members: dict[int, dict[int, np.ndarray]] = field(default_factory=dict)


def execute(plan: Plan, world: World, sim: Simulator, runners: list[ReplicaRunner],
            progress: Callable[[int], None] | None = None) -> Outputs:
    """Run the workload under `plan` to its last request; return what it computed.

    `runners` (one per replica, from `sim.stages.prepare`) hold the deployed
    weights and the shard programs. `progress(1)` is called as each request ends.
    """
    load, out = world.workload, Outputs()
    classes = _classes(world)
    busy = [0] * len(plan.replicas)
    pick, moved = dispatcher(plan.dispatch, [rep.share for rep in plan.replicas], busy)
    for runner in runners:
        runner.place_weights(sim)

    def request(r: int) -> Generator[Any, Any, None]:
        arrival, (cls, priority) = sim.now, classes[r]
        x = None if sim.timing_only else inputs(world, r)
        if plan.dispatch == "all":
            chosen = list(range(len(runners)))
            parts = [(x, load.batch)] * len(runners)
        elif plan.dispatch == "split":
            split = replica_batches(plan, load.batch)
            chosen = [i for i, n in enumerate(split) if n > 0]
            sizes = [n for n in split if n > 0]
            cuts = np.cumsum(sizes)[:-1]
            parts = list(zip(np.split(x, cuts) if x is not None else [None] * len(sizes), sizes))
        else:
            chosen = [pick(busy)]
            parts = [(x, load.batch)]
        for i in chosen:
            busy[i] += 1
            moved(i)
        procs = [sim.process(runners[i].run(sim, r, px, n, priority))
                 for i, (px, n) in zip(chosen, parts)]
        values = yield sim.all_of(procs)
        for i in chosen:
            busy[i] -= 1
            moved(i)
        gone = first_gone(values)
        if gone is not None:
            sim.log.add(arrival, sim.now, "dropped", plan.source, cls, str(gone), request=r)
        else:
            if x is not None:
                out.final[r] = _combine(plan, values)
                if plan.dispatch == "all":
                    out.members[r] = dict(zip(chosen, values))
            path = (runners[chosen[0]].path if len(chosen) == 1
                    else " | ".join([runners[i].path for i in chosen]))
            sim.log.add(arrival, sim.now, "request", plan.source, cls, path, request=r)
        if progress is not None:
            progress(1)
        finished.append(r)
        if len(finished) == load.requests:
            done.succeed()

    # The run ends with its last request, not with a stale wake-up or a battery check.
    finished: list[int] = []
    done = sim.env.event()
    sim.process(_arrivals(world, sim, request))
    sim.run(until=done)
    return out


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


def _arrivals(world: World, sim: Simulator, request: Any) -> Generator[Any, Any, None]:
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
