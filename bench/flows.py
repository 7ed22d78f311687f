"""Flow benchmark: 1,000 stations on one Wi-Fi AP, 10,000 transfers, on simdl and on SimGrid.

Run: .venv/bin/python bench/flows.py   (figures go in bench/README.md)

The case: `wifi_star` with its defaults (780 Mbps of airtime, 1 ms per hop, 100 us of
overhead per transfer), 1,000 stations of 50 MB/s. Each station sends 10 transfers one
after the other, each to a uniformly drawn other station, of a uniform whole number of
bytes in [100,000, 2,000,000] (stream "bench.flows" of seed 0): 10,000 transfers, 1,000
in flight at the peak. Whole bytes because SimGrid's sizes are integers.

SimGrid 3.32 ships no such case: at tag v3.32 of github.com/simgrid/simgrid (commit
e8d2ff8), its Wi-Fi examples and tests (examples/platforms/wifi*.xml, teshsuite/models/
wifi_usage*, teshsuite/python/platform-mix) have a few stations each and no workload
of this size. The case is this benchmark's own, run on both simulators.
When Debian's python3-simgrid (3.32) is installed, bench/simgrid_case.py runs it on
SimGrid as a subprocess of Debian's /usr/bin/python3 (or $SIMGRID_PYTHON); that file
says how the platform and SimGrid's model options make SimGrid compute the same max-min
sharing. The sides alternate, twice each; the best wall time of each (env.run and
Engine.run: the simulation, not building the platform) is printed with their ratio, and the largest
difference between the end times of the same transfer. Without SimGrid, only simdl's
figures are printed.

The end times differ by tens of units in the last place, not zero: SimGrid weighs
each flow's share by 1 / its route latency, and 1 / 2.1 ms is not exact in binary, so
its sums round differently. With power-of-two latencies and equal stations the two
agree bit for bit; tests/sim/test_flows_simgrid.py pins the agreement on random pools.

Then `sharing: rtt` on the same case, alternating with the other two: every route here has
the same latency, so its shares are max-min's, and the figure is the cost of the weighted
solver (simdl/sim/sharing.py) and how close it comes to SimGrid, which always weighs.

Also times the numpy solver against the plain-Python reference of tests/hw/test_maxmin.py
on 1,000-flow snapshots, in the same process.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import simpy
from kernels import machine

from simdl.hw.maxmin import max_min_hops, max_min_rates
from simdl.hw.network import Network
from simdl.hw.topologies import calibrated, wifi_star
from simdl.rng import stream
from simdl.sim.flows import Flows
from simdl.sim.sharing import weighted_hops

STATIONS = 1_000
PER_STATION = 10
RATE = 50e6                       # bytes/s, each station's Wi-Fi goodput
SIZES = (100_000, 2_000_000)      # bytes, both ends included
SEED = 0
REPEAT = 2                        # runs per side, alternating
HERE = Path(__file__).resolve().parent
SIMGRID_PYTHON = os.environ.get("SIMGRID_PYTHON", "/usr/bin/python3")


@dataclass(frozen=True)
class Station:
    interfaces: dict


def make_case() -> tuple[Network, dict]:
    """simdl's network and the case (see case_of)."""
    rng = stream(SEED, "bench.flows")
    names = [f"d{i}" for i in range(STATIONS)]
    net = wifi_star({n: Station({"wifi": RATE}) for n in names})
    dsts = (np.arange(STATIONS)[:, None]
            + rng.integers(1, STATIONS, (STATIONS, PER_STATION))) % STATIONS
    sizes = rng.integers(SIZES[0], SIZES[1] + 1, (STATIONS, PER_STATION))
    return net, case_of(net, [list(zip(dsts[i].tolist(), sizes[i].tolist()))
                              for i in range(STATIONS)])


