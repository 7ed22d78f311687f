"""Several jobs on one pool: what the shared run costs, and what it reports.

Run `.venv/bin/python bench/jobs.py [--rounds 5] [--base DIR]` (about a minute).
1. The simulator's own speed, timing-only, on scenarios/camera_and_federated.yaml: the
   shared run of both jobs (one Simulator, each job on its `JobSim` view) against the
   same two jobs run one after the other alone (`api.run`), interleaved per round, best
   round each. The work simulated differs only by the contention, so the ratio is the
   cost of the views (a delegated attribute per call) and of two logs.
2. With `--base DIR` (a checkout of an earlier commit, e.g. `git archive 2d388ee | tar
   -x -C DIR`): one-job scenarios timed in a fresh process of each tree, alternately,
   best round each: the split of `execute` into start + run must cost nothing.
3. The scenario's jobs table (simulated seconds, not wall clock).
Wall-clock figures are thread CPU seconds (the core's time given to this process).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from kernels import machine
from simdl import api, jobs
from simdl.scenario_jobs import load_any

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios" / "camera_and_federated.yaml"
ONE_JOB = ("quickstart", "train_fedavg", "living_room_churn")
TIMER = """
import sys, time
sys.path.insert(0, {root!r})
from simdl import api
api.run({path!r}, timing_only=True)  # warm: imports, first allocations
t = time.thread_time(); api.run({path!r}, timing_only=True); print(time.thread_time() - t)
"""


def cpu(fn) -> float:
    t = time.thread_time()
    fn()
    return time.thread_time() - t


def shared_vs_alone(rounds: int) -> None:
    sc = load_any(SCENARIO)
    singles = [sc.alone(i) for i in range(len(sc.jobs))]
    alone = lambda: [api.run(s, timing_only=True) for s in singles]
    shared = lambda: jobs._shared(sc, singles, True)
    alone(), shared()  # warm
    a, s = [], []
    for _ in range(rounds):
        a.append(cpu(alone))
        s.append(cpu(shared))
    print(f"camera_and_federated, timing-only, best of {rounds}: alone one after the other "
          f"{min(a):.3f} s, shared {min(s):.3f} s, shared / alone {min(s) / min(a):.3f}")


def base_vs_this(base: Path, rounds: int) -> None:
    print(f"\none-job runs, timing-only, fresh process per tree, best of {rounds}:")
    print("| scenario | base s | this s | this / base |\n|---|---:|---:|---:|")
    for name in ONE_JOB:
        path = str(ROOT / "scenarios" / f"{name}.yaml")
        times: dict[Path, list[float]] = {base: [], ROOT: []}
        for _ in range(rounds):
            for tree in (base, ROOT):
                out = subprocess.run([sys.executable, "-c", TIMER.format(root=str(tree),
                                                                          path=path)],
                                     capture_output=True, text=True, check=True, cwd=tree)
                times[tree].append(float(out.stdout.split()[-1]))
        b, t = min(times[base]), min(times[ROOT])
        print(f"| {name} | {b:.3f} | {t:.3f} | {t / b:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--base", type=Path, help="an earlier tree to compare one-job runs with")
    args = parser.parse_args()
    print(machine())
    shared_vs_alone(args.rounds)
    if args.base:
        base_vs_this(args.base.resolve(), args.rounds)
    print("\njobs.csv (simulated):")
    print(jobs.run(load_any(SCENARIO), timing_only=True).table.to_string(index=False))


if __name__ == "__main__":
    main()
