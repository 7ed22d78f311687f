"""Kernels against finite differences, naive loops and the in-flight contract."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from simdl.errors import SimdlError
from simdl.nn import conv
from simdl.nn.layers import (LAYERS, AvgPool, BatchNorm, Conv2d, Linear, MaxPool,
                             Sequential, SoftmaxCrossEntropy, astype, get, softmax)

EPS = 1e-6     # central-difference step: truncation O(EPS^2), rounding O(1e-16 / EPS)
RTOL = 1e-6    # ||analytic - numeric|| / (||analytic|| + ||numeric||)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """Relative error; absolute below norm 1, where a true zero (attention's bk) meets FD noise."""
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1.0))


def numeric_grad(f, arr: np.ndarray) -> np.ndarray:
    """Central differences of the scalar f() w.r.t. every entry of arr (perturbed in place)."""
    g = np.zeros_like(arr)
    for i in np.ndindex(arr.shape):
        old = arr[i]
        arr[i] = old + EPS
        up = f()
        arr[i] = old - EPS
        down = f()
        arr[i] = old
        g[i] = (up - down) / (2 * EPS)
    return g


def float64_layer(ex, seed: int = 0) -> tuple:
    """The example's layer in float64, every parameter moved off its init (biases 0, gamma 1)."""
    rng = np.random.default_rng(seed)
    layer = astype(ex.build(rng), np.float64)
    for p in layer.params.values():
        p += 0.3 * rng.standard_normal(p.shape)
    for name, b in layer.buffers.items():
        is_var = name.endswith("var")
        b[...] = rng.uniform(0.5, 1.5, b.shape) if is_var else rng.standard_normal(b.shape)
    x = ex.make_x(rng)
    if np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    return layer, x, rng


def test_every_registry_entry_has_examples(layer_examples):
    """A new layer cannot be added to LAYERS without a gradient-check example."""
    assert set(layer_examples) == set(LAYERS)
    assert all(layer_examples[name] for name in LAYERS)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_gradients_match_central_differences_in_float64(name, layer_examples):
    """f = sum(y * R) for a fixed random R; df/dx and df/dparam by central differences."""
    for ex in layer_examples[name]:
        layer, x, rng = float64_layer(ex)
        y, cache = layer.forward(x, ex.train)
        assert y.dtype == np.float64, ex.id
        r = rng.standard_normal(y.shape)
        layer.zero_grad()
        dx = layer.backward(r, cache)

        def f() -> float:
            return float(np.sum(layer.forward(x, ex.train)[0] * r))

        if np.issubdtype(x.dtype, np.floating):
            assert rel_err(dx, numeric_grad(f, x)) < RTOL, f"{ex.id}: dx"
        else:
            assert dx is None, f"{ex.id}: integer tokens have no gradient"
        for pname, p in layer.params.items():
            assert rel_err(layer.grads[pname], numeric_grad(f, p)) < RTOL, f"{ex.id}: {pname}"


@pytest.mark.parametrize("labels_shape", [(4,), (2, 3)])
def test_cross_entropy_gradient_matches_central_differences(labels_shape):
    """Loss is the mean over labelled positions; one position is unlabelled (-1)."""
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((*labels_shape, 5))
    labels = rng.integers(0, 5, labels_shape)
    labels.reshape(-1)[1] = -1
    loss_fn = SoftmaxCrossEntropy()
    _, cache = loss_fn.forward(logits, labels)
    d = loss_fn.backward(cache)
    num = numeric_grad(lambda: loss_fn.forward(logits, labels)[0], logits)
    assert d.shape == logits.shape
    assert rel_err(d, num) < RTOL
    assert np.all(d.reshape(-1, 5)[1] == 0)


def test_cross_entropy_of_uniform_logits_is_log_classes():
    """Equal logits: p = 1/C for every class, so the loss is log C = log 4."""
    loss, _ = SoftmaxCrossEntropy().forward(np.zeros((3, 4), np.float32), np.array([0, 1, 3]))
    assert loss == pytest.approx(np.log(4), rel=1e-6)


