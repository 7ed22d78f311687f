"""The published models at full size: how long building, the shape-only cost walk and a
real forward take, and how close the forward runs to bare BLAS.

Run `.venv/bin/python bench/full_models.py` (about a minute). For each model in
`nn.published` at its defaults: build time (weights drawn), the cost walk of
`chain.costs(1)` (what timing-only runs use), and one eval-mode forward of batch 1, its
`cost()` FLOPs turned into GFLOP/s. In the same pass, alternating with the forward, a
bare float32 1024^3 matmul is timed; the ratio is forward GFLOP/s over bare GFLOP/s.
Each figure is the best of 3 passes. One BLAS thread, as simdl runs. Figures are in
bench/README.md under "## Published models".
"""
from __future__ import annotations

import platform
import time

import numpy as np
from threadpoolctl import threadpool_limits

from simdl.nn.published import MODELS
from simdl.rng import stream

PASSES = 3
GEMM = 1024


def best(fn, repeats: int = 1) -> float:
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def main() -> None:
    a = stream(0, "bench").standard_normal((GEMM, GEMM), dtype=np.float32)
    rows = {name: [np.inf] * 5 for name in MODELS}
    for _ in range(PASSES):
        for name, build in MODELS.items():
            r = rows[name]
            t0 = time.perf_counter()
            chain = build()
            r[0] = min(r[0], time.perf_counter() - t0)
            chain.blocks = chain.blocks               # forget cached costs
            r[1] = min(r[1], best(lambda c=chain: c.costs(1)))
            x = (stream(1, "bench").integers(0, chain.n_classes, (1, *chain.in_shape))
                 if chain.in_dtype.kind == "i"
                 else stream(1, "bench").standard_normal((1, *chain.in_shape), np.float32))
            r[2] = min(r[2], best(lambda c=chain, x=x: c.forward(x)))
            r[3] = min(r[3], best(lambda: a @ a, 3))
            r[4] = chain.cost(1).fwd_flops
    with open("/proc/cpuinfo") as info:
        cpu = next((line.split(":", 1)[1].strip() for line in info
                    if line.startswith("model name")), platform.machine())
    print(f"machine: {cpu}, python "
          f"{platform.python_version()}, numpy {np.__version__}, 1 BLAS thread")
    print("| model | params | build s | cost walk ms | fwd GFLOP | fwd s | fwd GF/s | "
          "bare GF/s | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, (build_s, walk_s, fwd_s, gemm_s, flops) in rows.items():
        params = MODELS[name]().n_params()
        fwd_gf, bare_gf = flops / fwd_s / 1e9, 2 * GEMM ** 3 / gemm_s / 1e9
        print(f"| {name} | {params:,} | {build_s:.2f} | {1e3 * walk_s:.1f} | {flops / 1e9:.2f} "
              f"| {fwd_s:.3f} | {fwd_gf:.1f} | {bare_gf:.1f} | {fwd_gf / bare_gf:.0%} |")


if __name__ == "__main__":
    with threadpool_limits(1):
        main()
