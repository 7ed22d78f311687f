"""Gradient compression: exact bytes per kind, error bounds, top-k and sign as defined,
error feedback that delays but never loses gradient mass, and training that still works."""
from __future__ import annotations

import math

import numpy as np
import pytest

from simdl.errors import SimdlError
from simdl.nn.formats import dequantize_int8, quantize_int8
from simdl.nn.data import gaussian_mixture
from simdl.nn.dense import SoftmaxCrossEntropy
from simdl.nn.fit import evaluate
from simdl.nn.gradcomp import KINDS, Compressor, Packet, decompress, make, wire_bytes
from simdl.nn.models import mlp
from simdl.nn.optim import SGD
from simdl.rng import stream

LOSSY = tuple(k for k in KINDS if k != "none")


def hand_bytes(kind: str, n: int, ratio: float) -> int:
    """The documented wire formats, written out again by hand."""
    k = max(1, int(math.floor(ratio * n + 0.5)))
    return {"none": 4 * n, "fp16": 2 * n, "int8": n + 4 + 1, "topk": 4 * k + 4 * k,
            "sign": math.ceil(n / 8) + 4}[kind]


def gaussian(seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# -- bytes on the wire -------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [1, 7, 8, 9, 100, 1001, 12345])
@pytest.mark.parametrize("ratio", [0.01, 0.1, 0.5])
def test_packet_bytes_equal_the_hand_formula_and_the_arrays_sent(kind, n, ratio):
    """e.g. n = 1001, ratio 0.01: none 4004, fp16 2002, int8 1006, topk k=10 -> 80, sign 126 + 4."""
    p = make(kind, ratio).compress("w", gaussian(n, n))
    assert p.nbytes == hand_bytes(kind, n, ratio) == wire_bytes(kind, n, ratio)
    assert p.nbytes == sum(a.nbytes for a in p.data)          # data is exactly what travels
    assert p.kind == kind and p.shape == (n,)


def test_a_few_byte_counts_written_out():
    assert [wire_bytes(k, 1000, 0.01) for k in KINDS] == [4000, 2000, 1005, 80, 129]
    assert wire_bytes("topk", 10, 0.01) == 8                  # k = max(1, round(0.1)) = 1
    assert wire_bytes("topk", 250, 0.01) == 24                # round(2.5) = 3: half rounds up
    assert [wire_bytes(k, 0) for k in KINDS] == [0] * 5       # an empty tensor sends nothing


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(3, 4, 5), (7,), (1, 1)])
def test_decompress_gives_float32_in_the_gradient_shape_and_roundtrip_agrees(kind, shape):
    g = gaussian(1, *shape)
    a, b = make(kind, 0.2), make(kind, 0.2)
    p = a.compress("w", g)
    out, nbytes = b.roundtrip("w", g)
    assert out.dtype == np.float32 and out.shape == shape
    np.testing.assert_array_equal(out, a.decompress(p))
    np.testing.assert_array_equal(out, decompress(p))
    assert nbytes == p.nbytes


@pytest.mark.parametrize("kind", KINDS)
def test_input_untouched_packet_read_only_and_runs_repeat_bit_for_bit(kind):
    g = gaussian(2, 40, 3)
    before = g.copy()
    runs = []
    for _ in range(2):
        c = make(kind, 0.05)
        runs.append([c.compress("w", g + i) for i in range(3)])
    np.testing.assert_array_equal(g, before)
    for p, q in zip(*runs):
        assert (p.kind, p.shape, p.nbytes) == (q.kind, q.shape, q.nbytes)
        for x, y in zip(p.data, q.data):
            np.testing.assert_array_equal(x, y)
            assert not x.flags.writeable


def test_empty_tensor_sends_nothing():
    p = make("topk").compress("w", np.zeros((0, 3), np.float32))
    assert (p.nbytes, p.data, p.shape) == (0, (), (0, 3))
    assert decompress(p).shape == (0, 3)


