"""Scaling benchmark: simulator time per simulated event as the pool grows (issue 14).

Run: .venv/bin/python bench/scaling.py [--families NAME ...] [--passes 2] [--gc off]
[--json FILE] (about three minutes on 2 busy cores). For each family a scenario is built
per pool size N, run timing-only through `simdl.api.run` (nothing written), and its
events counted: the event log's compute and transfer rows, the kernels and flows that
move the clock. The time is the whole `api.run` (world, plan, simulation, result
tables), so work that grows with the pool shows wherever it is. It is the process's CPU
time: on a shared machine, what the run itself costs (a run uses one thread; on an idle
machine it is its wall time, printed beside it). Points run interleaved, every family's
sizes in each pass, and each keeps its best pass. The figure per family is max/min of
the per-event cost over its sizes: flat means <= 1.5. Each point also runs with twice
the work (requests or steps, `doubled`): what that adds over the events it adds is the
marginal cost per event, free of the fixed work of a run (world, plan, per-device
setup), which at 1,024 replicas and 20,000 events is spread over 18 events a replica.

Every pool is N desktop PCs on the `home` network, each wired by its own Ethernet port
to the router: flows between different pairs share no link, so the network itself does
not put every flow on one bottleneck as N grows (a Wi-Fi star would). Workloads are
sized so each point has about TARGET_EVENTS events (more where one step already has
more), and so the mix of kernels and transfers, which cost differently, stays the same
across N (a pipeline gets 2 blocks per stage).
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import simpy

from kernels import machine
from simdl import api, budget
from simdl.scenario import Scenario, parse
from simdl.world import build

#: Events (compute + transfer rows) each point aims for.
TARGET_EVENTS = 20_000
#: The pool sizes of issue 14; budget.MAX_DEVICES is raised for the run to allow them.
POOL_LIMIT = 1024 + 1


def pool(n: int) -> list[dict[str, Any]]:
    return [{"name": "pc", "type": "desktop_pc", "count": n}]


def names(n: int) -> list[str]:
    return [f"pc{i}" for i in range(n)]


def mlp(depth: int) -> dict[str, Any]:
    return {"name": "mlp", "in_dim": 32, "hidden": 32, "depth": depth, "n_classes": 4}


#: (N, target events) -> a scenario as a dict, for simdl.scenario.parse.
Build = Callable[[int, int], dict[str, Any]]


@dataclass(frozen=True)
class Family:
    """Pool sizes and a scenario per size, built to give about `target` events."""

    sizes: tuple[int, ...]
    scenario: Build


# -- inference -------------------------------------------------------------------------------

PIPE_BLOCKS, PIPE_MICRO = 2, 4   # blocks per stage, micro-batches per request


def cuts(n: int) -> list[int]:
    """Two blocks per stage, given: `cuts: auto` plans by dynamic programming in
    O(stages x blocks^2), a cost of planning, timed apart (`plan_auto`)."""
    return list(range(PIPE_BLOCKS, PIPE_BLOCKS * n, PIPE_BLOCKS))


def pipeline(n: int, target: int) -> dict[str, Any]:
    """An mlp of 2 blocks per stage cut over N stages, 4 micro-batches, N requests in
    flight. Per micro-batch: 2N kernels and N transfers (the last one home), so the mix
    of kernels and transfers, which cost differently, stays the same."""
    per_request = PIPE_MICRO * (PIPE_BLOCKS + 1) * n
    return {"name": "scaling", "devices": pool(n), "network": {"kind": "home"},
            "model": mlp(PIPE_BLOCKS * n - 1),
            "workload": {"kind": "inference", "requests": math.ceil(target / per_request),
                         "batch": 8, "source": "pc0",
                         "arrival": {"kind": "closed", "concurrency": n}},
            "strategies": [{"name": "pipeline", "devices": names(n), "cuts": cuts(n),
                            "microbatches": PIPE_MICRO}]}


def data_parallel(dispatch: str) -> Build:
    def scenario(n: int, target: int) -> dict[str, Any]:
        """A replica of a 3-block mlp per PC, requests from pc0, N in flight. Per
        request: 3 kernels and 2 transfers (none when pc0 serves it)."""
        return {"name": "scaling", "devices": pool(n), "network": {"kind": "home"},
                "model": mlp(2),
                "workload": {"kind": "inference", "requests": max(math.ceil(target / 5), 2 * n),
                             "batch": 8, "source": "pc0",
                             "arrival": {"kind": "closed", "concurrency": n}},
                "strategies": [{"name": "data_parallel", "devices": names(n),
                                "dispatch": dispatch}]}
    return scenario


# -- training --------------------------------------------------------------------------------

def training(strategy: dict[str, Any], transfers: Callable[[int], int]) -> Build:
    def scenario(n: int, target: int) -> dict[str, Any]:
        """N workers train a 3-block mlp on a batch of 4 per worker (each owns its data).
        Per step: 7 kernels per worker (3 forward, 3 backward, the optimizer) and the
        sync's transfers."""
        per_step = 7 * n + transfers(n)
        return {"name": "scaling", "devices": pool(n), "network": {"kind": "home"},
                "model": mlp(2),
                "workload": {"kind": "training", "steps": math.ceil(target / per_step),
                             "batch": 4 * n, "lr": 0.05},
                "strategies": [strategy]}
    return scenario


