"""Churn benchmark (issue 16): the engine's events per second of CPU time with 200 devices
coming and going on random availability, against the same run without churn.

Run: .venv/bin/python bench/churn.py [--quick]   (figures go in bench/README.md)

Each of 200 phones on one Wi-Fi AP runs kernels back to back and every 10th kernel sends
its result to the next phone, for SIMULATED seconds, each from its own start time in the
first 3 s (phones in lockstep would start their transfers together, so one max-min solve
would serve 200 of them, and any churn would break that spell: not what is measured). With churn, every phone is up for
exponential times of mean 120 s and away for 30 s (`availability`, its own seed stream):
work in flight is lost, the phone waits for its `arrival` and carries on. The figure is
events scheduled on the clock per CPU second of this process (the machine is shared),
each side's best of REPEAT runs, the sides interleaved after a warm-up run each.
"""
from __future__ import annotations

import argparse
import platform
import time
from types import SimpleNamespace

import numpy as np
import simpy
from engine import machine  # bench/engine.py

from simdl.errors import DeviceGone
from simdl.hw.devices import make_device
from simdl.hw.topologies import wifi_star
from simdl.plan.world import Change
from simdl.rng import stream
from simdl.sim.changes import start_changes
from simdl.sim.engine import Simulator

DEVICES = 200
SIMULATED = 600.0   # seconds of simulated time per run
UP, DOWN = 120.0, 30.0
REPEAT = 3


def run(churn: bool, simulated: float) -> tuple[int, float, int]:
    """(events scheduled, CPU seconds, leaves) of one run."""
    names = [f"phone{i}" for i in range(DEVICES)]
    spec = make_device("phone_flagship")
    devices = dict.fromkeys(names, spec)
    sim = Simulator(devices, wifi_star(devices), timing_only=True)
    if churn:
        changes = tuple(Change("availability", d, up=UP, down=DOWN) for d in names)
        start_changes(SimpleNamespace(changes=changes, seed=0), sim)

    starts = stream(0, "bench/starts").uniform(0.0, 3.0, DEVICES)

    def work(i: int, me: str):
        yield sim.env.timeout(starts[i])
        k = 0
        while sim.now < simulated:
            try:
                yield sim.compute(me, 1e11, 1e7, label="k")  # about a quarter of a second
                k += 1
                if k % 10 == 0:
                    yield sim.transfer(me, names[(i + 1) % DEVICES], 1e5, label="out")
            except DeviceGone as gone:
                if gone.device == me and me in sim.gone:
                    yield sim.arrival(me)

    for i, me in enumerate(names):
        sim.process(work(i, me))
    t = time.process_time()
    sim.run()
    cpu = time.process_time() - t
    return next(sim.env._eid), cpu, int((sim.log.frame().kind == "leave").sum())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    simulated = 60.0 if args.quick else SIMULATED
    print(f"machine: {machine()}, python {platform.python_version()}, numpy "
          f"{np.__version__}, simpy {simpy.__version__}")
    print(f"{DEVICES} devices, {simulated:g} s simulated, availability up {UP:g} s / down "
          f"{DOWN:g} s (means)")
    best: dict[bool, tuple[int, float, int]] = {}
    for churn in (False, True):  # warm-up
        run(churn, simulated)
    for _ in range(1 if args.quick else REPEAT):
        for churn in (False, True):
            events, cpu, leaves = run(churn, simulated)
            if churn not in best or cpu / events < best[churn][1] / best[churn][0]:
                best[churn] = (events, cpu, leaves)
    rate = {}
    for churn, (events, cpu, leaves) in best.items():
        rate[churn] = events / cpu
        print(f"{'churn' if churn else 'no churn'}: {events:,} events in {cpu:.2f} s CPU = "
              f"{rate[churn]:,.0f} events/s ({leaves} leaves)")
    print(f"events/s without churn / with churn: {rate[False] / rate[True]:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