# -- numerics of each kind -----------------------------------------------------------
def test_none_is_exact_and_keeps_no_residual():
    g = gaussian(3, 50)
    c = make("none")
    np.testing.assert_array_equal(c.roundtrip("w", g)[0], g)
    assert c.residuals == {} and c.state_bytes() == 0


def test_fp16_error_is_half_an_ulp_and_huge_values_saturate():
    """Round to nearest: |x - fp16(x)| <= 2^-11 |x| in the normal range, <= 2^-25 below it.
    Beyond 65504 (the largest half) the value saturates rather than becoming inf."""
    g = np.concatenate([gaussian(4, 1000) * s for s in (1e-6, 1e-3, 1.0, 1e3)])
    out = make("fp16", error_feedback=False).roundtrip("w", g)[0]
    assert np.all(np.abs(out - g) <= np.maximum(2.0**-11 * np.abs(g), 2.0**-25))
    big = make("fp16").roundtrip("w", np.array([1e6, -1e6, 1.0], np.float32))[0]
    np.testing.assert_array_equal(big, [65504.0, -65504.0, 1.0])


def test_int8_is_per_tensor_affine_with_error_at_most_half_a_step():
    """One scale S = (max(g,0) - min(g,0)) / 255 and one zero-point for the whole tensor,
    as compress.quantize_int8 does for a one-row matrix; |g - D(C(g))| <= S/2; zeros exact."""
    g = gaussian(5, 30, 20) * 0.01
    g[0, :5] = 0.0
    p = make("int8", error_feedback=False).compress("w", g)
    q, scale, zero = p.data
    assert (q.dtype, scale.shape, scale.dtype, zero.shape, zero.dtype) == (
        np.int8, (1,), np.float32, (1,), np.int8)
    ref_q, ref_s, ref_z = quantize_int8(g.reshape(1, -1), 0)
    np.testing.assert_array_equal(q, ref_q.reshape(-1))
    assert (scale[0], zero[0]) == (ref_s[0], ref_z[0])
    step = (max(g.max(), 0) - min(g.min(), 0)) / 255
    assert scale[0] == pytest.approx(step, rel=1e-6)
    out = decompress(p)
    np.testing.assert_array_equal(out, dequantize_int8(ref_q, ref_s, ref_z, 0).reshape(g.shape))
    assert np.abs(out - g).max() <= step / 2 * (1 + 1e-5)
    np.testing.assert_array_equal(out[0, :5], 0.0)


@pytest.mark.parametrize("n, ratio", [(1000, 0.01), (1000, 0.25), (37, 0.1), (5, 0.01)])
def test_topk_keeps_exactly_the_k_largest_magnitudes(n, ratio):
    """k = max(1, round(ratio n)); the kept values are g's own, every dropped |g| <= every kept."""
    g = gaussian(6, n)
    k = max(1, int(math.floor(ratio * n + 0.5)))
    p = make("topk", ratio, error_feedback=False).compress("w", g)
    values, idx = p.data
    assert (values.dtype, idx.dtype, len(idx)) == (np.float32, np.int32, k)
    assert np.all(np.diff(idx) > 0)                            # sorted, no repeats
    np.testing.assert_array_equal(values, g[idx])
    np.testing.assert_array_equal(np.sort(idx), np.sort(np.argsort(-np.abs(g))[:k]))
    out = decompress(p)
    assert np.count_nonzero(out) == k
    dropped = np.delete(np.abs(g), idx)
    assert dropped.size == 0 or dropped.max() <= np.abs(values).min()