def pipeline_train(n: int, target: int) -> dict[str, Any]:
    """GPipe training of an mlp of 2 blocks per stage over N stages, 4 micro-batches.
    Per step: 2N forward and 2N backward kernels per micro-batch, N optimizer kernels,
    2(N - 1) transfers per micro-batch (activations, gradients)."""
    per_step = PIPE_MICRO * (4 * n + 2 * (n - 1)) + n
    return {"name": "scaling", "devices": pool(n), "network": {"kind": "home"},
            "model": mlp(PIPE_BLOCKS * n - 1),
            "workload": {"kind": "training", "steps": math.ceil(target / per_step),
                         "batch": 16, "lr": 0.05, "data_on": ["pc0"]},
            "strategies": [{"name": "pipeline_train", "devices": names(n), "cuts": cuts(n),
                            "microbatches": PIPE_MICRO}]}


FAMILIES: dict[str, Family] = {
    "pipeline": Family((2, 4, 8, 16, 32, 64), pipeline),
    "pipeline-train": Family((2, 4, 8, 16, 32, 64), pipeline_train),
    "dp-round-robin": Family((4, 16, 64, 256, 1024), data_parallel("round_robin")),
    "dp-least-loaded": Family((4, 16, 64, 256, 1024), data_parallel("least_loaded")),
    "ring-allreduce": Family((4, 8, 16, 32, 64, 128, 256), training(
        {"name": "allreduce", "algorithm": "ring"}, lambda n: 2 * n * (n - 1))),
    "tree-allreduce": Family((4, 16, 64, 256), training(
        {"name": "allreduce", "algorithm": "tree"}, lambda n: 2 * (n - 1))),
    "ps-bsp": Family((4, 16, 64, 256), training(
        {"name": "parameter_server", "servers": ["pc0"], "mode": "bsp"},
        lambda n: 2 * (n - 1))),
    "ps-asp": Family((4, 16, 64, 256), training(
        {"name": "parameter_server", "servers": ["pc0"], "mode": "asp"},
        lambda n: 2 * (n - 1))),
}


def measure(sc: Scenario) -> tuple[float, float, int, int]:
    """(CPU seconds of api.run, its wall seconds, compute + transfer rows, all rows)."""
    t, w = time.process_time(), time.perf_counter()
    run = api.run(sc, timing_only=True)
    cpu, wall = time.process_time() - t, time.perf_counter() - w
    kinds = run.results[0].events.kind
    return cpu, wall, int(kinds.isin(("compute", "transfer")).sum()), len(kinds)


def doubled(data: dict[str, Any]) -> dict[str, Any]:
    """The same scenario with twice the work: twice the requests, or twice the steps."""
    out = copy.deepcopy(data)
    load = out["workload"]
    load["steps" if load["kind"] == "training" else "requests"] *= 2
    return out


