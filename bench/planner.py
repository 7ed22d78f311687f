"""Planner benchmark (issue 15): search time as the pool grows, the heuristic's gap to the
exact search, the planner's simulated throughput against the baselines a user would try,
and the estimator's error against the simulator, all in one run.

Run: .venv/bin/python bench/planner.py [--quick]   (figures go in bench/README.md)

1. Search time (CPU time of this process, best of 2) for pools of 4 to 64 devices of the
   catalogue on a home network, a 60-block chain, objective throughput (target: 64 x 60
   under 5 s). Pools above 8 devices are searched by the heuristic.
2. Gap: random pools of 6 devices (random catalogue types, memories and a random
   chain), each searched exactly and by the heuristic forced onto a shortlist of 3;
   gap = how much worse the heuristic's plan scores (target: median 0 %, worst <= 5 %).
3. Shipped scenarios: the planner's plan (top 3 re-scored by simulation) and every
   baseline, each simulated under a saturating closed loop; requests per second.
4. The estimator against the simulator on every strategy of the shipped inference
   scenarios, on their own workloads: relative error of throughput and p50 latency.
5. Training: the step-time estimate of every strategy of the shipped training
   scenarios against the simulated run, and the training search's plan simulated.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernels import machine

from simdl import api
from simdl.errors import PlanError
from simdl.plan.baselines import baselines
from simdl.plan.plan import check
from simdl.plan.search import search
from simdl.plan.train_estimate import train_estimate
from simdl.plan.train_search import train_search
from simdl.planner import choose, errors, saturated, simulate
from simdl.scenario import parse
from simdl.sim.engine import Simulator
from simdl.sim.training import train
from simdl.world import build

ROOT = Path(__file__).resolve().parent.parent
TYPES = ["phone_flagship", "phone_midrange", "phone_lowend", "tablet", "smartwatch", "smart_tv",
         "laptop", "desktop_pc", "car_head_unit", "home_hub"]
TRAINING = ["train_ring_vs_ps", "train_compression", "train_fedavg", "train_gossip",
            "train_pipeline"]
INFERENCE = ["quickstart", "hybrid", "slow_link", "fast_link", "data_parallel", "offload",
             "privacy", "priorities", "tensor_parallel", "compressed"]


def pool_world(devices: list[dict], depth: int = 59, hidden: int = 256, seed: int = 0,
               requests: int = 50, network: dict | None = None):
    """A world of `devices` (on a home network unless `network` says) with an mlp of
    depth + 1 blocks."""
    sc = parse({"name": "bench", "seed": seed, "devices": devices,
                "network": network or {"kind": "home"},
                "model": {"name": "mlp", "in_dim": 256, "hidden": hidden, "depth": depth,
                          "n_classes": 10},
                "workload": {"kind": "inference", "requests": requests, "batch": 8,
                             "arrival": {"kind": "poisson", "rate": 20},
                             "source": devices[0]["name"]},
                "strategies": [{"name": "single", "device": devices[0]["name"]}]})
    return build(sc, timing_only=True)


def cpu(fn, repeat: int = 2) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.process_time()
        out = fn()
        best = min(best, time.process_time() - t)
    return best, out


def search_time(sizes: list[int]) -> None:
    print("\n## 1. Search time, 60-block chain, objective throughput")
    print("| devices | method | plans estimated | CPU s | vs 5 s target |")
    print("|---:|---|---:|---:|---:|")
    for n in sizes:
        devs = [{"name": f"{t}{i}", "type": t} for i, t in zip(range(n), TYPES * 10)]
        world = pool_world(devs)
        seconds, found = cpu(lambda w=world: search(w, "throughput"))
        print(f"| {n} | {found.method} | {found.examined} | {seconds:.2f} | {seconds / 5:.2f} |")


def random_pool(rng: np.random.Generator, n: int, seed: int, mesh: bool):
    """n random catalogue devices with random memories and a random chain; on a mesh of
    dedicated links of random bandwidths (one latency: every route is its direct link,
    so no two hops share a link and the exact search is exact), or a home network."""
    devs = [{"name": f"d{i}", "type": TYPES[int(rng.integers(len(TYPES)))],
             "memory": f"{int(rng.integers(2, 400))}MiB"} for i in range(n)]
    network = None
    if mesh:
        network = {"kind": "links", "links": [
            {"a": f"d{i}", "b": f"d{j}", "bandwidth": f"{int(rng.integers(1, 1000))}Mbps",
             "latency": "1ms"} for i in range(n) for j in range(i + 1, n)]}
    return pool_world(devs, depth=int(rng.integers(5, 12)), hidden=int(rng.choice([256, 1024, 2048])),
                      seed=seed, network=network)


def gap(instances: int) -> None:
    print(f"\n## 2. Heuristic (shortlist of 3, then greedy) against exact search, "
          f"{instances} random pools of 6 devices")
    print("| network | objective | median gap | worst gap | heuristic as good |")
    print("|---|---|---:|---:|---:|")
    rng = np.random.default_rng(15)
    for mesh in (True, False):
        worlds = [random_pool(rng, 6, s, mesh) for s in range(instances)]
        for objective in ("throughput", "latency", "energy"):
            gaps = []
            for world in worlds:
                try:
                    exact = search(world, objective, exact_up_to=8).best.score
                except PlanError:
                    continue
                heur = search(world, objective, exact_up_to=3).best.score
                gaps.append(heur / exact - 1.0)
            g = np.array(gaps)
            print(f"| {'dedicated links' if mesh else 'home Wi-Fi'} | {objective} | "
                  f"{np.median(g):.1%} | {g.max():.1%} | {int(np.sum(g <= 1e-9))} of {len(g)} |")


def shipped(names: list[str]) -> None:
    print("\n## 3. Simulated throughput (requests/s, saturating closed loop): planner and "
          "baselines on the shipped scenarios")
    cols = ["fastest_single", "equal_layers", "flops_proportional", "memory_proportional",
            "ring_listed"]
    print("| scenario | planner | " + " | ".join(cols) + " | planner / best baseline |")
    print("|---|---:|" + "---:|" * len(cols) + "---:|")
    for name in names:
        world = build(api.resolve(ROOT / "scenarios" / f"{name}.yaml"), timing_only=True)
        full = saturated(world)
        chosen = choose(world, "throughput")
        mine = simulate(chosen.plan, full).throughput
        cells, best = [], 0.0
        for plan in baselines(world).values():
            try:
                check(plan, world)
            except PlanError:
                cells.append("refused")
                continue
            rps = simulate(plan, full).throughput
            best = max(best, rps)
            cells.append(f"{rps:.1f}")
        print(f"| {name} | {mine:.1f} | " + " | ".join(cells) + f" | {mine / best:.2f}x |")
        print(f"|  | {chosen.plan.describe()} |" + " |" * (len(cols) + 1))


def estimator(names: list[str]) -> None:
    print("\n## 4. Estimator against simulator, every strategy of the shipped inference "
          "scenarios (their own workloads)")
    print("| scenario | plans | exact | throughput err median / max | p50 err median / max |")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        sc = api.resolve(ROOT / "scenarios" / f"{name}.yaml")
        world = build(sc, timing_only=True)
        plans = [api.plan(world, entry, i) for i, entry in api.selected(sc, None)]
        df = errors(plans, world)
        t, p = df.throughput_rps_err.abs(), df.p50_s_err.abs()
        print(f"| {name} | {len(df)} | {int(df.exact.sum())} | {t.median():.1e} / {t.max():.1e} |"
              f" {p.median():.1e} / {p.max():.1e} |")


def training(names: list[str]) -> None:
    print("\n## 5. Training: the estimate of the whole run against the simulator, and the "
          "training search's plan against the scenario's own strategies (simulated seconds)")
    print("| scenario | plans | exact | error median / max | best listed (s) | search's plan (s) | "
          "search's plan |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name in names:
        sc = api.resolve(ROOT / "scenarios" / f"{name}.yaml")
        world = build(sc, timing_only=True)
        errs, exact, listed = [], 0, []
        for i, entry in api.selected(sc, None):
            tp = api.train_plan(world, entry, i)
            est, took = train_estimate(tp, world), trained(tp, world)
            errs.append(abs(est.total - took) / took)
            exact += est.exact
            listed.append(took)
        best = train_search(world).best.plan
        print(f"| {name} | {len(errs)} | {exact} | {np.median(errs):.1e} / {max(errs):.1e} | "
              f"{min(listed):.3f} | {trained(best, world):.3f} | {best.describe()} "
              f"({', '.join(best.workers)}) |")


def trained(plan, world) -> float:
    """Simulated seconds of the training run under `plan`."""
    sim = Simulator(world.devices, world.network, timing_only=True)
    train(plan, world, sim)
    return sim.now


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer pools and instances")
    args = ap.parse_args()
    print(f"# bench/planner.py\nmachine: {machine()}")
    search_time([4, 8, 16] if args.quick else [4, 8, 16, 32, 64])
    gap(5 if args.quick else 30)
    shipped(INFERENCE[:3] if args.quick else INFERENCE)
    estimator(INFERENCE[:3] if args.quick else INFERENCE)
    training(TRAINING[:2] if args.quick else TRAINING)


if __name__ == "__main__":
    main()
