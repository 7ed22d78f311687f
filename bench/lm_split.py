"""What the exact generation split search costs (`plan.lm_split.best_path`, behind
`cuts: auto` and `auto` for generation), against one timing-only simulation of the same
pool's workload: scenarios/llm_sbc_cluster.yaml, 8 boards, Llama 3 8B (34 blocks).
Medians of 5 interleaved runs in one process."""
import time
from pathlib import Path

from simdl import api
from simdl.plan.lm_split import best_path
from simdl.scenario import load
from simdl.sim import generation
from simdl.sim.engine import Simulator
from simdl.world import build

sc = load(Path(__file__).resolve().parents[1] / "scenarios" / "llm_sbc_cluster.yaml")
world = build(sc, timing_only=True)
k = next(i for i, e in enumerate(sc.strategies) if e.label == "8-boards")


def search() -> None:
    best_path(world, list(world.devices))


def simulate() -> None:
    p = api.plan(world, sc.strategies[k], k)
    generation.execute(p, world, Simulator(world.devices, world.network, timing_only=True))


a, b = [], []
for _ in range(5):
    t = time.perf_counter()
    search()
    a.append(time.perf_counter() - t)
    t = time.perf_counter()
    simulate()
    b.append(time.perf_counter() - t)
a.sort()
b.sort()
print(f"best_path over 8 boards (34 blocks): median {a[2]:.3f} s; one simulation of the "
      f"8-stage pipeline's workload: {b[2]:.3f} s; ratio {a[2] / b[2]:.1f}")
