"""Kernel speed: each simdl.nn kernel against raw numpy matmul of the GEMM it reduces to.

Run `.venv/bin/python bench/kernels.py` (under a minute). For every kernel at
batch >= 16 it times forward and backward (best of several, time.perf_counter),
turns cost() FLOPs into GFLOP/s, times the equivalent bare GEMMs (same shapes,
same run, interleaved with the kernel so machine noise hits both alike) and
prints the ratio. Figures are recorded in bench/README.md under "## Kernels".
Wall-clock time here is the simulator's own speed, never simulated time.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from simdl.nn.layers import Conv2d, Layer, Linear, SelfAttention

PASSES = 3          # the whole table is timed 3 times, spread over the run; best of all
MIN_REPEATS, MAX_REPEATS = 5, 40
BUDGET = 0.2        # seconds per kernel, direction and pass (pairs included)
Thunk = Callable[[], object]


@dataclass
class Case:
    """A kernel on one input, and the bare GEMMs its forward and backward reduce to."""

    name: str
    shape: str
    layer: Layer
    x: np.ndarray
    raw_fwd: Thunk
    raw_fwd_flops: float
    raw_bwd: Thunk
    raw_bwd_flops: float
    target: float | None = None     # minimum forward ratio asked of this kernel


def time_pairs(kernel: Thunk, raw: Thunk, times: dict[str, list[float]],
               budget: float = BUDGET) -> None:
    """Append wall times of kernel and raw, called alternately so a noisy neighbour
    slows both alike, for at least MIN_REPEATS pairs and about `budget` seconds."""
    kernel(), raw()                  # warm up: buffers, BLAS threads, caches
    start = time.perf_counter()
    for i in range(MAX_REPEATS):
        if i >= MIN_REPEATS and time.perf_counter() - start > budget:
            break
        t = time.perf_counter()
        kernel()
        times["kernel"].append(time.perf_counter() - t)
        t = time.perf_counter()
        raw()
        times["raw"].append(time.perf_counter() - t)


def arr(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)


def linear_case(rng: np.random.Generator, n: int, n_in: int, n_out: int) -> Case:
    layer = Linear(n_in, n_out, rng)
    x, w, dy = arr(rng, n, n_in), layer.params["W"], arr(rng, n, n_out)
    f = 2.0 * n * n_in * n_out
    return Case("linear", f"{n}x{n_in} -> {n_out}", layer, x, lambda: x @ w, f,
                lambda: (x.T @ dy, dy @ w.T), 2 * f, target=0.9)


def conv_case(rng: np.random.Generator, n: int, c_in: int, c_out: int, hw: int, k: int = 3,
              stride: int = 1, groups: int = 1, target: float | None = None) -> Case:
    """The GEMMs of im2col: (C_out/g, C_in/g*k*k) @ (C_in/g*k*k, N*OH*OW) per group."""
    layer = Conv2d(c_in, c_out, k, rng, stride=stride, padding=k // 2, groups=groups)
    x = arr(rng, n, c_in, hw, hw)
    oh = (hw + 2 * (k // 2) - k) // stride + 1
    kk, cols = c_in // groups * k * k, n * oh * oh
    w = layer.params["W"].reshape(groups, c_out // groups, kk)
    b, dy = arr(rng, groups, kk, cols), arr(rng, groups, c_out // groups, cols)
    bt = np.ascontiguousarray(b.transpose(0, 2, 1))
    wt = np.ascontiguousarray(w.transpose(0, 2, 1))
    f = 2.0 * c_out * kk * cols
    kind = "depthwise" if groups == c_in == c_out and groups > 1 else f"conv{k}x{k}"
    shape = f"{n}x{c_in}x{hw}x{hw} -> {c_out}" + (f" s{stride}" if stride > 1 else "")
    return Case(kind, shape, layer, x, lambda: np.matmul(w, b), f,
                lambda: (np.matmul(dy, bt), np.matmul(wt, dy)), 2 * f, target)


def attention_case(rng: np.random.Generator, n: int, t: int, d: int, h: int) -> Case:
    """GEMMs: x Wqkv, q k^T and P v per head, context Wo; backward does each twice."""
    layer = SelfAttention(d, h, rng, causal=True)
    dh = d // h
    x, wqkv, wo = arr(rng, n * t, d), arr(rng, d, 3 * d), arr(rng, d, d)
    q, kt, p = arr(rng, n, h, t, dh), arr(rng, n, h, dh, t), arr(rng, n, h, t, t)
    qkv_grad, ctx = arr(rng, n * t, 3 * d), arr(rng, n * t, d)

    def fwd() -> None:
        x @ wqkv, q @ kt, p @ q, ctx @ wo

    def bwd() -> None:
        # dWo, dctx, dP, dV, dQ, dK, dWqkv, dx: each forward GEMM twice, same shapes.
        ctx.T @ ctx, ctx @ wo.T, q @ kt, p @ q, p @ q, p @ q, x.T @ qkv_grad, qkv_grad @ wqkv.T

    f = 8.0 * n * t * d * d + 4.0 * n * t * t * d
    return Case("attention", f"{n}x{t}x{d}, {h} heads", layer, arr(rng, n, t, d), fwd, f,
                bwd, 2 * f)


def measure(case: Case, times: dict[str, dict[str, list[float]]]) -> None:
    """One pass: add forward and backward timings of `case` (kernel and raw) to `times`."""
    layer, x = case.layer, case.x
    time_pairs(lambda: layer.forward(x, True), case.raw_fwd, times["fwd"])
    y, cache = layer.forward(x, True)
    dy = np.ones_like(y)
    time_pairs(lambda: layer.backward(dy, cache), case.raw_bwd, times["bwd"])


def summarise(case: Case, times: dict[str, dict[str, list[float]]]) -> dict[str, object]:
    """GF/s from the best times: cost() FLOPs for the kernel, GEMM FLOPs for raw."""
    cost = case.layer.cost(case.x.shape)
    row: dict[str, object] = {"kernel": case.name, "shape": case.shape, "target": case.target}
    for d, kernel_flops, raw_flops in (("fwd", cost.fwd_flops, case.raw_fwd_flops),
                                       ("bwd", cost.bwd_flops, case.raw_bwd_flops)):
        row[d] = kernel_flops / min(times[d]["kernel"]) / 1e9
        row[f"{d}_raw"] = raw_flops / min(times[d]["raw"]) / 1e9
        row[f"{d}_ratio"] = row[d] / row[f"{d}_raw"]
    return row


def machine() -> str:
    """CPU model and cores (lscpu), numpy and its BLAS, and BLAS-related environment."""
    model, cores = platform.processor() or platform.machine(), os.cpu_count()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    blas = "unknown"
    try:
        info = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = f"{info.get('name')} {info.get('version')}"
    except (TypeError, KeyError):
        pass
    try:
        from threadpoolctl import threadpool_info
        pools = threadpool_info()
        blas += " | " + ", ".join(f"{p['internal_api']} {p['num_threads']} threads" for p in pools)
    except ImportError:
        blas += " (threadpoolctl not installed: thread count not read)"
    env = {k: v for k, v in os.environ.items() if "BLAS" in k or k.endswith("NUM_THREADS")
           or k == "OPENBLAS_CORETYPE"}
    return (f"{model}, {cores} cores; Python {platform.python_version()}, numpy "
            f"{np.__version__}, BLAS {blas}; env {env or '{}'}")


def bench_models(batch: int = 16) -> list[str]:
    """Each zoo model's whole forward at its default size: achieved GFLOP/s from its cost."""
    from simdl.nn.models import MODELS
    rows = [f"\n{'model':<18} {'batch':>5} {'GFLOP':>8} {'ms':>8} {'GF/s':>7}",
            "-" * 50]
    for name in sorted(MODELS):
        chain = MODELS[name]()
        rng = np.random.default_rng(0)
        shape = (batch, *chain.in_shape)
        x = (rng.integers(0, chain.n_classes, shape) if chain.in_dtype.kind == "i"
             else rng.standard_normal(shape).astype(np.float32))
        flops = chain.cost(batch).fwd_flops
        best = min(_timed(lambda: chain.forward(x)) for _ in range(5))
        rows.append(f"{name:<18} {batch:>5} {flops / 1e9:8.3f} {best * 1e3:8.2f} "
                    f"{flops / best / 1e9:7.1f}")
    return rows


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


