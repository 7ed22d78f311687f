"""A decoder LLM as numbers only: its shape (`LMShape`), the published presets, and what
each block costs for prefill and for one decode step, with nothing allocated.

The real, reduced model (`nn.models.decoder_lm`) is built from the same `LMShape`;
a test checks that the costs here equal the ones its layers report. Blocks are
`embed`, `layer1`..`layerN`, `head`, as in the built chain.

Conventions (what the simulator charges; see `nn.core.Cost`): activations are 4 B
(float32), token ids 8 B; weight matrices (embedding, q/k/v/o, the three MLP
matrices, an untied head) are stored in `weights` (`nn.formats.BITS_PER_WEIGHT`),
norm gains and biases stay 4 B (llama.cpp keeps them in f32 too); the KV cache holds
`kv_bytes` per value. Prefill runs the head on each sequence's last position only
(generation needs that one logit row, as llama.cpp computes by default).
Decode at context `ctx`: each sequence already caches `ctx` tokens and adds one.
Knows shapes and `core.Cost`; knows nothing of arrays, devices or time.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from simdl.errors import SimdlError
from simdl.nn.core import ITEMSIZE, Cost
from simdl.nn.formats import BITS_PER_WEIGHT
from simdl.nn.llm import RMS_FWD_FLOPS, SWIGLU_FWD_FLOPS, attention_flops

TOKEN_BYTES = 8   # int64 token ids


@dataclass(frozen=True)
class LMShape:
    """A Llama-style decoder's sizes (field names of Hugging Face config.json in brackets).

    vocab [vocab_size], dim [hidden_size], n_layers [num_hidden_layers], n_heads
    [num_attention_heads], n_kv_heads [num_key_value_heads], ffn_hidden
    [intermediate_size], tied [tie_word_embeddings], rope_theta, context
    [max_position_embeddings], head_dim (dim / n_heads unless given), qkv_bias (Qwen2's
    q, k, v biases), norm_eps [rms_norm_eps]; source and published size for presets.
    """

    vocab: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_hidden: int
    tied: bool = False
    rope_theta: float = 10000.0
    context: int = 2048
    head_dim: int = 0
    qkv_bias: bool = False
    norm_eps: float = 1e-5
    name: str = "decoder_lm"
    source: str = ""
    published_params: float = 0.0

    def __post_init__(self) -> None:
        for field in ("vocab", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_hidden",
                      "context"):
            value = getattr(self, field)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise SimdlError(f"model.{self.name}.{field}", value, "must be a positive integer")
        if self.n_heads % self.n_kv_heads:
            raise SimdlError(f"model.{self.name}.n_kv_heads", self.n_kv_heads,
                             f"must divide n_heads={self.n_heads}")
        if not self.head_dim:
            if self.dim % self.n_heads:
                raise SimdlError(f"model.{self.name}.n_heads", self.n_heads,
                                 f"must divide dim={self.dim} (or give head_dim)")
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        if self.head_dim % 2:
            raise SimdlError(f"model.{self.name}.head_dim", self.head_dim,
                             "rotary positions turn pairs: must be even")
        if not self.rope_theta > 0:
            raise SimdlError(f"model.{self.name}.rope_theta", self.rope_theta, "must be > 0")

    # -- parameters -----------------------------------------------------------
    def attention_weights(self) -> int:
        """Wq, Wk, Wv and Wo of one layer (matrices only)."""
        return self.dim * (2 * self.n_heads + 2 * self.n_kv_heads) * self.head_dim

    def layer_vectors(self) -> int:
        """Two norm gains and the q, k, v biases of one layer."""
        bias = (self.n_heads + 2 * self.n_kv_heads) * self.head_dim if self.qkv_bias else 0
        return 2 * self.dim + bias

    def layer_params(self) -> int:
        return self.attention_weights() + 3 * self.dim * self.ffn_hidden + self.layer_vectors()

    def n_params(self) -> int:
        """Trainable scalars, a tied table counted once (as published sizes count it)."""
        table = self.vocab * self.dim
        return table + self.n_layers * self.layer_params() + self.dim + (0 if self.tied else table)

    def reduced(self, **sizes: int) -> LMShape:
        """This shape with some sizes replaced (a real-mode model of the same family)."""
        return replace(self, head_dim=sizes.pop("head_dim", 0), **sizes)

    @property
    def block_names(self) -> list[str]:
        return ["embed", *(f"layer{i + 1}" for i in range(self.n_layers)), "head"]


# -- costs from shapes --------------------------------------------------------------


def weight_bytes(weights: str, count: float) -> float:
    """Bytes of `count` weights stored as `weights` (bits per weight / 8, no per-matrix terms)."""
    if weights not in BITS_PER_WEIGHT:
        raise SimdlError("weights", weights, f"choose one of: {', '.join(BITS_PER_WEIGHT)}")
    return count * BITS_PER_WEIGHT[weights] / 8


def _kernel(in_elems: int, out_elems: int, flops: float, params: float) -> Cost:
    """A forward-only kernel: reads its input and parameters, writes its output."""
    i, o = in_elems * ITEMSIZE, out_elems * ITEMSIZE
    return Cost(out_shape=(), fwd_flops=float(flops), param_bytes=params, in_bytes=i,
                out_bytes=o, fwd_bytes=i + params + o)


def _chain(*costs: Cost, out_shape: tuple[int, ...]) -> Cost:
    total = costs[0]
    for c in costs[1:]:
        total = total.then(c)
    return replace(total, out_shape=out_shape)


def _add(elems: int) -> Cost:
    """A residual add: 1 FLOP per value, two reads and a write."""
    return Cost(out_shape=(), fwd_flops=float(elems), in_bytes=elems * ITEMSIZE,
                out_bytes=elems * ITEMSIZE, fwd_bytes=3 * elems * ITEMSIZE)


def _norm(s: LMShape, m: int) -> Cost:
    return _kernel(m * s.dim, m * s.dim, RMS_FWD_FLOPS * m * s.dim, s.dim * ITEMSIZE)


def cache_bytes_per_token(s: LMShape, kv_heads: int, kv_bytes: float = ITEMSIZE) -> float:
    """Cache bytes one sequence adds per token in one layer holding `kv_heads` kv heads."""
    return 2 * kv_heads * s.head_dim * kv_bytes


def kv_bytes_per_token(s: LMShape, kv_bytes: float = ITEMSIZE) -> list[float]:
    """Per block, the cache bytes one sequence adds per token: 2 kv dh values per layer."""
    per_layer = cache_bytes_per_token(s, s.n_kv_heads, kv_bytes)
    return [0.0, *([per_layer] * s.n_layers), 0.0]


# The parts a layer and the head are made of, each for a share of the shape (some query
# and kv heads, hidden units or vocabulary rows): the whole shape's counts give the
# layer and head below, a tensor-parallel member's share gives its kernel there
# (`plan.lm_group`). Each part starts with its RMSNorm; out_shape is left empty.


def attention_part(s: LMShape, rows: int, pairs: int, cached: int, heads: int,
                   kv_heads: int, weights: str, kv_bytes: float = ITEMSIZE) -> Cost:
    """Norm + attention with `heads` query and `kv_heads` kv heads: `rows` new tokens in
    all, `pairs` (query, key) pairs scored, `cached` tokens' k and v read or appended
    (`nn.llm.attention_flops`)."""
    d, dh = s.dim, s.head_dim
    flops, _ = attention_flops(rows, pairs, d, heads, kv_heads, dh)
    params = weight_bytes(weights, d * (2 * heads + 2 * kv_heads) * dh)
    if s.qkv_bias:
        params += (heads + 2 * kv_heads) * dh * ITEMSIZE
    attn = _kernel(rows * d, rows * d, flops, params)
    cache = cached * cache_bytes_per_token(s, kv_heads, kv_bytes)   # read + append
    return _norm(s, rows).then(replace(attn, fwd_bytes=attn.fwd_bytes + cache))


def mlp_part(s: LMShape, rows: int, hidden: int, weights: str) -> Cost:
    """Norm + `hidden` units of the SwiGLU MLP (their columns of W1, W3, rows of W2)."""
    d = s.dim
    flops = 6.0 * rows * d * hidden + SWIGLU_FWD_FLOPS * rows * hidden
    return _norm(s, rows).then(_kernel(rows * d, rows * d, flops,
                                       weight_bytes(weights, 3 * d * hidden)))


def head_part(s: LMShape, rows: int, vocab: int, weights: str) -> Cost:
    """Final norm and `vocab` rows of the logits for `rows` positions."""
    proj = _kernel(rows * s.dim, rows * vocab, 2.0 * rows * s.dim * vocab,
                   weight_bytes(weights, vocab * s.dim))
    return _norm(s, rows).then(proj)


def _layer(s: LMShape, n: int, t: int, past: int, weights: str, kv_bytes: float) -> Cost:
    m, d = n * t, s.dim
    attn = attention_part(s, m, m * (past + t), n * (past + t), s.n_heads, s.n_kv_heads,
                          weights, kv_bytes)
    mlp = mlp_part(s, m, s.ffn_hidden, weights)
    return _chain(attn, _add(m * d), mlp, _add(m * d), out_shape=(n, t, d))


def _embed(s: LMShape, n: int, t: int, weights: str) -> Cost:
    """The gather reads only the rows used (and writes them): nn.dense.Embedding's rule."""
    out = n * t * s.dim * ITEMSIZE
    return Cost(out_shape=(n, t, s.dim), param_bytes=weight_bytes(weights, s.vocab * s.dim),
                in_bytes=n * t * TOKEN_BYTES, out_bytes=out, fwd_bytes=n * t * TOKEN_BYTES + 2 * out)