def test_softmax_is_stable_for_huge_logits():
    """x and x + 1000 give the same softmax, and no overflow: [0, ln 3] -> [1/4, 3/4]."""
    x = np.array([[1000.0, 1000.0 + np.log(3.0)]])
    np.testing.assert_allclose(softmax(x), [[0.25, 0.75]], rtol=1e-12)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_backward_adds_into_grads(name, layer_examples):
    """Two backward calls with the same dy and cache leave exactly twice the gradient."""
    for ex in layer_examples[name]:
        rng = np.random.default_rng(2)
        layer = ex.build(rng)
        x = ex.make_x(rng)
        y, cache = layer.forward(x, ex.train)
        dy = rng.standard_normal(y.shape).astype(y.dtype)
        dx1 = layer.backward(dy, cache)
        once = {k: g.copy() for k, g in layer.grads.items()}
        dx2 = layer.backward(dy, cache)
        if dx1 is not None:
            np.testing.assert_array_equal(dx1, dx2)     # the cache is not consumed
        for k, g in layer.grads.items():
            np.testing.assert_allclose(g, 2 * once[k], rtol=1e-6, atol=1e-6, err_msg=ex.id)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_two_micro_batches_in_flight_match_one_at_a_time(name, layer_examples):
    """F(a) F(b) B(b) B(a) on one layer == F(a) B(a) F(b) B(b) on a twin: nothing hides in self."""
    for ex in layer_examples[name]:
        rng = np.random.default_rng(3)
        xa, xb = ex.make_x(rng), ex.make_x(rng)
        twin, inflight = ex.build(np.random.default_rng(4)), ex.build(np.random.default_rng(4))
        ya, ca = twin.forward(xa, ex.train)
        da_dy = rng.standard_normal(ya.shape).astype(ya.dtype)
        db_dy = rng.standard_normal(ya.shape).astype(ya.dtype)
        dxa = twin.backward(da_dy, ca)
        yb, cb = twin.forward(xb, ex.train)
        dxb = twin.backward(db_dy, cb)

        ya2, ca2 = inflight.forward(xa, ex.train)
        yb2, cb2 = inflight.forward(xb, ex.train)
        dxb2 = inflight.backward(db_dy, cb2)
        dxa2 = inflight.backward(da_dy, ca2)
        for got, want in ((ya2, ya), (yb2, yb), (dxa2, dxa), (dxb2, dxb)):
            if want is not None:
                np.testing.assert_array_equal(got, want, err_msg=ex.id)
        for table in ("grads", "buffers"):
            for k, v in getattr(twin, table).items():
                np.testing.assert_array_equal(getattr(inflight, table)[k], v, err_msg=ex.id)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_float32_in_float32_out(name, layer_examples):
    """float32 inputs and parameters give float32 outputs, input gradients and grads."""
    for ex in layer_examples[name]:
        rng = np.random.default_rng(5)
        layer = ex.build(rng)
        for train in (True, False):
            y, cache = layer.forward(ex.make_x(rng), train)
            dx = layer.backward(np.ones_like(y), cache)
            assert y.dtype == np.float32, ex.id
            assert dx is None or dx.dtype == np.float32, ex.id
            assert all(g.dtype == np.float32 for g in layer.grads.values()), ex.id


def naive_conv(x, w, b, stride, padding, groups):
    """The definition, one output value at a time."""
    n, c, h, wd = x.shape
    o, cg, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    oh, ow = (h + 2 * padding - k) // stride + 1, (wd + 2 * padding - k) // stride + 1
    y = np.zeros((n, o, oh, ow))
    per_group = o // groups
    for i, j, a, bb in itertools.product(range(n), range(o), range(oh), range(ow)):
        g = j // per_group
        patch = xp[i, g * cg:(g + 1) * cg, a * stride:a * stride + k, bb * stride:bb * stride + k]
        y[i, j, a, bb] = np.sum(patch * w[j]) + (b[j] if b is not None else 0.0)
    return y


CONV_CASES = [  # c_in, c_out, k, stride, padding, groups, H, W
    (3, 4, 3, 1, 0, 1, 6, 5), (3, 4, 3, 1, 1, 1, 5, 7), (3, 4, 3, 2, 1, 1, 7, 6),
    (4, 4, 3, 1, 1, 4, 6, 6), (4, 4, 3, 2, 1, 4, 7, 7), (4, 6, 3, 1, 1, 2, 5, 5),
    (3, 5, 1, 1, 0, 1, 4, 3), (2, 3, 1, 2, 0, 1, 5, 5), (2, 3, 5, 1, 2, 1, 5, 6),
]


