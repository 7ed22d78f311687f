"""The fast kernel paths give the plain formulas' bits, not just close values.

A training run's numbers (and the shipped scenarios' files) depend on every
float sum's order, so each speed-up of issue 14 is checked here against the
straightforward numpy expression or loop it replaces, with np.array_equal on
the bytes (signed zeros and NaNs included).
"""
from __future__ import annotations

import numpy as np
import pytest

from simdl.nn import conv
from simdl.nn.core import _SCRATCH, scratch
from simdl.nn.dense import kept, put
from simdl.nn.layers import BatchNorm, Conv2d, LayerNorm, MaxPool, ReLU, ReLU6, astype
from simdl.nn.norm import _norm_backward


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def awkward(rng: np.random.Generator, shape: tuple[int, ...], dtype) -> np.ndarray:
    """Normal values with +-0, +-inf and NaN sprinkled in."""
    x = rng.standard_normal(shape).astype(dtype)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan], dtype)
    where = rng.random(shape) < 0.2
    x[where] = rng.choice(specials, where.sum())
    return x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["C", "F", "transposed_dy"])
def test_kept_is_np_where_bit_for_bit(dtype, layout):
    """+0.0 where not kept even for dy = -0.0 or NaN (dy * keep would give -0.0 and NaN)."""
    rng = np.random.default_rng(0)
    keep = rng.random((4, 3, 5, 6)) < 0.5
    dy = awkward(rng, keep.shape, dtype)
    if layout == "F":
        keep, dy = np.asfortranarray(keep), np.asfortranarray(dy)
    elif layout == "transposed_dy":
        dy = np.ascontiguousarray(dy.transpose(3, 2, 1, 0)).transpose(3, 2, 1, 0)
    got, want = kept(keep, dy), np.where(keep, dy, 0)
    assert same_bits(got, want) and got.strides == want.strides


@pytest.mark.parametrize("layer", [ReLU(), ReLU6()])
def test_relu_backward_is_the_masked_select(layer):
    rng = np.random.default_rng(1)
    x = (4 * rng.standard_normal((3, 4, 5, 5))).astype(np.float32)
    y, cache = layer.forward(x)
    dy = awkward(rng, y.shape, np.float32)
    keep = (y > 0) & (y < 6) if isinstance(layer, ReLU6) else y > 0
    assert same_bits(layer.backward(dy, cache), np.where(keep, dy, 0))


def test_put_is_an_elementwise_select():
    rng = np.random.default_rng(2)
    dst, src = awkward(rng, (7, 9), np.float32), awkward(rng, (7, 9), np.float32)
    take = rng.random((7, 9)) < 0.5
    want = np.where(take, src, dst)
    put(dst, take, src)
    assert same_bits(dst, want)


def window_stack(x: np.ndarray, k: int, s: int) -> np.ndarray:
    """(N, C, k*k, OH, OW): every window's values, offsets in row-major order."""
    oh, ow = (x.shape[2] - k) // s + 1, (x.shape[3] - k) // s + 1
    return np.stack([x[:, :, i:i + s * oh:s, j:j + s * ow:s]
                     for i in range(k) for j in range(k)], axis=2)


@pytest.mark.parametrize("k, stride", [(2, None), (3, 2), (2, 1)])
def test_maxpool_takes_argmax_and_scatters_in_offset_order(k, stride):
    """y is the value at np.argmax of each window (first maximum, first NaN, -0.0 before
    +0.0 when first); dx is zeros plus (arg == r) * dy for each offset r in order."""
    rng = np.random.default_rng(3)
    values = np.array([0.0, -0.0, 1.0, -1.0, np.nan, np.inf], np.float32)
    x = rng.choice(values, (3, 2, 7, 7))
    pool = MaxPool(k, stride)
    y, (arg, shape) = pool.forward(x)
    win = window_stack(x, k, pool.stride)
    want_arg = win.argmax(axis=2)
    assert np.array_equal(arg, want_arg)
    assert same_bits(y, np.take_along_axis(win, want_arg[:, :, None], axis=2)[:, :, 0])

    dy = awkward(rng, y.shape, np.float32)
    want = np.zeros(x.shape, np.float32)
    s, (oh, ow) = pool.stride, y.shape[2:]
    with np.errstate(invalid="ignore"):                       # inf * 0, as in the kernel
        for r in range(k * k):
            i, j = divmod(r, k)
            want[:, :, i:i + s * oh:s, j:j + s * ow:s] += (want_arg == r) * dy
        got = pool.backward(dy, (arg, shape))
    assert same_bits(got, want)


