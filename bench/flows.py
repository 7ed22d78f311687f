"""Flow-model benchmark: 1,000 devices on one access point, 10,000 transfers, ~1,000 in flight.

Run: .venv/bin/python bench/flows.py   (figures go in bench/README.md)
Also times the numpy solver against the plain-Python reference of tests/hw/test_maxmin.py
on the same 1,000-flow snapshot, in the same process, since machines are shared and noisy.
"""
from __future__ import annotations

import importlib.util
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import simpy

from simdl.hw.maxmin import max_min_hops, max_min_rates
from simdl.hw.topologies import wifi_star
from simdl.rng import stream
from simdl.sim.flows import Flows

DEVICES = 1_000
TRANSFERS = 10_000
SEED = 0


@dataclass(frozen=True)
class Station:
    interfaces: dict


def reference_solver():
    path = Path(__file__).resolve().parents[1] / "tests" / "hw" / "test_maxmin.py"
    spec = importlib.util.spec_from_file_location("maxmin_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.reference_rates


def simulate() -> dict:
    rng = stream(SEED, "bench.flows")
    names = [f"d{i}" for i in range(DEVICES)]
    net = wifi_star({n: Station({"wifi": 50e6}) for n in names})
    env = simpy.Environment()
    flows = Flows(env, net)
    per = TRANSFERS // DEVICES
    sizes = rng.uniform(0.1e6, 2e6, (DEVICES, per))
    dsts = (np.arange(DEVICES)[:, None] + rng.integers(1, DEVICES, (DEVICES, per))) % DEVICES
    stats = {"solve_s": 0.0, "peak": 0}
    recompute = flows._recompute

    def timed() -> None:
        t = time.perf_counter()
        recompute()
        stats["solve_s"] += time.perf_counter() - t
        stats["peak"] = max(stats["peak"], flows.active)

    flows._recompute = timed      # every recompute goes through the instance attribute
    done = []

    def sender(i: int):
        for k in range(per):
            flow = yield flows.transfer(names[i], names[dsts[i, k]], float(sizes[i, k]))
            done.append(flow.t_end)

    for i in range(DEVICES):
        env.process(sender(i))
    t = time.perf_counter()
    env.run()
    wall = time.perf_counter() - t
    assert len(done) == TRANSFERS
    return {"wall": wall, "sim_end": max(done), "recomputes": flows.recomputes, **stats}


def snapshot(goodputs: np.ndarray, rng: np.random.Generator):
    """1,000 station-to-station flows on one AP, as names and as hop arrays."""
    n = len(goodputs)
    capacity = {"air": 97.5e6}                   # 780 Mbps, the default airtime
    for i, g in enumerate(goodputs):
        capacity[f"d{i}>ap"] = capacity[f"ap>d{i}"] = float(g)
    dst = (np.arange(n) + rng.integers(1, n, n)) % n
    routes = {f: [f"d{f}>ap", "air", f"ap>d{d}", "air"] for f, d in enumerate(dst.tolist())}
    index = {r: i for i, r in enumerate(capacity)}
    hops = np.array([[index[r] for r in routes[f]] for f in range(n)]).T
    return routes, capacity, (np.ascontiguousarray(hops), np.array(list(capacity.values())))


def per_call(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(repeat):
            fn()
        best = min(best, (time.perf_counter() - t) / repeat)
    return best


def solvers() -> list[tuple[str, float, float, float]]:
    rng = stream(SEED, "bench.flows.snapshot")
    reference = reference_solver()
    rows = []
    cases = {"airtime-bound (1 round)": np.full(DEVICES, 50e6),
             "station-bound (many rounds)": rng.uniform(5e3, 80e3, DEVICES)}
    for name, goodputs in cases.items():
        routes, capacity, arrays = snapshot(goodputs, rng)
        fast, slow = max_min_rates(routes, capacity), reference(routes, capacity)
        assert np.allclose([fast[f] for f in routes], [slow[f] for f in routes], rtol=1e-9)
        rows.append((name, per_call(lambda: max_min_hops(*arrays), 50),
                     per_call(lambda: max_min_rates(routes, capacity), 5),
                     per_call(lambda: reference(routes, capacity), 1)))
    return rows


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")),
                 platform.machine())
    return (f"{model}, {os.cpu_count()} cores, numpy {np.__version__}, "
            f"python {platform.python_version()}")


def main() -> None:
    print(f"machine: {machine()}")
    sim = simulate()
    print(f"simulation: {DEVICES} devices on one AP, {TRANSFERS} transfers, "
          f"peak {sim['peak']} flows in flight, simulated {sim['sim_end']:.1f} s")
    print(f"  wall {sim['wall']:.2f} s; {sim['recomputes']} rate recomputes; "
          f"{1e6 * sim['solve_s'] / sim['recomputes']:.0f} us per recompute "
          f"({sim['solve_s']:.2f} s in recomputes)")
    print("solver on a 1,000-flow snapshot (per call):")
    for name, fill, named, ref in solvers():
        print(f"  {name}: numpy arrays {1e6 * fill:.0f} us, numpy from names {1e3 * named:.1f} ms,"
              f" pure-Python reference {1e3 * ref:.1f} ms ({ref / fill:.0f}x the arrays)")


if __name__ == "__main__":
    main()
