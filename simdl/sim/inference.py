"""Executes inference plans: requests arrive, their micro-batches stream through the stages.

Every block is a kernel on its stage's device and every hand-over between
devices a transfer on the network, so queueing, contention and memory are the
engine's. A request whose device leaves mid-flight is recorded as dropped,
never lost silently.
"""
from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import numpy as np

from simdl.errors import DeviceGone
from simdl.nn.core import Cost
from simdl.plan.plan import Plan, input_bytes
from simdl.plan.world import World
from simdl.rng import stream
from simdl.sim.engine import Simulator


def execute(plan: Plan, world: World, sim: Simulator,
            progress: Callable[[int], None] | None = None) -> dict[int, np.ndarray]:
    """Run the workload under `plan` to the end; return each served request's output.

    Outputs are only filled in real mode; timing-only mode returns an empty dict.
    `progress(1)` is called as each request ends (served or dropped).
    """
    chain, load = world.chain, world.workload
    sizes = [len(part) for part in np.array_split(np.arange(load.batch), plan.microbatches)]
    costs = {size: chain.costs(size) for size in set(sizes)}
    outputs: dict[int, np.ndarray] = {}
    for s in plan.stages:
        sim.allocate(s.device, chain.param_bytes(s.start, s.stop),
                     f"weights {chain.names[s.start]}..{chain.names[s.stop - 1]}")

    def block(x: np.ndarray, b: int) -> np.ndarray:
        return chain.forward(x, start=b, stop=b + 1)[0]

    def microbatch(r: int, j: int, x: np.ndarray | None, size: int) -> Generator[Any, Any, Any]:
        tag = f"r{r}.{j}"
        where, held = plan.source, input_bytes(world, size)
        try:
            sim.allocate(where, held, f"input {tag}", request=r)
            for stage in plan.stages:
                if stage.device != where:
                    yield sim.transfer(where, stage.device, held, label=f"act {tag}", request=r)
                    sim.free(where, held, f"act {tag}", request=r)
                    sim.allocate(stage.device, held, f"act {tag}", request=r)
                    where = stage.device
                for b in range(stage.start, stage.stop):
                    c: Cost = costs[size][b]
                    sim.allocate(where, c.out_bytes, f"act {tag}", request=r)
                    x = yield sim.compute(where, c.fwd_flops, c.fwd_bytes, block, (x, b),
                                          unit=stage.unit, label=f"{chain.names[b]} {tag}",
                                          request=r)
                    sim.free(where, held, f"act {tag}", request=r)
                    held = c.out_bytes
            if where != plan.source:
                yield sim.transfer(where, plan.source, held, label=f"out {tag}", request=r)
                sim.free(where, held, f"out {tag}", request=r)
                sim.allocate(plan.source, held, f"out {tag}", request=r)
            sim.free(plan.source, held, f"out {tag}", request=r)
            return x
        except DeviceGone as gone:
            return gone

    def request(r: int) -> Generator[Any, Any, None]:
        arrival = sim.now
        x = _inputs(world, r) if not sim.timing_only else None
        parts = np.split(x, np.cumsum(sizes)[:-1]) if x is not None else [None] * len(sizes)
        procs = [sim.process(microbatch(r, j, p, n)) for j, (p, n) in enumerate(zip(parts, sizes))]
        results = yield sim.env.all_of(procs)
        values = [results[p] for p in procs]
        gone = next((v for v in values if isinstance(v, DeviceGone)), None)
        if gone is not None:
            sim.log.add(arrival, sim.now, "dropped", plan.source, "", str(gone), request=r)
        else:
            if x is not None:
                outputs[r] = np.concatenate(values)
            sim.log.add(arrival, sim.now, "request", plan.source, "", plan.path, request=r)
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
    return outputs


def _arrivals(world: World, sim: Simulator, request: Any) -> Generator[Any, Any, None]:
    """Start requests 0..n-1 as the workload's arrival process says."""
    load = world.workload
    arrival, n = load.arrival, load.requests
    if arrival.kind == "poisson":
        gaps = stream(world.seed, "arrivals").exponential(1.0 / arrival.rate, size=n)
        for r in range(n):
            yield sim.env.timeout(float(gaps[r]))
            sim.process(request(r))
    elif arrival.kind == "trace":
        for r, t in enumerate(sorted(arrival.times)[:n]):
            yield sim.env.timeout(t - sim.now)
            sim.process(request(r))
    else:  # closed loop: each client sends its next request when the last one ends
        counter = iter(range(n))

        def client() -> Generator[Any, Any, None]:
            for r in counter:
                yield sim.process(request(r))

        for _ in range(min(arrival.concurrency, n)):
            sim.process(client())


def _inputs(world: World, r: int) -> np.ndarray:
    """Request r's batch: the next `batch` samples of the world's data, wrapping around."""
    batch, data = world.workload.batch, world.data
    idx = (r * batch + np.arange(batch)) % len(data)
    return data.x[idx]


def labels(world: World, r: int) -> np.ndarray:
    """The true labels of request r's samples (for accuracy)."""
    batch, data = world.workload.batch, world.data
    return data.y[(r * batch + np.arange(batch)) % len(data)]