def _head(s: LMShape, n: int, weights: str) -> Cost:
    """Final norm and logits for one position of each of n sequences."""
    return replace(head_part(s, n, s.vocab, weights), out_shape=(n, 1, s.vocab))


def _check(**counts: int) -> None:
    for field, value in counts.items():
        if isinstance(value, bool) or int(value) != value or value < 0:
            raise SimdlError(field, value, "must be a whole number >= 0")


def prefill_costs(s: LMShape, batch: int, prompt: int, weights: str = "fp32",
                  kv_bytes: float = ITEMSIZE) -> list[Cost]:
    """Per block, one prefill of `batch` sequences of `prompt` tokens (caches empty before)."""
    _check(batch=batch, prompt=prompt)
    layer = _layer(s, batch, prompt, 0, weights, kv_bytes)
    return [_embed(s, batch, prompt, weights), *([layer] * s.n_layers), _head(s, batch, weights)]


def decode_costs(s: LMShape, batch: int, ctx: int, weights: str = "fp32",
                 kv_bytes: float = ITEMSIZE) -> list[Cost]:
    """Per block, one decode step of `batch` sequences that each hold `ctx` cached tokens:
    every layer reads its weights once and each sequence's cache (2 ctx kv dh values),
    and appends one token's k and v."""
    _check(batch=batch, ctx=ctx)
    layer = _layer(s, batch, 1, ctx, weights, kv_bytes)
    return [_embed(s, batch, 1, weights), *([layer] * s.n_layers), _head(s, batch, weights)]


