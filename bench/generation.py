"""Generation benchmark: simulated tokens per wall second, and one sequence's decode step
against a bare simpy timeout, all in one process.

Run: .venv/bin/python bench/generation.py [--quick]   (figures go in bench/README.md)

Llama 3 8B (Q4_0, full size, timing-only, nothing allocated) on eight Raspberry Pi 5
boards on gigabit Ethernet, one pipeline stage each. The throughput run is issue 17's:
1,000 requests of 32 prompt tokens and 256 output tokens, continuous batching of up to
32 sequences. The per-step figure decodes one sequence at a time (max_batch 1) and
divides the run's CPU time by its decode steps, beside the CPU time of as many bare
simpy timeouts (`bench/engine.py`'s yardstick), sides interleaved, best of 3.
"""
from __future__ import annotations

import argparse
import platform

import numpy as np
import simpy

from simdl import api
from simdl.scenario import Scenario, parse

from engine import bare_timeouts, best

BOARDS = 8


def scenario(requests: int, tokens: int, max_batch: int) -> Scenario:
    return parse({
        "name": "bench_generation", "seed": 0,
        "devices": [{"name": "pi", "type": "sbc_rpi5", "count": BOARDS}],
        "network": {"kind": "home"},
        "model": {"name": "llm", "preset": "llama3_8b", "weights": "q4_0"},
        "workload": {"kind": "generation", "requests": requests, "source": "pi0",
                     "arrival": {"kind": "closed", "concurrency": max_batch},
                     "prompt": 32, "tokens": tokens, "max_batch": max_batch},
        "strategies": [{"name": "pipeline", "devices": [f"pi{i}" for i in range(BOARDS)],
                        "cuts": [1 + 4 * i for i in range(1, BOARDS)]}]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 requests x 64 tokens")
    quick = parser.parse_args().quick
    requests, tokens = (100, 64) if quick else (1000, 256)
    print(f"machine: {platform.processor() or platform.machine()}, {platform.python_version()}, "
          f"numpy {np.__version__}, simpy {simpy.__version__}")

    batched = scenario(requests, tokens, 32)
    (wall,) = best(lambda: api.run(batched, timing_only=True), repeat=1)
    print(f"{requests} requests x {tokens} tokens, max_batch 32: {wall:.2f} CPU s, "
          f"{requests * tokens / wall:,.0f} simulated tokens per CPU second (target >= 20,000)")

    one = scenario(10 if quick else 40, 64, 1)
    steps = one.workload.requests * (one.workload.tokens - 1)  # the first token is prefill's
    sim_s, bare_s = best(lambda: api.run(one, timing_only=True), lambda: bare_timeouts(steps), repeat=3)
    print(f"one sequence, {steps} decode steps over {BOARDS} stages: {sim_s / steps * 1e6:.0f} us "
          f"a step, {sim_s / bare_s:.1f}x a bare simpy timeout ({bare_s / steps * 1e6:.2f} us)")


if __name__ == "__main__":
    main()