def naive_col2im(da: np.ndarray, shape: tuple[int, ...], k: int, s: int, p: int) -> np.ndarray:
    """da (C, k, k, N, OH, OW) added into zeros at each offset's strided positions, in
    (i, j) order, then cropped: the textbook adjoint of im2col."""
    n, c, h, w = shape
    oh, ow = da.shape[-2:]
    dpad = np.zeros((n, c, h + 2 * p, w + 2 * p), da.dtype)
    for i in range(k):
        for j in range(k):
            dpad[:, :, i:i + s * oh:s, j:j + s * ow:s] += da[:, i, j].transpose(1, 0, 2, 3)
    return dpad[:, :, p:p + h, p:p + w]


@pytest.mark.parametrize("c_in, c_out, k, stride, padding, groups, hw", [
    (6, 6, 3, 2, 1, 6, 9),        # depthwise: da is one product per value
    (4, 6, 3, 2, 1, 2, 8),        # grouped: da from a GEMM with K = 3
    (3, 5, 1, 2, 0, 1, 7),        # strided 1x1 shortcut: one offset, positions skipped
    (2, 4, 5, 3, 2, 1, 11),       # stride 3 with a 5x5 window
])
@pytest.mark.parametrize("chunked", [False, True])
def test_strided_conv_dx_is_the_textbook_col2im(c_in, c_out, k, stride, padding, groups, hw,
                                                 chunked, monkeypatch):
    """dx = crop(sum over offsets, in order, of da = W^T dy at the strided positions), exact."""
    if chunked:
        monkeypatch.setattr(conv, "COL_BUDGET", 0)
        monkeypatch.setattr(conv, "MIN_GEMM_COLS", 1)        # one sample per chunk
    rng = np.random.default_rng(4)
    layer = Conv2d(c_in, c_out, k, rng, stride=stride, padding=padding, groups=groups)
    x = rng.standard_normal((3, c_in, hw, hw)).astype(np.float32)
    y, cache = layer.forward(x)
    dy = awkward(rng, y.shape, np.float32)
    dy[~np.isfinite(dy)] = 1.0                                # finite: NaN * 0 spreads anyway
    g, og, cg = groups, c_out // groups, c_in // groups
    w3 = layer.params["W"].reshape(g, og, cg * k * k)
    d = dy.transpose(1, 0, 2, 3).reshape(g, og, -1)           # (g, C_out/g, N*OH*OW)
    da = w3.transpose(0, 2, 1) * d if og == 1 else np.matmul(w3.transpose(0, 2, 1), d)
    want = naive_col2im(da.reshape(c_in, k, k, *dy.shape[:1], *dy.shape[2:]), x.shape,
                        k, stride, padding)
    assert same_bits(layer.backward(dy, cache), np.ascontiguousarray(want))


@pytest.mark.parametrize("c_in, groups, k, padding", [(5, 5, 3, 1), (4, 4, 5, 2), (3, 3, 3, 0),
                                                      (6, 3, 3, 1)])
def test_depthwise_dx_sums_like_numpys_matmul_of_the_flipped_weights(c_in, groups, k, padding):
    """One output channel per group: dx equals correlate() on dy with W flipped, bit for
    bit. numpy sums a depthwise (negative-stride vector) product itself, value by value,
    but copies a (C/g > 1)-row matrix for BLAS, so only true depthwise takes the direct path."""
    rng = np.random.default_rng(5)
    layer = Conv2d(c_in, groups, k, rng, padding=padding, groups=groups)
    x = rng.standard_normal((3, c_in, 7, 6)).astype(np.float32)
    y, cache = layer.forward(x)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dy[0, 0, :2] = -0.0
    wf = layer.params["W"].reshape(groups, 1, -1, k, k).transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]
    want = conv.correlate(dy, wf.reshape(c_in, 1, k, k), 1, k - 1 - padding, groups)
    assert same_bits(layer.backward(dy, cache), want)


