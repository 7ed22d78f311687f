"""Decoder LLMs: what a weight format costs in accuracy, and what the KV cache saves.

Run `.venv/bin/python bench/llm.py` (a few minutes on 2 shared cores). It trains the
reduced decoder (256 byte tokens, dim 64, 2 layers, 4 heads / 2 kv heads, SwiGLU 256,
tied head) for 300 Adam steps on tests/nn/data/pool_notes.txt, then per weight format
prints bits per weight, next-token agreement with fp32 and perplexity on that text.
Then it times one decode step with the cache against recomputing the whole sequence
(chain.forward) at several contexts, the two interleaved, best of several: the ratio
is the simulator's own speed in real mode, never simulated time. Figures are recorded
in bench/README.md under "## Language models".
"""
from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np

from simdl.nn.fit import fit
from simdl.nn.kv import Sequence, decode, prefill
from simdl.nn.lm_eval import byte_windows, format_accuracy
from simdl.nn.models import decoder_lm

TEXT = Path(__file__).resolve().parent.parent / "tests" / "nn" / "data" / "pool_notes.txt"
FORMATS = ("fp16", "bf16", "int8", "q8_0", "q4_k", "q4_0")


def accuracy() -> None:
    data = byte_windows(TEXT.read_text(), 32, 8)
    chain = decoder_lm(vocab=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=256,
                       seq_len=32, seed=0)
    losses = fit(chain, data, 300, batch=16, lr=3e-3)
    print(f"trained: loss {losses[0]:.3f} -> {losses[-1]:.3f} ({len(data)} windows of 32 bytes)")
    print("format  bits/weight  agreement  perplexity (fp32 {:.4f})".format(
        format_accuracy(chain, data, ("fp32",))[0]["fp32_perplexity"]))
    for r in format_accuracy(chain, data, FORMATS):
        print(f"{r['format']:<6}  {r['bits_per_weight']:>11}  {r['agreement']:>9.4f}  "
              f"{r['perplexity']:>10.4f}")


def best(fn, repeats: int) -> float:
    out = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t)
    return out


def cache_speed() -> None:
    chain = decoder_lm(vocab=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=256,
                       seq_len=32, seed=0)
    rng = np.random.default_rng(0)
    print("context  cached step (ms)  recompute (ms)  recompute / cached   (batch 4)")
    for ctx in (16, 64, 256):
        tokens = rng.integers(0, 256, (4, ctx + 1))
        cached = recompute = float("inf")
        for _ in range(5):                                   # interleaved passes
            seqs = [Sequence() for _ in range(4)]
            prefill(chain, tokens[:, :ctx], seqs)
            snapshot = [dict((k, [(c.k, c.v) for c in v]) for k, v in s.caches.items())
                        for s in seqs]

            def step() -> None:
                for s, snap in zip(seqs, snapshot):          # back to ctx cached tokens
                    for k, pairs in snap.items():
                        for c, (kk, vv) in zip(s.caches[k], pairs):
                            c.k, c.v = kk, vv
                decode(chain, tokens[:, ctx], seqs)

            cached = min(cached, best(step, 5))
            recompute = min(recompute, best(lambda: chain.forward(tokens), 5))
        print(f"{ctx:>7}  {1e3 * cached:>16.2f}  {1e3 * recompute:>14.2f}  "
              f"{recompute / cached:>18.2f}")


if __name__ == "__main__":
    print(f"machine: {platform.processor() or platform.machine()}, Python "
          f"{platform.python_version()}, numpy {np.__version__}")
    accuracy()
    cache_speed()
