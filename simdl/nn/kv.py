"""Generation with a KV cache on a decoder chain (`nn.models.decoder_lm`), and the costs
its layers report for it.

The API the simulator calls:

    seqs = [Sequence() for _ in range(n)]          # one per request: its caches
    logits = prefill(chain, prompts, seqs)         # prompts (n, T) int: all at once
    logits = decode(chain, next_tokens, seqs)      # next_tokens (n,): one step
    prefill_costs(chain, batch, prompt) / decode_costs(chain, batch, ctx)  # per block
    run_layer(shard, h, member_seqs, key=b)      # one layer: a tensor-parallel member's

Both run any block range `[start, stop)`, so a pipeline stage runs its blocks on the
hidden states the previous stage sent: `prefill(chain, h, seqs, start=3, stop=6)`.
A `Sequence` keeps one `KVCache` per attention block it has run, keyed by block
index, so a stage holds only its own blocks' caches. Sequences decoded together may
have different lengths (continuous batching): the projections run as one GEMM, the
attention per sequence. Prefill gives the logits of each sequence's last position
only (the chain's last block runs on it); `decode` gives the next position's.
In real mode decode logits equal recomputing the whole sequence with
`chain.forward` (tests/nn/test_llm.py, float64 to 1e-12 and float32 to 1e-5).

Costs: the same `Cost` as `Chain.costs`, forward only (inference), with the KV cache's
reads and appends in each attention layer's bytes; `nn.llm_shapes` gives the same
numbers from an `LMShape` alone, for models too large to build.
Knows layers and chains; knows nothing of devices or time.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from simdl.errors import SimdlError
from simdl.nn.chain import Chain
from simdl.nn.compose import Residual, Sequential
from simdl.nn.compress import Compressed
from simdl.nn.core import ITEMSIZE, Cost, Layer, Shape
from simdl.nn.llm import GQAttention, KVCache

__all__ = ["Sequence", "prefill", "decode", "prefill_costs", "decode_costs", "infer",
           "infer_cost", "run_layer"]


@dataclass
class Sequence:
    """One generated sequence's state: a KV cache per attention block (by block index)."""

    caches: dict[int, list[KVCache]] = field(default_factory=dict)

    def length(self) -> int:
        """Tokens cached (the same in every block that has run)."""
        return next((c[0].length for c in self.caches.values() if c), 0)

    def nbytes(self) -> int:
        return sum(c.nbytes for layer in self.caches.values() for c in layer)


def _attention(layer: Layer) -> GQAttention | None:
    kernel = layer.kernel if isinstance(layer, Compressed) else layer
    return kernel if isinstance(kernel, GQAttention) else None


def _attentions(layer: Layer) -> list[GQAttention]:
    """The attention kernels in `layer`'s tree, in order."""
    if _attention(layer) is not None:
        return [_attention(layer)]  # type: ignore[list-item]
    if isinstance(layer, (Sequential, Residual)):
        return [a for child in layer.children.values() for a in _attentions(child)]
    return []


def infer(layer: Layer, x: np.ndarray, caches: list[list[KVCache]]) -> np.ndarray:
    """`layer` on x in inference, attention layers reading and extending `caches` (one
    list per attention layer in the tree, each one cache per sequence), consumed in order."""
    if _attention(layer) is not None:
        kernel = layer.unpacked() if isinstance(layer, Compressed) else layer
        return kernel.infer(x, caches.pop(0))  # type: ignore[attr-defined]
    if type(layer) is Sequential:
        for child in layer.layers:
            x = infer(child, x, caches)
        return x
    if type(layer) is Residual and layer.shortcut is None and layer.post is None:
        return infer(layer.body, x, caches) + x
    return layer.forward(x)[0]


def run_layer(layer: Layer, x: np.ndarray, seqs: list[Sequence], key: int) -> np.ndarray:
    """`layer` (a block's, or a tensor-parallel member's shard of one: `nn.shard`) on x in
    inference, its attention kernels reading and extending each sequence's caches kept
    under `key` (the block's index; one layer with attention per key)."""
    kernels = _attentions(layer)
    for s in seqs:
        if kernels and key not in s.caches:
            s.caches[key] = [a.new_cache(x.dtype) for a in kernels]
    caches = [[s.caches[key][j] for s in seqs] for j in range(len(kernels))]
    return infer(layer, x, caches)