def planning(family: str, n: int) -> float:
    """CPU seconds of making the family's plan at N with `cuts: auto` (no run)."""
    data = FAMILIES[family].scenario(n, 1)
    data["strategies"][0].pop("cuts")
    sc = parse(data)
    world = build(sc, timing_only=True)
    make = api.train_plan if sc.workload.kind == "training" else api.plan
    t = time.process_time()
    make(world, sc.strategies[0], 0)
    return time.process_time() - t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", choices=sorted(FAMILIES), default=list(FAMILIES))
    parser.add_argument("--passes", type=int, default=2, help="best of this many (default 2)")
    parser.add_argument("--target", type=int, default=TARGET_EVENTS, help="events per point")
    parser.add_argument("--gc", choices=("on", "off"), default="on",
                        help="off: Python's cyclic garbage collector disabled during runs")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    budget.MAX_DEVICES = max(budget.MAX_DEVICES, POOL_LIMIT)
    where = os.path.dirname(api.__file__)
    print(f"machine: {machine()}; simpy {simpy.__version__}; simdl from {where}; "
          f"gc {args.gc}; load average {os.getloadavg()[0]:.2f}", flush=True)
    sized = [(f, n) for f in args.families for n in FAMILIES[f].sizes]
    points = [(f, n, k) for f, n in sized for k in (1, 2)]  # k: once or twice the work
    data = {(f, n): FAMILIES[f].scenario(n, args.target) for f, n in sized}
    scenarios = {(f, n, k): parse(data[f, n] if k == 1 else doubled(data[f, n]))
                 for f, n, k in points}
    for f in args.families:  # imports and first-call caches are not the pool's cost
        measure(parse(FAMILIES[f].scenario(FAMILIES[f].sizes[0], 200)))
    best: dict[tuple[str, int, int], tuple[float, float, int, int]] = {}
    t0 = time.perf_counter()
    for k in range(args.passes):
        for p in points:
            gc.collect()
            if args.gc == "off":
                gc.disable()
            got = measure(scenarios[p])
            gc.enable()
            if p not in best or got[0] < best[p][0]:
                best[p] = got
            print(f"  pass {k + 1}: {p[0]} N={p[1]} x{p[2]}: {got[0]:.2f} s", flush=True)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; load average {os.getloadavg()[0]:.2f}\n")
    print("us/event: the run's CPU time over its events; marginal: what twice the work adds,\n"
          "over the events it adds (the run's fixed work, world, plan and per-device setup,\n"
          "drops out); setup: the rest, CPU ms not proportional to events.\n")
    print("| family | N | events | log rows | CPU s | wall s | us/event | / smallest N "
          "| marginal us/event | / smallest N | setup ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    out: dict[str, Any] = {"machine": machine(), "simdl": where, "gc": args.gc, "families": {}}
    for f in args.families:
        rows = [(n, *best[(f, n, 1)]) for n in FAMILIES[f].sizes]
        per = {n: cpu / events * 1e6 for n, cpu, _, events, _ in rows}
        twice = {n: best[(f, n, 2)] for n in FAMILIES[f].sizes}
        marginal = {n: (twice[n][0] - cpu) / (twice[n][2] - events) * 1e6
                    for n, cpu, _, events, _ in rows}
        first, first_m = per[rows[0][0]], marginal[rows[0][0]]
        for n, cpu, wall, events, total in rows:
            setup = (cpu - marginal[n] * events / 1e6) * 1e3
            print(f"| {f} | {n:,} | {events:,} | {total:,} | {cpu:.2f} | {wall:.2f} | "
                  f"{per[n]:.1f} | {per[n] / first:.2f}x | {marginal[n]:.1f} | "
                  f"{marginal[n] / first_m:.2f}x | {setup:.0f} |")
        ratio = max(per.values()) / min(per.values())
        ratio_m = max(marginal.values()) / min(marginal.values())
        print(f"| **{f}** | | | | | | | **max/min {ratio:.2f}x** | | **max/min {ratio_m:.2f}x** | |")
        out["families"][f] = {"us_per_event": {str(n): per[n] for n in per}, "ratio": ratio,
                              "marginal_us_per_event": {str(n): marginal[n] for n in marginal},
                              "marginal_ratio": ratio_m,
                              "events": {str(n): e for n, _, _, e, _ in rows}}
    for f in ("pipeline", "pipeline-train"):
        if f in args.families:
            n = FAMILIES[f].sizes
            seconds = {m: planning(f, m) for m in (n[0], n[-1])}
            print(f"\n{f}: planning alone with `cuts: auto`: "
                  + ", ".join(f"N={m}: {v:.3f} s" for m, v in seconds.items()))
            out["families"][f]["plan_auto_s"] = {str(m): v for m, v in seconds.items()}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
