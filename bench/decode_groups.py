"""Decode groups (`microbatches` K) and the wire dtype on generation: simulated figures
and the simulator's own wall time, K interleaved in one run."""
import time
from dataclasses import replace

from simdl import api
from simdl.scenario import parse
from simdl.sim import generation
from simdl.sim.engine import Simulator
from simdl.world import build


def scenario(strategy, wire="fp32", devices=None):
    return parse({"name": "b", "devices": devices or [
        {"name": "phone", "type": "phone_flagship"}, {"name": "laptop", "type": "laptop"}],
        "network": {"kind": "home"},
        "model": {"name": "llm", "preset": "llama3_2_1b", "weights": "q4_0", "wire": wire},
        "workload": {"kind": "generation", "requests": 8, "source": "pc0" if devices else "phone",
                     "prompt": 64, "tokens": 32, "max_batch": 8,
                     "arrival": {"kind": "trace", "times": [0.0] * 8}},
        "strategies": [strategy]})


def once(sc, groups=1):
    world = build(sc, timing_only=True)
    p = replace(api.plan(world, sc.strategies[0], 0), microbatches=groups)
    sim = Simulator(world.devices, world.network, timing_only=True)
    t0 = time.perf_counter()
    made = generation.execute(p, world, sim)
    wall = time.perf_counter() - t0
    end = max(q.finish for q in made.seqs.values())
    tpot = sum((q.finish - q.first) / 31 for q in made.seqs.values()) / 8
    ev = sim.log.frame()
    sent = ev[ev.kind == "transfer"].nbytes.sum()
    return end, tpot, sent, wall


pipe = scenario({"name": "pipeline", "devices": ["phone", "laptop"], "cuts": [9]})
walls = {k: [] for k in (1, 2, 4)}
res = {}
for rep in range(5):
    for k in (1, 2, 4):
        end, tpot, sent, wall = once(pipe, k)
        walls[k].append(wall)
        res[k] = (end, tpot)
print("machine: AMD EPYC, 2 cores, Python 3.11.7, numpy 2.4.6, simpy 4.1.2")
print("pipeline phone|laptop, Llama 3.2 1B q4_0, 8 requests x 32 tokens at t=0, max_batch 8")
for k in (1, 2, 4):
    e, t = res[k]
    print(f"K={k}: makespan {e:.3f} s ({res[1][0] / e:.3f}x K=1's speed), mean TPOT {t * 1e3:.2f} ms, "
          f"sim wall median ratio to K=1 {sorted(walls[k])[2] / sorted(walls[1])[2]:.2f}")
lap = [{"name": "pc", "type": "laptop", "count": 2}]
for wire in ("fp32", "fp16"):
    sc = scenario({"name": "tensor_parallel", "devices": ["pc0", "pc1"], "collective": "star"},
                  wire, lap)
    end, tpot, sent, _ = once(sc)
    if wire == "fp32":
        base = (end, sent)
    print(f"TP star 2 laptops, wire {wire}: bytes sent {sent / 1e6:.2f} MB ({sent / base[1]:.2f}x), "
          f"makespan {end:.3f} s ({base[0] / end:.3f}x speed)")
