"""Engine benchmark: simdl's cost per event against a bare simpy timeout, in one run.

Run: .venv/bin/python bench/engine.py   (figures go in bench/README.md)
Compares ratios measured in the same process, since machines are shared and noisy.
"""
from __future__ import annotations

import platform
import time

import numpy as np
import simpy

from simdl.hw.devices import make_device
from simdl.nn.models import mobilenet_small
from simdl.sim.engine import Simulator

N = 100_000


def best(*fns, repeat: int = 7) -> list[float]:
    """The best time of each function, run interleaved so load hits them alike."""
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, ts in zip(fns, times):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return [min(ts) for ts in times]


def bare_timeouts() -> None:
    env = simpy.Environment()

    def loop():
        for _ in range(N):
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


def model_forward(chain, x, through_sim: bool) -> None:
    if not through_sim:
        chain.forward(x)
        return
    sim = Simulator({"pc": make_device("desktop_pc")})
    costs = chain.costs(len(x))

    def run():
        y = x
        for b, c in enumerate(costs):
            y = yield sim.compute("pc", c.fwd_flops, c.fwd_bytes,
                                  lambda v, b=b: chain.forward(v, start=b, stop=b + 1)[0], (y,))

    sim.process(run())
    sim.run()


def main() -> None:
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}, "
          f"numpy {np.__version__}, simpy {simpy.__version__}")
    bare, free, queued = (t / N for t in best(bare_timeouts, lambda: compute_events(1),
                                              lambda: compute_events(4)))
    print(f"bare simpy timeout:              {bare * 1e6:6.2f} us/event")
    for t, what in ((free, "free unit"), (queued, "queued, 4 clients")):
        print(f"timing-only compute ({what:17s}): {t * 1e6:6.2f} us/event = {t / bare:4.2f}x bare "
              f"(target <= 5x)")
    chain = mobilenet_small(width=16)
    x = np.random.default_rng(0).standard_normal((32, 3, 32, 32)).astype(np.float32)
    plain, sim = best(lambda: model_forward(chain, x, False), lambda: model_forward(chain, x, True))
    print(f"mobilenet_small forward, batch 32: plain {plain * 1e3:.1f} ms, through simdl "
          f"{sim * 1e3:.1f} ms = {sim / plain:.3f}x (target <= 1.10x)")


if __name__ == "__main__":
    main()