HEADER = (f"{'kernel':<10} {'shape':<26} {'fwd GF/s':>9} {'raw':>6} {'ratio':>6}   "
          f"{'bwd GF/s':>9} {'raw':>6} {'ratio':>6}  target")


def format_row(r: dict) -> str:
    target = "" if r["target"] is None else (
        f">= {r['target']:.0%} " + ("ok" if r["fwd_ratio"] >= r["target"] else "MISSED"))
    return (f"{r['kernel']:<10} {r['shape']:<26} {r['fwd']:9.1f} {r['fwd_raw']:6.1f} "
            f"{r['fwd_ratio']:6.0%}   {r['bwd']:9.1f} {r['bwd_raw']:6.1f} "
            f"{r['bwd_ratio']:6.0%}  {target}")


def main() -> int:
    """Kernels against raw matmul, under the BLAS thread count simdl runs with (1)."""
    from threadpoolctl import threadpool_limits
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    with threadpool_limits(limits=threads, user_api="blas"):
        return _main()


def _main() -> int:
    rng = np.random.default_rng(0)
    cases = [
        linear_case(rng, 256, 1024, 1024),
        linear_case(rng, 1024, 256, 512),
        conv_case(rng, 16, 16, 16, 32, target=0.6),
        conv_case(rng, 16, 32, 32, 32, target=0.6),
        conv_case(rng, 16, 64, 64, 16, target=0.6),
        conv_case(rng, 16, 64, 64, 32, target=0.6),
        conv_case(rng, 16, 32, 64, 32, stride=2),
        conv_case(rng, 16, 64, 128, 16, k=1),
        conv_case(rng, 16, 64, 64, 32, groups=64),
        attention_case(rng, 16, 64, 256, 4),
        attention_case(rng, 16, 128, 128, 4),
    ]
    t0 = time.perf_counter()
    print(machine())
    print(f"best of {PASSES} passes x {MIN_REPEATS}-{MAX_REPEATS} interleaved repeats; "
          "GF/s from cost() FLOPs; raw = numpy matmul of the same GEMM shapes\n", flush=True)
    times = [{d: {"kernel": [], "raw": []} for d in ("fwd", "bwd")} for _ in cases]
    for _ in range(PASSES):
        for case, t in zip(cases, times):
            measure(case, t)
    print(HEADER)
    print("-" * len(HEADER))
    for case, t in zip(cases, times):
        print(format_row(summarise(case, t)))
    for row in bench_models():
        print(row)
    print(f"\n{time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