# -- the presets -------------------------------------------------------------------
# Each shape is the model's config.json on Hugging Face (the URL below), read on
# 2026-12-05 from public copies found by simdl's code search: kevinstephano/
# thunder_model_blocks hf_llama/llama_config.py (Llama 3.2 1B, commit 4e20de36 of the
# HF repo), citsjtu2020/LLM-Prof sglang/Model_Config.md (Llama 3.2 3B, Qwen2.5 7B), a
# copy of Meta-Llama-3-8B-Instruct's config (Llama 3 8B), microsoft/Olive
# examples/llm/config.py (Llama 2 7B chat), a copy of TinyLlama-1.1B-Chat-v1.0's config,
# and the Qwen/Qwen2.5-0.5B config (tokenizer vocab 151936). `published_params` is the
# size on the model card or the Hub's parameter count. Context is max_position_embeddings
# (Llama 3.2 and Qwen2.5 7B reach it with rope scaling, which is not modelled).
_HF = "https://huggingface.co/{}/blob/main/config.json"
PRESETS: dict[str, LMShape] = {s.name: s for s in (
    LMShape(128256, 2048, 16, 32, 8, 8192, tied=True, rope_theta=500000.0, context=131072,
            name="llama3_2_1b", source=_HF.format("meta-llama/Llama-3.2-1B"),
            published_params=1.23e9),
    LMShape(128256, 3072, 28, 24, 8, 8192, tied=True, rope_theta=500000.0, context=131072,
            name="llama3_2_3b", source=_HF.format("meta-llama/Llama-3.2-3B"),
            published_params=3.21e9),
    LMShape(128256, 4096, 32, 32, 8, 14336, rope_theta=500000.0, context=8192,
            name="llama3_8b", source=_HF.format("meta-llama/Meta-Llama-3-8B"),
            published_params=8.03e9),
    LMShape(32000, 4096, 32, 32, 32, 11008, rope_theta=10000.0, context=4096,
            name="llama2_7b", source=_HF.format("meta-llama/Llama-2-7b-hf"),
            published_params=6.74e9),
    LMShape(151936, 896, 24, 14, 2, 4864, tied=True, rope_theta=1000000.0, context=32768,
            qkv_bias=True, norm_eps=1e-6, name="qwen2_5_0_5b",
            source=_HF.format("Qwen/Qwen2.5-0.5B"), published_params=0.49e9),
    LMShape(152064, 3584, 28, 28, 4, 18944, rope_theta=1000000.0, context=131072,
            qkv_bias=True, norm_eps=1e-6, name="qwen2_5_7b",
            source=_HF.format("Qwen/Qwen2.5-7B"), published_params=7.61e9),
    LMShape(32000, 2048, 22, 32, 4, 5632, rope_theta=10000.0, context=2048,
            name="tinyllama_1_1b", source=_HF.format("TinyLlama/TinyLlama-1.1B-Chat-v1.0"),
            published_params=1.1e9),
)}


def preset(name: str) -> LMShape:
    """The published shape `name`, or a SimdlError listing them."""
    if name not in PRESETS:
        raise SimdlError("model.preset", name, f"choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]
