"""Decoder shapes with nothing allocated: published sizes, and prefill / decode costs equal
to what the built model's layers report."""
from __future__ import annotations

import numpy as np
import pytest

from simdl.errors import SimdlError
from simdl.nn import kv
from simdl.nn.llm_shapes import (PRESETS, LMShape, decode_costs, kv_bytes_per_token, preset,
                                 prefill_costs, weight_bytes)
from simdl.nn.models import SIZES, decoder_lm_from

FIELDS = ("out_shape", "fwd_flops", "bwd_flops", "param_bytes", "in_bytes", "out_bytes",
          "fwd_bytes", "saved_bytes")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_has_its_published_size_and_a_source(name):
    s = PRESETS[name]
    assert abs(s.n_params() / s.published_params - 1) < 0.01, s.n_params()
    assert s.source.startswith("https://huggingface.co/") and s.source.endswith("config.json")


def test_llama3_8b_counts_by_hand():
    """embed 128256 x 4096 twice (untied); per layer: q, o 4096^2 each, k, v 4096 x 1024
    each, MLP 3 x 4096 x 14336, two norms 4096; final norm 4096: 8,030,261,248."""
    layer = 2 * 4096**2 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096
    assert PRESETS["llama3_8b"].n_params() == 2 * 128256 * 4096 + 32 * layer + 4096 \
        == 8_030_261_248


REDUCED = [
    PRESETS["llama3_2_1b"].reduced(vocab=40, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                   ffn_hidden=48),
    PRESETS["qwen2_5_0_5b"].reduced(vocab=50, dim=28, n_layers=3, n_heads=7, n_kv_heads=1,
                                    ffn_hidden=36),
    PRESETS["llama2_7b"].reduced(vocab=30, dim=16, n_layers=1, n_heads=2, n_kv_heads=2,
                                 ffn_hidden=20),
]


@pytest.mark.parametrize("shape", REDUCED, ids=lambda s: s.name)
@pytest.mark.parametrize("batch, t", [(1, 1), (3, 7)])
def test_shape_costs_equal_what_the_built_model_reports(shape, batch, t):
    """Same config, reduced: prefill (prompt t) and decode (context t) per block, every field;
    the built chain's parameters are the shape's count."""
    chain = decoder_lm_from(shape, 8)
    assert chain.n_params() == shape.n_params()
    assert SIZES["decoder_lm"](shape.vocab, shape.dim, shape.n_layers, shape.n_heads,
                               shape.n_kv_heads, shape.ffn_hidden, shape.tied, shape.rope_theta,
                               shape.qkv_bias).params == shape.n_params()
    for ours, real in ((prefill_costs(shape, batch, t), kv.prefill_costs(chain, batch, t)),
                       (decode_costs(shape, batch, t), kv.decode_costs(chain, batch, t))):
        assert len(ours) == len(real) == len(chain) == len(shape.block_names)
        for a, b, name in zip(ours, real, chain.names):
            for f in FIELDS:
                assert getattr(a, f) == getattr(b, f), (name, f)


def test_decode_step_by_hand_for_llama3_8b_in_q4_0():
    """Batch 2 at context 1000. A layer reads its weights once (q4_0: 4.5 bits each, norm
    gains 4 B) and each sequence's cache, 2 x 1000 x 8 x 128 values of 2 B (fp16 cache),
    and appends one token's; FLOPs are 2 per weight per token plus attention over 1001
    keys (4 h dh per key, 5 per score for the softmax) and the small terms."""
    s = PRESETS["llama3_8b"]
    c = decode_costs(s, 2, 1000, "q4_0", kv_bytes=2)
    layer = c[1]
    w = s.attention_weights() + 3 * 4096 * 14336
    act = 2 * 4096 * 4
    cache = 2 * 1001 * 2 * 8 * 128 * 2
    assert layer.param_bytes == w * 4.5 / 8 + 2 * 4096 * 4
    # norm, attention, norm, MLP each read their input and write their output; two adds
    assert layer.fwd_bytes == layer.param_bytes + cache + 4 * (2 * act) + 2 * 3 * act
    mix = 4 * 2 * 32 * 1001 * 128 + 5 * 2 * 32 * 1001
    small = 3 * 2 * (32 + 8) * 128 + 2 * 4 * 2 * 4096 + 2 * 2 * 4096 + 6 * 2 * 14336
    assert layer.fwd_flops == 2 * 2 * w + mix + small
    assert c[-1].fwd_flops == 2 * 2 * 4096 * 128256 + 4 * 2 * 4096
    assert kv_bytes_per_token(s, 2)[1:-1] == [2 * 8 * 128 * 2] * 32
    assert len(c) == 34 and c[0].fwd_flops == 0


def test_prefill_runs_the_head_on_the_last_position_only():
    s = PRESETS["tinyllama_1_1b"]
    c = prefill_costs(s, 4, 128)
    assert c[-1].out_shape == (4, 1, 32000) and c[-2].out_shape == (4, 128, 2048)
    assert c[-1].fwd_flops == 2 * 4 * 2048 * 32000 + 4 * 4 * 2048


def test_weights_in_a_block_format_cost_their_bits():
    s = PRESETS["qwen2_5_7b"]
    fp16 = sum(c.param_bytes for c in decode_costs(s, 1, 0, "fp16"))
    q8 = sum(c.param_bytes for c in decode_costs(s, 1, 0, "q8_0"))
    vectors = (s.n_layers * s.layer_vectors() + s.dim) * 4
    matrices = s.n_params() - s.n_layers * s.layer_vectors() - s.dim
    assert fp16 == matrices * 2 + vectors and q8 == matrices * 8.5 / 8 + vectors
    assert weight_bytes("q4_k", 256) == 144


def test_bad_shapes_and_names_are_refused():
    with pytest.raises(SimdlError, match="n_kv_heads"):
        LMShape(10, 16, 1, 4, 3, 8)
    with pytest.raises(SimdlError, match="head_dim"):
        LMShape(10, 12, 1, 4, 4, 8)
    with pytest.raises(SimdlError, match="model.preset"):
        preset("gpt5")
    with pytest.raises(SimdlError, match="weights"):
        decode_costs(PRESETS["llama3_8b"], 1, 1, "q3")
    with pytest.raises(SimdlError, match="ctx"):
        decode_costs(PRESETS["llama3_8b"], 1, -1)
    assert np.isclose(preset("llama3_8b").head_dim, 128)
