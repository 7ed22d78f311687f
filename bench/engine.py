"""Engine benchmark: simdl's cost per event against a bare simpy timeout, and real mode
against the plain numpy forward of the same model, all in one process.

Run: .venv/bin/python bench/engine.py [--quick]   (figures go in bench/README.md)

Everything is timed as CPU time of this process (the machine is shared: other jobs'
load then costs waiting, not our time), best of several runs, the sides interleaved
run by run so that a slow spell hits them alike, after one warm-up run each. Both
sides of the real-mode figures run with one BLAS thread (threadpoolctl), as simdl does.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import simpy
from threadpoolctl import threadpool_limits

from simdl import api
from simdl.hw.devices import make_device
from simdl.scenario import Scenario, parse
from simdl.sim.engine import Simulator
from simdl.sim.inference import execute, inputs
from simdl.sim.serving import Policy
from simdl.sim.stages import prepare
from simdl.world import build

N = 100_000  # kernels per engine run


def best(*fns: Callable[[], Any], repeat: int) -> list[float]:
    """The least CPU time of each function over `repeat` rounds, run interleaved after a
    warm-up round."""
    times: list[list[float]] = [[] for _ in fns]
    for fn in fns:
        fn()
    for _ in range(repeat):
        for fn, ts in zip(fns, times):
            t = time.process_time()
            fn()
            ts.append(time.process_time() - t)
    return [min(ts) for ts in times]


# -- the engine alone -------------------------------------------------------------------

def bare_timeouts(n: int = N) -> None:
    """`n` back-to-back timeouts on a bare simpy clock: the yardstick per event."""
    env = simpy.Environment()

    def loop():
        for _ in range(n):
            yield env.timeout(1e-3)

    env.process(loop())
    env.run()


def compute_events(clients: int) -> None:
    """N timing-only kernels on one unit from `clients` processes (>1: they queue)."""
    sim = Simulator({"phone": make_device("phone_flagship")}, timing_only=True)

    def loop():
        for _ in range(N // clients):
            yield sim.compute("phone", 1e6, 1e4, unit="cpu")

    for _ in range(clients):
        sim.process(loop())
    sim.run()
    assert len(sim.log) == N


# -- whole runs through the api -----------------------------------------------------------

def scenario(model: dict[str, Any], requests: int, batch: int) -> Scenario:
    """One desktop PC serving `requests` Poisson requests of `batch` samples."""
    return parse({
        "name": "bench", "seed": 0, "devices": [{"name": "pc", "type": "desktop_pc"}],
        "network": {"kind": "wifi_star"}, "model": model,
        "workload": {"kind": "inference", "requests": requests, "batch": batch,
                     "arrival": {"kind": "poisson", "rate": 50}, "source": "pc"},
        "strategies": [{"name": "single", "device": "pc"}]})


def phases(sc: Scenario, timing_only: bool) -> dict[str, float]:
    """CPU seconds of each part of `api.run(sc)`, called as api.run calls them: build the
    world, plan, simulate (prepare and execute), result tables; plus compute events."""
    out: dict[str, float] = {}
    with threadpool_limits(limits=1, user_api="blas"):
        t = time.process_time()
        world = build(sc, timing_only=timing_only)
        (i, entry), = api.selected(sc, None)
        p = api.plan(world, entry, i)
        out["build"], t = time.process_time() - t, time.process_time()
        sim = Simulator(world.devices, world.network, timing_only=timing_only)
        outputs = execute(p, world, sim, prepare(p, world), None,
                          Policy(world.workload.timeout, world.workload.retries))
        out["simulate"], t = time.process_time() - t, time.process_time()
        api.strategy_result(sc, world, entry, p, sim, outputs)
        out["tables"] = time.process_time() - t
    out["events"] = sum(1 for row in sim.log.rows if row[2] == "compute")
    return out


def best_phases(sc: Scenario, timing_only: bool, repeat: int,
                also: Callable[[], Any] | None = None) -> tuple[dict[str, float], float]:
    """Each phase's least time over `repeat` runs, interleaved with `also` (timed too)."""
    runs, others = [], []
    for _ in range(repeat + 1):  # the first is the warm-up
        if also is not None:
            t = time.process_time()
            also()
            others.append(time.process_time() - t)
        runs.append(phases(sc, timing_only))
    least = {key: min(r[key] for r in runs[1:]) for key in runs[0]}
    return least, min(others[1:], default=float("nan"))