@pytest.mark.parametrize("groups, og", [(1, 4), (4, 1), (2, 3)])
def test_conv_dw_sums_chunk_by_chunk_as_dy_times_columns(groups, og, monkeypatch):
    """dW = sum over batch chunks, in order, of dy_chunk @ columns_chunk^T (junk columns
    zero): computed as columns @ dy^T, the same products in the same order."""
    monkeypatch.setattr(conv, "COL_BUDGET", 0)
    monkeypatch.setattr(conv, "MIN_GEMM_COLS", 60)           # chunks of 2 samples, then 1
    rng = np.random.default_rng(6)
    c_in, c_out = 2 * groups, og * groups
    layer = Conv2d(c_in, c_out, 3, rng, padding=1, groups=groups, bias=False)
    x = rng.standard_normal((5, c_in, 6, 6)).astype(np.float32)
    y, cache = layer.forward(x)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    geo = conv.Geometry.of(x.shape, 3, 1, 1, groups)
    assert geo.chunk == 2
    want = np.zeros((groups, og, c_in // groups * 9), np.float32)
    for n0 in range(0, 5, geo.chunk):
        xc = x[n0:n0 + geo.chunk]
        pad = np.zeros((geo.chunk, c_in, 6 + 3, geo.wp), np.float32)
        cols = np.empty(c_in * 9 * geo.chunk * geo.oh * geo.wq, np.float32)
        a = geo.columns(xc, pad, cols)
        d = np.zeros((c_out, len(xc), geo.oh, geo.wq), np.float32)
        d[..., :geo.ow] = dy[n0:n0 + geo.chunk].transpose(1, 0, 2, 3)
        want += d.reshape(groups, og, -1) @ a.transpose(0, 2, 1)
    layer.backward(dy, cache)
    assert same_bits(layer.grads["W"], want.reshape(layer.params["W"].shape))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm_and_layernorm_are_their_formulas_bit_for_bit(dtype):
    """Forward: xhat = (x - mean) / sqrt(var + eps), y = xhat gamma + beta; backward the
    closed form, each written out as plain numpy expressions."""
    rng = np.random.default_rng(7)
    for layer, x, axes in ((BatchNorm(3), rng.standard_normal((4, 3, 5, 5)), (0, 2, 3)),
                           (LayerNorm(6), rng.standard_normal((4, 5, 6)), (2,))):
        astype(layer, dtype)
        layer.params["gamma"][:] = rng.standard_normal(layer.params["gamma"].shape)
        layer.params["beta"][:] = rng.standard_normal(layer.params["beta"].shape)
        x = x.astype(dtype)
        y, cache = layer.forward(x, train=True)
        bshape = (1, -1, 1, 1) if isinstance(layer, BatchNorm) else (-1,)
        gamma = layer.params["gamma"].reshape(bshape)
        beta = layer.params["beta"].reshape(bshape)
        xc = x - x.mean(axis=axes, keepdims=True)
        inv = 1.0 / np.sqrt((xc * xc).mean(axis=axes, keepdims=True) + layer.eps)
        xhat = xc * inv
        assert same_bits(cache[0], xhat) and same_bits(y, xhat * gamma + beta)

        dy = rng.standard_normal(y.shape).astype(dtype)
        m = int(np.prod([x.shape[a] for a in axes]))
        g = dy * gamma
        want = (inv * (1.0 / m)) * (m * g - g.sum(axis=axes, keepdims=True)
                                    - xhat * (g * xhat).sum(axis=axes, keepdims=True))
        assert same_bits(layer.backward(dy, cache), want)
        assert same_bits(_norm_backward(dy, xhat, inv, gamma, axes), want)


def test_scratch_reuses_one_buffer_per_slot_and_dtype():
    a = scratch("test_slot", (2, 3), np.float32)
    b = scratch("test_slot", (3, 2), np.float32)
    assert np.shares_memory(a, b) and b.flags.c_contiguous and b.shape == (3, 2)
    assert not np.shares_memory(a, scratch("test_other", (2, 3), np.float32))
    assert not np.shares_memory(a, scratch("test_slot", (2, 3), np.float64))
    big = scratch("test_slot", (100,), np.float32)            # grows: a new buffer
    assert big.shape == (100,) and np.shares_memory(big, scratch("test_slot", (4,), np.float32))


@pytest.mark.parametrize("layer, shape", [
    (Conv2d(4, 6, 3, np.random.default_rng(0), stride=2, padding=1), (3, 4, 8, 8)),
    (Conv2d(4, 4, 3, np.random.default_rng(0), padding=1, groups=4), (3, 4, 8, 8)),
    (BatchNorm(4), (3, 4, 5, 5)),
    (LayerNorm(5), (3, 4, 5)),
    (MaxPool(2), (3, 4, 8, 8)),
])
def test_no_kernel_returns_or_caches_a_scratch_buffer(layer, shape):
    """Outputs, dx and caches are the caller's own arrays: the next call cannot overwrite them."""
    x = np.random.default_rng(8).standard_normal(shape).astype(np.float32)
    y, cache = layer.forward(x, True)
    dx = layer.backward(np.ones_like(y), cache)
    held = [y, dx, *[c for c in (cache if isinstance(cache, tuple) else (cache,))
                     if isinstance(c, np.ndarray)]]
    for buf in _SCRATCH.arrays.values():
        assert not any(np.shares_memory(a, buf) for a in held)


def _plain_sgd(p, g, v, lr, momentum, weight_decay, nesterov):
    """One SGD step as the formula reads (the code before its buffers were reused)."""
    if weight_decay:
        g = g + weight_decay * p
    if momentum:
        v *= momentum
        v += g
        g = g + momentum * v if nesterov else v
    p -= lr * g


def _plain_adam(p, g, m, v, t, lr, betas, eps, weight_decay):
    b1, b2 = betas
    if weight_decay:
        g = g + weight_decay * p
    m *= b1
    m += (1 - b1) * g
    v *= b2
    v += (1 - b2) * (g * g)
    m_hat = m / (1 - b1 ** t)
    v_hat = v / (1 - b2 ** t)
    p -= lr * m_hat / (np.sqrt(v_hat) + eps)


@pytest.mark.parametrize("dtype, grad_dtype", [(np.float32, np.float32), (np.float64, np.float64),
                                               (np.float32, np.float64), (np.float64, np.float32)])
@pytest.mark.parametrize("kind, options", [
    ("sgd", {}), ("sgd", {"momentum": 0.9}), ("sgd", {"momentum": 0.9, "nesterov": True}),
    ("sgd", {"momentum": 0.5, "weight_decay": 1e-2}), ("adam", {}),
    ("adam", {"weight_decay": 1e-2, "betas": (0.8, 0.99)})])
def test_optimizer_steps_are_their_formulas_bit_for_bit(dtype, grad_dtype, kind, options):
    """Five steps on two parameters of different shapes (the buffers are shared between
    them), gradients of the parameters' dtype or another: the same bits as the formulas
    written out."""
    from simdl.nn.optim import OPTIMIZERS

    rng = np.random.default_rng(3)
    shapes = {"W": (7, 5), "b": (5,)}
    params = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    mine = {k: p.copy() for k, p in params.items()}
    opt = OPTIMIZERS[kind](lr=0.05, **options)
    state = {k: [np.zeros_like(p), np.zeros_like(p)] for k, p in params.items()}
    for step in range(1, 6):
        grads = {k: awkward(rng, s, grad_dtype) if step == 5
                 else rng.standard_normal(s).astype(grad_dtype) for k, s in shapes.items()}
        with np.errstate(all="ignore"):  # the last step's infinities and NaNs
            opt.step(mine, grads)
        for k, p in params.items():
            a, b = state[k]
            if kind == "sgd":
                _plain_sgd(p, grads[k], a, 0.05, options.get("momentum", 0.0),
                           options.get("weight_decay", 0.0), options.get("nesterov", False))
            else:
                with np.errstate(all="ignore"):
                    _plain_adam(p, grads[k], a, b, step, 0.05,
                                options.get("betas", (0.9, 0.999)), 1e-8,
                                options.get("weight_decay", 0.0))
        assert all(same_bits(mine[k], params[k]) for k in params), step


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.73, 1.0])
@pytest.mark.parametrize("values", ["normal", "ties", "nan"])
def test_magnitude_prune_zeroes_what_a_stable_sort_of_sizes_picks(fraction, values):
    """The k smallest |w|, ties by position, as a stable argsort picks them: with every
    value distinct, with few distinct sizes (many ties, signed zeros), and with NaNs."""
    from simdl.nn.formats import magnitude_prune

    rng = np.random.default_rng(7)
    w = rng.standard_normal((23, 17)).astype(np.float32)
    if values == "ties":
        w = np.round(w * 2) / 2
        w[w == 0] = rng.choice(np.array([0.0, -0.0], np.float32), int((w == 0).sum()))
    elif values == "nan":
        w[rng.random(w.shape) < 0.4] = np.nan
    flat = w.reshape(-1).copy()
    k = int(np.floor(fraction * flat.size + 0.5))
    flat[np.argsort(np.abs(flat), kind="stable")[:k]] = 0
    assert same_bits(magnitude_prune(w, fraction), flat.reshape(w.shape))
