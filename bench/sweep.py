"""Sweep benchmark: timing-only points per second on 1 and 2 local worker processes and
on a Dask LocalCluster of 2 workers, all in one run.

Run: .venv/bin/python bench/sweep.py [--points N] [--rounds R]   (figures go in bench/README.md)

The points are scenarios/quickstart.yaml under N derived seeds, run timing-only. Each
executor is started once and warmed (one point per worker: the imports), then the rounds
interleave the executors so a slow spell of the shared machine hits them alike; each
round writes a fresh sweep folder. Wall-clock time (the workers run in parallel), best
round per executor.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import simpy
import yaml

from simdl import sweep
from simdl.cluster import executor

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, numpy {np.__version__}, simpy {simpy.__version__}")
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        spec = Path(tmp) / "bench.yaml"
        spec.write_text(yaml.safe_dump({"scenario": str(ROOT / "scenarios" / "quickstart.yaml"),
                                        "seeds": args.points + 2}))
        every = sweep.points(spec, timing_only=True)
        warm, pts = every[:2], every[2:]
        pools = {"processes 1": stack.enter_context(executor(None, 1)),
                 "processes 2": stack.enter_context(executor(None, 2))}
        try:
            pools["dask local:2"] = stack.enter_context(executor("local:2"))
        except Exception as err:  # Dask missing: the process pools alone
            print(f"dask: not measured ({type(err).__name__}: {err})")
        for name, pool in pools.items():
            sweep.execute(warm, Path(tmp) / f"warm {name}", pool)
        best = {name: float("inf") for name in pools}
        for r in range(args.rounds):
            for name, pool in pools.items():
                t = time.perf_counter()
                outcome = sweep.execute(pts, Path(tmp) / f"{name} {r}", pool)
                best[name] = min(best[name], time.perf_counter() - t)
                assert outcome.ran == len(pts) and not outcome.failed, outcome
    base = len(pts) / best["processes 1"]
    print(f"{len(pts)} timing-only points of quickstart (3 strategies each), best of "
          f"{args.rounds} rounds\n")
    print("| executor | s per sweep | points/s | vs 1 process |\n|---|---:|---:|---:|")
    for name, s in best.items():
        print(f"| {name} | {s:.2f} | {len(pts) / s:.2f} | {len(pts) / s / base:.2f}x |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