def whole(sc: Scenario, timing_only: bool, repeat: int,
          also: Callable[[], Any] | None = None) -> tuple[float, float]:
    """Least CPU time of `api.run(sc)` itself, interleaved with `also`."""
    fns = [lambda: api.run(sc, timing_only=timing_only)] + ([also] if also else [])
    got = best(*fns, repeat=repeat)
    return got[0], (got[1] if also else float("nan"))


def plain_forward(sc: Scenario) -> Callable[[], None]:
    """The same model's plain forward over the same requests' inputs, one BLAS thread."""
    world = build(sc)
    chain = world.models["main"]
    xs = [inputs(world, r) for r in range(world.workload.requests)]

    def run() -> None:
        with threadpool_limits(limits=1, user_api="blas"):
            for x in xs:
                chain.forward(x)
    return run


def machine() -> str:
    """The CPU's model name and core count, as /proc/cpuinfo names them (else the arch)."""
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    return f"{name}, {os.cpu_count()} cores"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds, smaller runs")
    args = ap.parse_args()
    repeat = 3 if args.quick else 7
    print(f"machine: {machine()}, python {platform.python_version()}, numpy "
          f"{np.__version__}, simpy {simpy.__version__}; CPU time, best of {repeat}")

    bare, free, queued = (t / N for t in best(bare_timeouts, lambda: compute_events(1),
                                              lambda: compute_events(4), repeat=repeat))
    print(f"bare simpy timeout:                  {bare * 1e6:6.2f} us/event")
    for t, what in ((free, "free unit"), (queued, "queued, 4 clients")):
        print(f"timing-only compute ({what:17s}): {t * 1e6:6.2f} us/event = {t / bare:4.2f}x "
              "bare (target <= 2.5x)")

    requests = 1000 if args.quick else 3000
    sc = scenario({"name": "mlp", "depth": 15}, requests, 4)
    part, _ = best_phases(sc, True, repeat=max(repeat // 2, 2))
    total, _ = whole(sc, True, repeat=max(repeat // 2, 2))
    n = part["events"]
    print(f"timing-only api.run, 16-block mlp, {requests} requests of 4 on one device, "
          f"{n:.0f} compute events, per compute event:")
    for key in ("build", "simulate", "tables"):
        print(f"  {key:9s} {part[key] / n * 1e6:6.2f} us = {part[key] / n / bare:5.2f}x bare")
    print(f"  api.run   {total / n * 1e6:6.2f} us = {total / n / bare:5.2f}x bare (target <= 5x)")

    print("real mode, api.run against the plain forward (chain.forward per request), "
          "batch 32, one BLAS thread each:")
    cases = [("mobilenet_small", 16), ("resnet_small", 16), ("tiny_transformer", 16),
             ("lenet", 16), ("mlp", 200 if args.quick else 2000)]
    for name, requests in cases:
        sc = scenario({"name": name}, requests, 32)
        plain = plain_forward(sc)
        part, plain_t = best_phases(sc, False, repeat=repeat, also=plain)
        total, plain_t2 = whole(sc, False, repeat=repeat, also=plain)
        plain_t = min(plain_t, plain_t2)
        target = "<= 2x" if name == "mlp" else "<= 1.05x"
        print(f"  {name:16s} {requests:5d} requests: plain {plain_t * 1e3:7.1f} ms; api.run "
              f"{total * 1e3:7.1f} ms = {total / plain_t:5.2f}x (target {target}); of it build "
              f"{part['build'] / plain_t:4.2f}x, simulate {part['simulate'] / plain_t:4.2f}x, "
              f"tables {part['tables'] / plain_t:4.2f}x")


if __name__ == "__main__":
    main()
