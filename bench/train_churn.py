"""What a run with churn costs against the same run without.

Times (wall clock) the same timing-only training plans two ways, interleaved in one
process: with nothing leaving, and while a worker leaves and returns every 40 ms of
simulated time. Prints events (log rows) per wall second and the ratio.

Run: .venv/bin/python bench/train_churn.py   (about a minute)
"""
from __future__ import annotations

import time

from simdl.hw.devices import make_device
from simdl.hw.topologies import wifi_star
from simdl.nn.data import gaussian_mixture
from simdl.nn.models import mlp
from simdl.plan import training as T
from simdl.plan.world import Training, World
from simdl.sim import allreduce, servers
from simdl.sim.engine import Simulator

NAMES = [f"phone{i}" for i in range(8)] + ["hub"]
TRAIN, TEST = gaussian_mixture(n=2000, dim=32, n_classes=4, seed=0).split(0.75)


def world(steps: int = 300) -> World:
    devices = {d: make_device("home_hub" if d == "hub" else "phone_flagship") for d in NAMES}
    load = Training(steps, 64, "sgd", 0.1, 0.0, tuple(NAMES[:-1]), "iid", steps, None)
    return World("bench", 0, {"main": mlp(32, 64, 2, 4)}, devices, wifi_star(devices), load,
                 TEST, train_data=TRAIN)


def churn(sim: Simulator, every: float = 0.04) -> None:
    """phone1..phone7 in turn: gone for `every` s, then back."""
    def go():
        k = 0
        while True:
            d = NAMES[1 + k % 7]
            yield sim.env.timeout(every)
            sim.leave(d, "absent")
            yield sim.env.timeout(every)
            sim.join(d, "present")
            k += 1
    sim.process(go())


def once(protocol, plan, w, with_churn: bool) -> tuple[float, int]:
    sim = Simulator(w.devices, w.network, timing_only=True)
    if with_churn:
        churn(sim)
    t = time.perf_counter()
    job = protocol(plan, w, sim)
    sim.run(until=job.finished)
    return time.perf_counter() - t, len(sim.log.rows)


def main() -> None:
    w = world()
    cases = {
        "ring allreduce": (T.allreduce(w), allreduce.data_parallel),
        "ps bsp": (T.parameter_server(w, ["hub"], workers=NAMES[:-1]), servers.parameter_server),
        "ps ssp": (T.parameter_server(w, ["hub"], workers=NAMES[:-1], mode="ssp"),
                   servers.parameter_server),
    }
    print("case              steady ev/s   churn ev/s  churn/steady")
    for name, (plan, protocol) in cases.items():
        best = {"steady": 1e9, "churn": 1e9}
        rows = {}
        for _ in range(3):  # interleaved: steady, churn, steady, ...
            for key in best:
                s, n = once(protocol, plan, w, key == "churn")
                best[key], rows[key] = min(best[key], s), n
        rate = {k: rows[k] / best[k] for k in best}
        print(f"{name:16s} {rate['steady']:12.0f} {rate['churn']:12.0f} "
              f"{rate['churn'] / rate['steady']:12.2f}x")


if __name__ == "__main__":
    main()