def test_sign_sends_one_bit_each_and_decodes_to_plus_minus_mean_abs():
    """scale = mean |g| (Karimireddy et al. 2019), so sum |decoded| = sum |g|; g >= 0 -> +scale."""
    g = gaussian(7, 13, 7)
    g[0, 0] = 0.0
    p = make("sign", error_feedback=False).compress("w", g)
    bits, scale = p.data
    assert bits.dtype == np.uint8 and bits.size == math.ceil(g.size / 8)
    assert scale[0] == pytest.approx(np.abs(g).mean(), rel=1e-6)
    out = decompress(p)
    np.testing.assert_array_equal(np.abs(out), scale[0])
    np.testing.assert_array_equal(out > 0, g >= 0)
    assert np.abs(out).sum() == pytest.approx(np.abs(g).sum(), rel=1e-5)


# -- error feedback ------------------------------------------------------------------
def stream_of_gradients(rounds: int, d: int = 500) -> np.ndarray:
    """A fixed direction plus unit noise each round, like minibatch gradients near a plateau."""
    rng = np.random.default_rng(11)
    mu = rng.standard_normal(d)
    return (mu + rng.standard_normal((rounds, d))).astype(np.float32)


def track(kind: str, feedback: bool, grads: np.ndarray, ratio: float = 0.02):
    """Send every round; return the compressor and ||sum true - sum sent|| after each round."""
    c = make(kind, ratio, feedback)
    gap = np.zeros(grads.shape[1])
    gaps = []
    for g in grads:
        gap += g.astype(np.float64) - c.roundtrip("w", g)[0]
        gaps.append(np.linalg.norm(gap))
    if feedback:     # the identity behind error feedback: what is still owed is the residual
        np.testing.assert_allclose(gap, c.residuals["w"], rtol=0, atol=1e-3)
    return c, np.array(gaps), np.linalg.norm(grads.astype(np.float64).sum(axis=0))


@pytest.mark.parametrize("kind", LOSSY)
def test_with_error_feedback_the_sum_sent_trails_the_sum_true_by_the_residual(kind):
    """3000 rounds of d=500. The gap stops growing (its max over rounds 2000-3000 is within 10%
    of its max over 1000-2000; measured: sign 794 vs 789, topk 478 vs 476, int8 0.29, fp16
    0.008) while the true sum's norm grows like t: at the end the gap is under 2% of it."""
    c, gaps, total = track(kind, True, stream_of_gradients(3000))
    assert gaps[2000:].max() <= 1.1 * gaps[1000:2000].max()
    assert gaps[-1] < 0.02 * total
    assert c.state_bytes() == 500 * 4


def test_topk_residual_obeys_the_contraction_bound():
    """||x - top_k(x)||^2 <= (1 - k/d) ||x||^2, so with a = sqrt(1 - k/d) the residual obeys
    ||e_t+1|| <= a (||e_t|| + ||g_t||) <= a / (1 - a) max ||g|| (Stich et al. 2018, sec. 3)."""
    grads = stream_of_gradients(1000)
    _, gaps, _ = track("topk", True, grads)
    a = math.sqrt(1 - 10 / 500)
    assert gaps.max() <= a / (1 - a) * np.linalg.norm(grads, axis=1).max()


@pytest.mark.parametrize("kind", ["topk", "sign"])
def test_without_error_feedback_topk_and_sign_lose_gradient_mass_for_good(kind):
    """No residual: the gap grows like t (doubles from round 1000 to 2000) and stays a large
    fraction of the true sum (measured: topk 2% 0.86, sign 0.40; with EF 0.007 and 0.012)."""
    c, gaps, total = track(kind, False, stream_of_gradients(2000))
    assert gaps[-1] > 1.8 * gaps[999]
    assert gaps[-1] > 0.3 * total
    assert c.residuals == {}


def test_residuals_are_kept_per_name_and_one_name_keeps_one_shape():
    c = make("topk", 0.1)
    c.compress("a", gaussian(1, 20))
    c.compress("b", gaussian(2, 4, 5))
    assert sorted(c.residuals) == ["a", "b"] and c.state_bytes() == 2 * 20 * 4
    with pytest.raises(SimdlError, match="one name, one shape"):
        c.compress("a", gaussian(3, 21))


