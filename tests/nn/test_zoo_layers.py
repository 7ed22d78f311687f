"""The published models' new kernels, each alone: backward against central differences
(float64, every entry), the cost's output shape against the real one, float32 kept,
and, where torch is installed, values and gradients against torch's own definitions."""
from __future__ import annotations

import math

import numpy as np
import pytest

from simdl.nn.activations import Hardsigmoid, Hardswish, Sigmoid, SiLU
from simdl.nn.bert_parts import AddPositions, BottleneckAttention, NoNorm, Trigram
from simdl.nn.compose import Sequential
from simdl.nn.dense import ReLU
from simdl.nn.layers import astype
from simdl.nn.pool import MaxPool
from simdl.nn.vision_parts import FirstToken, Pad2d, PatchTokens, SqueezeExcite
from simdl.rng import stream


def randomized(layer):
    """Non-trivial values for scales and shifts that start at one and zero."""
    rng = stream(1, "test_zoo_layers.params")
    for k in list(layer.params):
        v = layer.params[k]
        layer.params[k] = (v + 0.3 * rng.standard_normal(v.shape)).astype(v.dtype)
    return layer


EXAMPLES = {
    "sigmoid": (lambda r: Sigmoid(), (2, 3, 4), 4.0),
    "silu": (lambda r: SiLU(), (2, 3, 4), 4.0),
    "hardsigmoid": (lambda r: Hardsigmoid(), (2, 3, 5), 4.0),
    "hardswish": (lambda r: Hardswish(), (2, 3, 5), 4.0),
    "pad2d": (lambda r: Pad2d(2, 0.5), (2, 3, 3, 4), 1.0),
    "pad_then_maxpool": (lambda r: Sequential([Pad2d(1, -np.inf), MaxPool(3, 2)]),
                         (2, 2, 5, 6), 1.0),
    "squeeze_excite": (lambda r: SqueezeExcite.of(4, 2, ReLU(), Hardsigmoid(), r),
                       (2, 4, 3, 3), 1.0),
    "squeeze_excite_silu": (lambda r: SqueezeExcite.of(3, 1, SiLU(), Sigmoid(), r),
                            (2, 3, 2, 2), 1.0),
    "patch_tokens": (lambda r: PatchTokens(3, 4, r), (2, 3, 2, 2), 1.0),
    "first_token": (lambda r: FirstToken(), (2, 3, 4), 1.0),
    "nonorm": (lambda r: NoNorm(5), (2, 3, 5), 1.0),
    "trigram": (lambda r: Trigram(), (2, 4, 3), 1.0),
    "add_positions": (lambda r: AddPositions(6, 3, r), (2, 4, 3), 1.0),
    "bottleneck_attention": (lambda r: BottleneckAttention(6, 4, 2, r), (2, 3, 6), 1.0),
}
H = 1e-6


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_backward_equals_central_differences_everywhere(name):
    """loss = sum(y * w) for a fixed random w: every input entry and every parameter entry."""
    make, shape, scale = EXAMPLES[name]
    rng = stream(0, f"test_zoo_layers.{name}")
    layer = astype(randomized(make(stream(0, name))), np.float64)
    x = scale * rng.standard_normal(shape)
    y, cache = layer.forward(x, train=True)
    w = rng.standard_normal(y.shape)
    layer.zero_grad()
    dx = layer.backward(w, cache)

    def loss() -> float:
        return float(np.sum(layer.forward(x, train=True)[0] * w))

    for arr, grad in [(x, dx)] + [(layer.params[k], layer.grads[k]) for k in layer.params]:
        flat, g = arr.reshape(-1), grad.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + H
            up = loss()
            flat[i] = old - H
            down = loss()
            flat[i] = old
            fd = (up - down) / (2 * H)
            assert abs(fd - g[i]) <= 1e-8 + 1e-5 * abs(fd), (name, i, fd, g[i])


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_cost_predicts_the_output_shape_and_float32_stays_float32(name):
    make, shape, scale = EXAMPLES[name]
    layer = make(stream(0, name))
    x = (scale * stream(2, name).standard_normal(shape)).astype(np.float32)
    y, _ = layer.forward(x)
    assert y.shape == layer.cost(shape).out_shape and y.dtype == np.float32
    assert layer.cost(shape).fwd_flops >= 0


def test_padded_max_pool_is_maxpool_with_padding():
    """Pad2d(-inf) then MaxPool(3, 2): a pad never wins, so every output is the max of the
    real values its window covers (a brute-force loop here)."""
    x = stream(3, "pool").standard_normal((1, 2, 5, 6))
    y, _ = Sequential([Pad2d(1, -np.inf), MaxPool(3, 2)]).forward(x)
    for c in range(2):
        for i in range(y.shape[2]):
            for j in range(y.shape[3]):
                rows = slice(max(2 * i - 1, 0), 2 * i + 2)
                cols = slice(max(2 * j - 1, 0), 2 * j + 2)
                assert y[0, c, i, j] == x[0, c, rows, cols].max()