def _run(chain: Chain, x: np.ndarray, seqs: list[Sequence], start: int, stop: int | None,
         last_only: bool) -> np.ndarray:
    start, stop = chain._range(start, stop)
    if len(seqs) != x.shape[0]:
        raise SimdlError("kv.sequences", len(seqs), f"need one per input row: {x.shape[0]}")
    for i in range(start, stop):
        if last_only and i == len(chain) - 1:
            x = x[:, -1:]
        x = run_layer(chain.blocks[i].layer, x, seqs, i)
    return x


def prefill(chain: Chain, x: np.ndarray, seqs: list[Sequence], start: int = 0,
            stop: int | None = None) -> np.ndarray:
    """Blocks [start, stop) on a prompt of T tokens per sequence (tokens (N, T), or the
    hidden states (N, T, d) a previous stage gave), filling each sequence's caches.
    A range that ends the chain returns the logits of the last position, (N, 1, vocab)."""
    return _run(chain, x, seqs, start, stop, last_only=True)


def decode(chain: Chain, x: np.ndarray, seqs: list[Sequence], start: int = 0,
           stop: int | None = None) -> np.ndarray:
    """One step: one new token per sequence (tokens (N,) or (N, 1), or hidden (N, 1, d)),
    attending to everything each sequence has cached; its k and v are appended."""
    x = np.asarray(x)
    if start == 0 and x.ndim == 1:
        x = x[:, None]
    if x.shape[1] != 1:
        raise SimdlError("kv.decode.tokens", x.shape[1], "decode takes one token per sequence")
    return _run(chain, x, seqs, start, stop, last_only=False)


# -- costs -----------------------------------------------------------------------


def _forward_only(c: Cost) -> Cost:
    return replace(c, bwd_flops=0.0, bwd_bytes=0, saved_bytes=0)


def infer_cost(layer: Layer, in_shape: Shape, past: int, kv_bytes: float = ITEMSIZE) -> Cost:
    """Forward cost of `layer` on in_shape = (N, T, ...) new tokens when each sequence
    already caches `past`: attention scores span past + T keys and its bytes add the
    cache read (past) and append (T), 2 kv dh values per token at `kv_bytes` each."""
    attn = _attention(layer)
    if attn is not None:
        c = _forward_only(layer.cost(in_shape))
        n, t = in_shape[0], in_shape[1]
        cache = n * (past + t) * 2 * attn.kv * attn.dh * kv_bytes
        return replace(c, fwd_flops=attn.flops(n, t, past)[0] + c.fwd_flops
                       - attn.flops(n, t, 0)[0], fwd_bytes=c.fwd_bytes + cache)
    if type(layer) is Sequential:
        total = None
        for child in layer.layers:
            c = infer_cost(child, in_shape if total is None else total.out_shape, past, kv_bytes)
            total = c if total is None else total.then(c)
        return total if total is not None else Cost(out_shape=tuple(in_shape))
    if type(layer) is Residual and layer.shortcut is None and layer.post is None:
        add = _forward_only(Residual(Sequential([])).cost(in_shape))
        return infer_cost(layer.body, in_shape, past, kv_bytes).then(add)
    return _forward_only(layer.cost(in_shape))


def _costs(chain: Chain, batch: int, t: int, past: int, last_only: bool) -> list[Cost]:
    shape: Shape = (batch, t)
    out = []
    for i, b in enumerate(chain.blocks):
        if last_only and i == len(chain) - 1:
            shape = (batch, 1, *shape[2:])
        c = infer_cost(b.layer, shape, past)
        out.append(c)
        shape = c.out_shape
    return out


def prefill_costs(chain: Chain, batch: int, prompt: int) -> list[Cost]:
    """Per block, what `prefill` of `batch` sequences of `prompt` tokens costs."""
    return _costs(chain, batch, prompt, 0, last_only=True)


def decode_costs(chain: Chain, batch: int, ctx: int) -> list[Cost]:
    """Per block, one `decode` step of `batch` sequences holding `ctx` cached tokens."""
    return _costs(chain, batch, 1, ctx, last_only=False)
