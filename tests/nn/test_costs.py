"""Cost formulas against counts done by hand (multiply-add = 2 FLOPs, float32 = 4 bytes)."""
from __future__ import annotations

import numpy as np
import pytest

from simdl.nn.layers import (LAYERS, BatchNorm, Conv2d, Embedding, Linear, ReLU, Residual,
                             SelfAttention, Sequential)

RNG = np.random.default_rng(0)


def test_linear_cost_by_hand():
    """N=8, 32 -> 16.

    fwd = 2 * 8 * 32 * 16 = 8192 FLOPs; bwd (dW and dx GEMMs) = 16384.
    params (32*16 + 16) * 4 = 2112 B; in 8*32*4 = 1024 B; out 8*16*4 = 512 B.
    fwd bytes = in + params + out = 3648; saved = x = 1024.
    bwd bytes = dy 512 + x 1024 + dx 1024 + W 2112 + dW, db read and written 2 * 2112 = 8896.
    """
    c = Linear(32, 16, RNG).cost((8, 32))
    assert c.out_shape == (8, 16)
    assert (c.fwd_flops, c.bwd_flops) == (8192, 16384)
    assert (c.param_bytes, c.in_bytes, c.out_bytes) == (2112, 1024, 512)
    assert (c.fwd_bytes, c.saved_bytes, c.bwd_bytes) == (3648, 1024, 8896)


def test_linear_on_tokens_counts_every_position():
    """(N, T, d) = (2, 5, 32) -> 16: M = 10 rows, fwd = 2 * 10 * 32 * 16 = 10240."""
    c = Linear(32, 16, RNG).cost((2, 5, 32))
    assert c.out_shape == (2, 5, 16)
    assert c.fwd_flops == 10240


def test_conv_stride_and_padding_cost_by_hand():
    """N=2, 3 -> 4 channels, 9x9, k=3, stride 2, padding 1.

    OH = OW = floor((9 + 2 - 3) / 2) + 1 = 5.
    fwd = 2 * N * C_out * C_in * k * k * OH * OW = 2 * 2 * 4 * 3 * 9 * 25 = 10800; bwd 21600.
    params (4*3*3*3 + 4) * 4 = 448 B; in 2*3*81*4 = 1944 B; out 2*4*25*4 = 800 B.
    """
    c = Conv2d(3, 4, 3, RNG, stride=2, padding=1).cost((2, 3, 9, 9))
    assert c.out_shape == (2, 4, 5, 5)
    assert (c.fwd_flops, c.bwd_flops) == (10800, 21600)
    assert (c.param_bytes, c.in_bytes, c.out_bytes) == (448, 1944, 800)
    assert c.fwd_bytes == 1944 + 448 + 800
    assert c.saved_bytes == 1944


def test_depthwise_conv_cost_by_hand():
    """N=2, 8 channels, groups=8, 6x6, k=3, padding 1: OH = OW = 6 + 2 - 3 + 1 = 6.

    Each output sees C_in/groups = 1 channel: fwd = 2 * 2 * 8 * 1 * 9 * 36 = 10368.
    params (8*1*3*3 + 8) * 4 = 320 B.
    """
    c = Conv2d(8, 8, 3, RNG, padding=1, groups=8).cost((2, 8, 6, 6))
    assert c.out_shape == (2, 8, 6, 6)
    assert (c.fwd_flops, c.bwd_flops) == (10368, 20736)
    assert c.param_bytes == 320


def test_grouped_conv_cost_by_hand():
    """N=1, 4 -> 6 channels in 2 groups, 5x5, k=3, no padding: OH = OW = 3.

    fwd = 2 * 1 * 6 * (4/2) * 9 * 9 = 1944; W is (6, 2, 3, 3) = 108 values, no bias.
    """
    c = Conv2d(4, 6, 3, RNG, groups=2, bias=False).cost((1, 4, 5, 5))
    assert c.out_shape == (1, 6, 3, 3)
    assert c.fwd_flops == 1944
    assert c.param_bytes == 108 * 4