def test_trigram_puts_next_own_and_previous_side_by_side():
    x = np.arange(1, 7, dtype=np.float64).reshape(1, 3, 2)   # positions [1 2] [3 4] [5 6]
    y, _ = Trigram().forward(x)
    assert y[0].tolist() == [[3, 4, 1, 2, 0, 0], [5, 6, 3, 4, 1, 2], [0, 0, 5, 6, 3, 4]]


def test_bottleneck_attention_by_hand_with_one_head():
    """One head, every weight set by hand: a = NoNorm(softmax(q k^T / sqrt(w)) v Wo + li)."""
    layer = astype(randomized(BottleneckAttention(3, 2, 1, stream(0, "ba"))), np.float64)
    p = layer.params
    x = stream(4, "ba").standard_normal((1, 4, 3))
    li = (x @ p["bottleneck_in.0.W"] + p["bottleneck_in.0.b"]) * p["bottleneck_in.1.gamma"] \
        + p["bottleneck_in.1.beta"]
    s = (x @ p["bottleneck_att.0.W"] + p["bottleneck_att.0.b"]) * p["bottleneck_att.1.gamma"] \
        + p["bottleneck_att.1.beta"]
    q, k = s @ p["q.W"] + p["q.b"], s @ p["k.W"] + p["k.b"]
    v = x @ p["v.W"] + p["v.b"]
    scores = q[0] @ k[0].T / math.sqrt(2)
    weights = np.exp(scores - scores.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    o = weights @ v[0] @ p["o.W"] + p["o.b"]
    want = (o + li[0]) * p["norm.gamma"] + p["norm.beta"]
    np.testing.assert_allclose(layer.forward(x)[0][0], want, rtol=1e-12, atol=1e-12)


TORCH_PAIRS = {
    "sigmoid": (Sigmoid, "sigmoid"),
    "silu": (SiLU, "silu"),
    "hardsigmoid": (Hardsigmoid, "hardsigmoid"),
    "hardswish": (Hardswish, "hardswish"),
}


@pytest.mark.parametrize("name", sorted(TORCH_PAIRS))
def test_activations_match_torch_values_and_gradients(name):
    torch = pytest.importorskip("torch")
    cls, fn = TORCH_PAIRS[name]
    x = 4.0 * stream(5, name).standard_normal((3, 50))
    dy = stream(6, name).standard_normal(x.shape)
    y, cache = cls().forward(x)
    dx = cls().backward(dy, cache)
    tx = torch.tensor(x, requires_grad=True)
    ty = getattr(torch.nn.functional, fn)(tx)
    ty.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-15)
    # torch's hardsigmoid backward multiplies by 1/6 rounded to float32 (a 3e-8 step)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-7, atol=1e-15)


def test_padded_max_pool_and_squeeze_excite_match_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = stream(7, "torch").standard_normal((2, 4, 7, 7))
    y, _ = Sequential([Pad2d(1, -np.inf), MaxPool(3, 2)]).forward(x)
    np.testing.assert_array_equal(y, F.max_pool2d(torch.tensor(x), 3, 2, 1).numpy())
    se = astype(SqueezeExcite.of(4, 2, ReLU(), Hardsigmoid(), stream(0, "se")), np.float64)
    p = {k: torch.tensor(v) for k, v in se.params.items()}
    tx = torch.tensor(x)
    g = F.relu(tx.mean(dim=(2, 3)) @ p["gate.1.W"] + p["gate.1.b"]) @ p["gate.3.W"] + p["gate.3.b"]
    want = tx * F.hardsigmoid(g)[:, :, None, None]
    np.testing.assert_allclose(se.forward(x)[0], want.numpy(), rtol=1e-12, atol=1e-15)


def test_composite_costs_in_closed_form():
    """FLOPs written out term by term (2 per multiply-add, per-value work as each kernel
    counts it), so a cost that drops a part fails."""
    n, t, hidden, inner, heads = 2, 5, 6, 4, 2
    layer = BottleneckAttention(hidden, inner, heads, stream(0, "cost"))
    m = n * t
    gemms = 2 * m * (2 * hidden * inner + 2 * inner * inner + hidden * inner + inner * inner)
    core = 4 * n * t * t * inner + 5 * n * heads * t * t
    per_value = 2 * (2 * m * inner) + m * inner + 2 * m * inner   # two NoNorms, add, NoNorm
    assert layer.cost((n, t, hidden)).fwd_flops == gemms + core + per_value
    se = SqueezeExcite.of(4, 2, ReLU(), Hardsigmoid(), stream(0, "cost"))
    c, hw = 4, 9
    # pool, Linear 4->2, ReLU, Linear 2->4, Hardsigmoid (3 per value), then the scale
    want = n * c * hw + 2 * n * 4 * 2 + n * 2 + 2 * n * 2 * 4 + 3 * n * c + n * c * hw
    assert se.cost((n, c, 3, 3)).fwd_flops == want