# -- errors --------------------------------------------------------------------------
@pytest.mark.parametrize("kind, ratio, match", [
    ("zip", 0.01, "gradcomp.kind: 'zip' is not valid; choose one of: none, fp16, int8, topk, sign"),
    ("topk", 0.0, r"gradcomp.ratio: 0.0 is not valid; a fraction in \(0, 1\)"),
    ("topk", 1.0, "gradcomp.ratio"),
    ("sign", -0.5, "gradcomp.ratio"),
    ("topk", float("nan"), "gradcomp.ratio"),
])
def test_unknown_kind_or_ratio_outside_0_1_is_refused_in_one_line(kind, ratio, match):
    for call in (lambda: make(kind, ratio), lambda: Compressor(kind, ratio),
                 lambda: wire_bytes(kind, 100, ratio)):
        with pytest.raises(SimdlError, match=match):
            call()


def test_wire_bytes_refuses_a_negative_size():
    with pytest.raises(SimdlError, match="gradcomp.size"):
        wire_bytes("none", -1)


def test_packet_is_frozen():
    p = make("none").compress("w", gaussian(1, 3))
    assert isinstance(p, Packet)
    with pytest.raises(AttributeError):
        p.nbytes = 0  # type: ignore[misc]


# -- training with compressed gradients ------------------------------------------------
def data_parallel_sgd(kind: str, feedback: bool, steps: int = 300, lr: float = 0.05,
                      ratio: float = 0.01, workers: int = 2) -> tuple[float, float]:
    """Two workers, each on its shard, send compressed gradients; all apply their mean.

    mlp 16-32-32-4 (1,732 parameters; top-k 1% sends 1 of 32 biases and 10 of 1,024
    weights), 800-sample gaussian mixture, batch 32 per worker, plain SGD. Returns the
    held-out (loss, accuracy).
    """
    train, test = gaussian_mixture(n=1000, dim=16, n_classes=4).split(0.8)
    chain = mlp(in_dim=16, hidden=32, n_classes=4)
    params, grads = chain.params(), chain.grads()
    sce, opt = SoftmaxCrossEntropy(), SGD(lr)
    compressors = [make(kind, ratio, feedback) for _ in range(workers)]
    shards = [train.shard(i, workers) for i in range(workers)]
    rngs = [stream(0, f"worker{i}") for i in range(workers)]
    epochs = [iter(()) for _ in range(workers)]
    for _ in range(steps):
        mean = {k: np.zeros_like(v) for k, v in params.items()}
        for i in range(workers):
            batch = next(epochs[i], None)
            if batch is None:
                epochs[i] = shards[i].batches(32, rngs[i], drop_last=True)
                batch = next(epochs[i])
            chain.zero_grad()
            logits, caches = chain.forward(batch[0], train=True)
            loss, cache = sce.forward(logits, batch[1])
            chain.backward(sce.backward(cache), caches)
            for k, g in grads.items():
                mean[k] += compressors[i].roundtrip(k, g)[0] / workers
        opt.step(params, mean)
    return evaluate(chain, test)


def test_sgd_with_top1pct_or_sign_and_error_feedback_trains_like_uncompressed():
    """300 steps, lr 0.05. Measured held-out loss / accuracy: none 0.244 / 0.935,
    topk 1% + EF 0.240 / 0.925, sign + EF 0.244 / 0.93; without EF: topk 1% 0.563 / 0.795,
    sign 0.313 / 0.905 (int8 and fp16 + EF: 0.244 / 0.935)."""
    none_loss, _ = data_parallel_sgd("none", True)
    for kind in ("topk", "sign"):
        loss, acc = data_parallel_sgd(kind, True)
        assert loss < 0.3 and acc >= 0.9, kind
        assert abs(loss - none_loss) < 0.05, kind
    loss, acc = data_parallel_sgd("topk", False)
    assert loss > 0.4 and acc < 0.88