def case_of(net: Network, transfers: list[list[tuple[int, int]]]) -> dict:
    """A case as plain JSON data, for both simulators: `net` is a wifi_star of Wi-Fi
    stations, and transfers[i] lists station i's (destination index, bytes) in sending
    order. Rates, latency, airtime and overhead are read back from `net`, so SimGrid
    gets the numbers simdl uses."""
    names = list(net.devices)
    return {"stations": names, "rates": [net.capacity[f"{n}>ap"] for n in names],
            "airtime": net.capacity["ap.air"], "latency": net.route(names[0], "ap").latency,
            "overhead": net.overhead, "transfers": transfers}


def links_case_of(net: Network, transfers: list[list[tuple[int, int]]],
                  bandwidth_factor: float = 1.0, latency_factor: float = 1.0) -> dict:
    """A case of any network, for `sharing: rtt` (simgrid_case.py's "links" kind): every
    resource of `net` with its capacity and latency (a medium has none), the route of each
    (source, destination) pair that sends, and the factors SimGrid is to apply. `net` is
    the network as built, before simdl.hw.topologies.calibrated's factors; the stations
    are its devices."""
    latency = {}
    for link in net.links:
        latency[f"{link.a}>{link.b}"] = latency[f"{link.b}>{link.a}"] = link.latency
    names = list(net.devices)
    pairs = sorted({(i, dst) for i, sends in enumerate(transfers) for dst, _ in sends})
    return {"kind": "links", "stations": names, "transfers": transfers,
            "resources": [[r, c, latency.get(r, 0.0)] for r, c in net.capacity.items()],
            "routes": [[i, j, list(net.route(names[i], names[j]).resources)] for i, j in pairs],
            "bandwidth_factor": bandwidth_factor, "latency_factor": latency_factor}


def run_simdl(net: Network, case: dict) -> dict:
    """Wall time of env.run, each transfer's end time per station, and the recomputes
    (count, peak flows in flight, time spent in them)."""
    env = simpy.Environment()
    flows = Flows(env, net)
    stats = {"solve_s": 0.0, "peak": 0}
    recompute = flows._recompute

    def timed() -> None:
        t = time.perf_counter()
        recompute()
        stats["solve_s"] += time.perf_counter() - t
        stats["peak"] = max(stats["peak"], flows.active)

    flows._recompute = timed      # every recompute goes through the instance attribute
    names = case["stations"]
    ends: list[list[float]] = [[] for _ in names]

    def sender(i: int):
        for dst, nbytes in case["transfers"][i]:
            flow = yield flows.transfer(names[i], names[dst], float(nbytes))
            ends[i].append(flow.t_end)

    for i in range(len(names)):
        env.process(sender(i))
    t = time.perf_counter()
    env.run()
    wall = time.perf_counter() - t
    return {"wall": wall, "ends": ends, "recomputes": flows.recomputes, **stats}