def test_attention_cost_by_hand():
    """N=2, T=5, d=8, h=2 (dh=4); M = N*T = 10 tokens.

    q, k, v, output projections: 4 * 2 * M * d * d = 8 * 10 * 64 = 5120
    scores q k^T: 2 * N * h * T * T * dh = 2 * 2 * 2 * 25 * 4 = 800
    weighted sum P v: the same, 800
    softmax: 5 per score, 5 * N * h * T * T = 5 * 100 = 500
    fwd = 5120 + 800 + 800 + 500 = 7220
    bwd = 2 * (5120 + 1600) GEMMs + 4 * 100 softmax = 13840
    params 4 * (64 + 8) * 4 = 1152 B; saved = x, q, k, v, context (5 * 10 * 8) + P (100)
    = 500 values = 2000 B.
    """
    c = SelfAttention(8, 2, RNG, causal=True).cost((2, 5, 8))
    assert c.out_shape == (2, 5, 8)
    assert (c.fwd_flops, c.bwd_flops) == (7220, 13840)
    assert c.param_bytes == 1152
    assert c.saved_bytes == 2000


def test_batchnorm_stores_running_stats_but_grads_only_gamma_beta():
    """C=4: gamma, beta, mean, var = 16 values = 64 B stored; (2, 4) input: 8 values x 8 FLOPs."""
    c = BatchNorm(4).cost((2, 4))
    assert c.param_bytes == 64
    assert c.fwd_flops == 64
    assert c.fwd_bytes == 32 + 64 + 32


def test_embedding_input_is_int64_tokens():
    """(2, 3) tokens of 8 B -> (2, 3, 4) floats; + positions is one add per output value."""
    c = Embedding(10, 4, RNG, max_len=3).cost((2, 3))
    assert c.out_shape == (2, 3, 4)
    assert (c.in_bytes, c.out_bytes) == (48, 96)
    assert c.fwd_flops == 24
    assert c.param_bytes == (40 + 12) * 4


def test_sequential_cost_is_its_children_then_each_other():
    """Linear(4->3) on N=2 (24 FLOPs) then ReLU on 6 values (6 FLOPs) = 30; in 32 B, out 24 B."""
    c = Sequential([Linear(4, 3, RNG), ReLU()]).cost((2, 4))
    assert c.out_shape == (2, 3)
    assert c.fwd_flops == 2 * 2 * 4 * 3 + 6
    assert (c.in_bytes, c.out_bytes) == (32, 24)


def test_residual_cost_adds_body_shortcut_and_the_sum():
    """N=3, 4 features: body Linear 2*3*4*4 = 96, shortcut Linear(bias-free) 96, add 12, ReLU 12."""
    body, short = Linear(4, 4, RNG), Linear(4, 4, RNG, bias=False)
    c = Residual(body, short, ReLU()).cost((3, 4))
    assert c.out_shape == (3, 4)
    assert c.fwd_flops == 96 + 96 + 12 + 12
    assert c.param_bytes == (16 + 4 + 16) * 4
    assert Residual(body).cost((3, 4)).fwd_flops == 96 + 12


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_cost_out_shape_and_activation_bytes_match_a_real_forward(name, layer_examples):
    """Timing-only mode relies on cost(): its shapes and bytes must be the run's."""
    for ex in layer_examples[name]:
        rng = np.random.default_rng(1)
        layer = ex.build(rng)
        x = ex.make_x(rng)
        y, _ = layer.forward(x, ex.train)
        c = layer.cost(x.shape)
        assert c.out_shape == y.shape, ex.id
        assert (c.in_bytes, c.out_bytes) == (x.nbytes, y.nbytes), ex.id
        assert c.param_bytes == layer.param_bytes(), ex.id
        assert c.fwd_flops >= 0 and c.bwd_flops >= c.fwd_flops * 0.5, ex.id