@pytest.mark.parametrize("c_in, c_out, k, stride, padding, groups, h, w", CONV_CASES)
@pytest.mark.parametrize("chunk", ["whole_batch", "two_then_one"])
def test_conv_forward_equals_the_naive_loop(c_in, c_out, k, stride, padding, groups, h, w,
                                            chunk, monkeypatch):
    """Output = sum over the group's channels and the k x k window, plus bias, per pixel.

    "two_then_one" forces batch chunks of 2 samples on a batch of 3, so the
    multi-sample and the single-sample GEMM paths both run.
    """
    rng = np.random.default_rng(6)
    layer = Conv2d(c_in, c_out, k, rng, stride=stride, padding=padding, groups=groups)
    layer.params["b"][:] = rng.standard_normal(c_out)
    x = rng.standard_normal((3, c_in, h, w)).astype(np.float32)
    if chunk == "two_then_one":
        geo = conv.Geometry.of(x.shape, k, stride, padding, groups)
        monkeypatch.setattr(conv, "COL_BUDGET", 0)
        monkeypatch.setattr(conv, "MIN_GEMM_COLS", 2 * geo.oh * geo.wq)
    y, _ = layer.forward(x)
    want = naive_conv(x.astype(np.float64), layer.params["W"].astype(np.float64),
                      layer.params["b"].astype(np.float64), stride, padding, groups)
    assert y.shape == want.shape
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride, padding, groups", [(1, 1, 1), (2, 1, 2), (1, 0, 4)])
def test_conv_gradients_do_not_depend_on_the_batch_chunking(stride, padding, groups, monkeypatch):
    """Chunks of 2 then 1 sample give the whole-batch dx, dW and db up to float64 rounding.

    Stride 1 takes dx from a transposed correlation of dy; stride 2 from col2im.
    """
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 4, 6, 5))
    results = []
    for chunked in (False, True):
        if chunked:
            geo = conv.Geometry.of(x.shape, 3, stride, padding, groups)
            monkeypatch.setattr(conv, "COL_BUDGET", 0)
            monkeypatch.setattr(conv, "MIN_GEMM_COLS", 2 * geo.oh * geo.wq)
        layer = astype(Conv2d(4, 8, 3, np.random.default_rng(8), stride=stride, padding=padding,
                              groups=groups), np.float64)
        y, cache = layer.forward(x)
        dy = np.random.default_rng(9).standard_normal(y.shape)
        results.append((y, layer.backward(dy, cache), layer.grads["W"].copy(),
                        layer.grads["b"].copy()))
    for whole, chunked in zip(*results):
        np.testing.assert_allclose(chunked, whole, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k, stride, h, w", [(2, None, 4, 6), (3, 2, 7, 7), (2, 1, 4, 5),
                                             (2, None, 5, 5)])
def test_pools_equal_the_naive_loop(k, stride, h, w):
    """Each output is the max / mean of its k x k window at (stride a, stride b); floor sizes."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
    s = stride or k
    oh, ow = (h - k) // s + 1, (w - k) // s + 1
    want_max, want_avg = np.zeros((2, 3, oh, ow)), np.zeros((2, 3, oh, ow))
    for i, c, a, b in itertools.product(range(2), range(3), range(oh), range(ow)):
        win = x[i, c, a * s:a * s + k, b * s:b * s + k]
        want_max[i, c, a, b], want_avg[i, c, a, b] = win.max(), win.mean()
    np.testing.assert_array_equal(MaxPool(k, stride).forward(x)[0], want_max.astype(np.float32))
    np.testing.assert_allclose(AvgPool(k, stride).forward(x)[0], want_avg, rtol=1e-6, atol=1e-6)


def test_batchnorm_running_stats_move_only_in_training():
    """momentum 0.1 from (0, 1): mean -> 0.1 * batch mean, var -> 0.9 + 0.1 * unbiased var."""
    x = np.array([[1.0], [3.0]], np.float32)           # N=2, C=1: mean 2, unbiased var 2
    bn = BatchNorm(1)
    bn.forward(x, train=False)
    np.testing.assert_array_equal(bn.buffers["mean"], [0.0])
    y, _ = bn.forward(x, train=True)
    np.testing.assert_allclose(bn.buffers["mean"], [0.2], rtol=1e-6)
    np.testing.assert_allclose(bn.buffers["var"], [0.9 + 0.1 * 2.0], rtol=1e-6)
    np.testing.assert_allclose(y[:, 0], [-1.0, 1.0], rtol=1e-4)  # biased var 1 -> (x-2)/1


def test_causal_attention_ignores_the_future():
    """Changing the last token changes only the last output position."""
    from simdl.nn.layers import SelfAttention
    rng = np.random.default_rng(10)
    att = SelfAttention(8, 2, rng, causal=True)
    x = rng.standard_normal((1, 4, 8)).astype(np.float32)
    x2 = x.copy()
    x2[0, 3] += 1.0
    y, _ = att.forward(x)
    y2, _ = att.forward(x2)
    np.testing.assert_array_equal(y[0, :3], y2[0, :3])
    assert not np.allclose(y[0, 3], y2[0, 3])


def test_composites_expose_the_childrens_own_arrays():
    """"0.W" is the child's array (optimizers update in place); assigning writes through."""
    rng = np.random.default_rng(11)
    seq = Sequential([Linear(3, 2, rng), BatchNorm(2)])
    assert list(seq.params) == ["0.W", "0.b", "1.gamma", "1.beta"]
    assert list(seq.buffers) == ["1.mean", "1.var"]
    assert seq.params["0.W"] is seq.layers[0].params["W"]
    seq.params["0.W"] -= 1.0
    np.testing.assert_array_equal(seq.layers[0].params["W"], seq.params["0.W"])
    astype(seq, np.float64)
    assert seq.layers[0].params["W"].dtype == np.float64
    assert seq.layers[1].grads["gamma"].dtype == np.float64


def test_unknown_layer_name_lists_the_choices():
    with pytest.raises(SimdlError, match="layer: 'conv' is not valid; choose one of: .*conv2d"):
        get("conv")