def simgrid_version() -> str | None:
    """SimGrid's version as SIMGRID_PYTHON imports it, or None if it cannot."""
    try:
        out = subprocess.run([SIMGRID_PYTHON, "-c",
                              "import simgrid; print(simgrid.simgrid_version)"],
                             capture_output=True, text=True, check=False)
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def run_simgrid(case: dict) -> dict:
    """bench/simgrid_case.py on `case`: {"wall": s, "ends": like run_simdl's}."""
    out = subprocess.run([SIMGRID_PYTHON, str(HERE / "simgrid_case.py")], input=json.dumps(case),
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def end_gap(a: list[list[float]], b: list[list[float]]) -> tuple[float, float, float]:
    """Largest difference between matching end times of a and b: in seconds, relative to
    b, and in units in the last place of b (np.spacing)."""
    x, y = np.concatenate(a), np.concatenate(b)
    if x.shape != y.shape:
        raise ValueError(f"{x.size} end times against {y.size}")
    gap = np.abs(x - y)
    return float(gap.max()), float((gap / y).max()), float((gap / np.spacing(y)).max())


def reference_solver():
    path = HERE.parent / "tests" / "hw" / "test_maxmin.py"
    spec = importlib.util.spec_from_file_location("maxmin_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.reference_rates


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


def solvers() -> list[tuple[str, float, float, float, float]]:
    rng = stream(SEED, "bench.flows.snapshot")
    reference = reference_solver()
    rows = []
    cases = {"airtime-bound (1 round)": np.full(STATIONS, 50e6),
             "station-bound (many rounds)": rng.uniform(5e3, 80e3, STATIONS)}
    for name, goodputs in cases.items():
        routes, capacity, arrays = snapshot(goodputs, rng)
        fast, slow = max_min_rates(routes, capacity), reference(routes, capacity)
        assert np.allclose([fast[f] for f in routes], [slow[f] for f in routes], rtol=1e-9)
        penalty = np.full(len(routes), 2e-3)       # rtt: every route 2 ms, as on one AP
        plain, weighted = [], []
        for _ in range(3):                         # alternating: the machine is shared
            plain.append(per_call(partial(max_min_hops, *arrays), 50))
            weighted.append(per_call(partial(weighted_hops, *arrays, penalty), 50))
        rows.append((name, min(plain), per_call(partial(max_min_rates, routes, capacity), 5),
                     per_call(partial(reference, routes, capacity), 1), min(weighted)))
    return rows


def main() -> None:
    print(f"machine: {machine()}; simpy {simpy.__version__}")
    net, case = make_case()
    version = simgrid_version()
    rtt_net = calibrated(net, "rtt")
    ours, rtts, theirs = [], [], []
    for _ in range(REPEAT):
        ours.append(run_simdl(net, case))
        rtts.append(run_simdl(rtt_net, case))
        if version:
            theirs.append(run_simgrid(case))
    sim = min(ours, key=lambda r: r["wall"])
    last = max(max(ends) for ends in sim["ends"])
    print(f"case: {STATIONS} stations on one AP, {STATIONS * PER_STATION} transfers, "
          f"peak {sim['peak']} in flight, last transfer ends at {last:.3f} s simulated")
    print(f"simdl: wall {sim['wall']:.2f} s (best of {REPEAT}); {sim['recomputes']} rate "
          f"recomputes, {1e6 * sim['solve_s'] / sim['recomputes']:.0f} us each "
          f"({sim['solve_s']:.2f} s in recomputes)")
    if version is None:
        print(f"SimGrid: not found ({SIMGRID_PYTHON} cannot import simgrid; "
              "apt-get install python3-simgrid)")
    else:
        sg = min(theirs, key=lambda r: r["wall"])
        gap, rel, ulps = end_gap(sim["ends"], sg["ends"])
        print(f"SimGrid {version}: wall {sg['wall']:.2f} s (best of {REPEAT}); "
              f"simdl / SimGrid = {sim['wall'] / sg['wall']:.2f}x")
        print(f"  end times of the {STATIONS * PER_STATION} transfers: largest difference "
              f"{gap:.2g} s, {rel:.2g} relative, {ulps:.0f} ulps")
    rtt = min(rtts, key=lambda r: r["wall"])
    print(f"simdl sharing: rtt: wall {rtt['wall']:.2f} s (best of {REPEAT}); rtt / maxmin = "
          f"{rtt['wall'] / sim['wall']:.2f}x; {1e6 * rtt['solve_s'] / rtt['recomputes']:.0f} us "
          "per recompute")
    gap, rel, ulps = end_gap(rtt["ends"], sim["ends"])
    print(f"  end times against maxmin: largest difference {gap:.2g} s, {rel:.2g} relative, "
          f"{ulps:.0f} ulps")
    if version is not None:
        gap, rel, ulps = end_gap(rtt["ends"], sg["ends"])
        print(f"  against SimGrid: largest difference {gap:.2g} s, {rel:.2g} relative, "
              f"{ulps:.0f} ulps")
    print("solver on a 1,000-flow snapshot (per call):")
    for name, fill, named, ref, weighted in solvers():
        print(f"  {name}: numpy arrays {1e6 * fill:.0f} us, numpy from names {1e3 * named:.1f} ms,"
              f" pure-Python reference {1e3 * ref:.1f} ms ({ref / fill:.0f}x the arrays); "
              f"weighted (rtt) arrays {1e6 * weighted:.0f} us ({weighted / fill:.2f}x)")


if __name__ == "__main__":
    main()
