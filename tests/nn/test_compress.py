"""Deployment stores weights compressed, computes from them, counts their bytes, and its
accuracy change on a trained model is measured (printed with -s), not assumed."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from simdl.errors import SimdlError
from simdl.nn.compress import (ACT_FLOPS, Compressed, _leaves, accuracy_change, deploy,
                               dequantize_int8, fake_quant, prune, quantize, quantize_int8)
from simdl.nn.conv import Conv2d
from simdl.nn.data import gaussian_mixture
from simdl.nn.dense import Linear
from simdl.nn.fit import fit
from simdl.nn.models import lenet, mlp, tiny_transformer


@pytest.fixture(scope="module")
def trained():
    """mlp 32-128-128-4 after 200 Adam steps on a 4-class gaussian mixture (held-out acc ~0.9)."""
    train, test = gaussian_mixture(n=2000, dim=32, n_classes=4).split(0.8)
    chain = mlp(in_dim=32, hidden=128, depth=2, n_classes=4)
    fit(chain, train, steps=200, lr=3e-3)
    return chain, test


def snapshot(chain):
    return {k: v.copy() for k, v in {**chain.params(), **chain.buffers()}.items()}


def pairs(ref, dep):
    """(original layer, deployed layer) for every compressible layer, in order."""
    for a, b in zip(ref.blocks, dep.blocks):
        yield from zip(_leaves(a.layer), _leaves(b.layer))


# -- storage and bytes -----------------------------------------------------------
def test_int8_and_fp16_weights_are_stored_narrow_and_counted_by_hand():
    """mlp 32-256-256-4. fp32: (32*256 + 256*256 + 256*4 + 256 + 256 + 4) * 4 = 301072 B.
    int8: 1 B per weight + per output channel a float32 scale and an int8 zero-point (5 B)
    + float32 biases: fc1 8192 + 256*9 = 10496; fc2 65536 + 2304 = 67840; head 1024 + 4*9
    = 1060; total 79396 (0.264 of fp32: the per-channel extras keep it above 1/4).
    fp16: 2 B per weight, biases 4 B: 74752*2 + 516*4 = 151568 (0.503)."""
    chain = mlp(in_dim=32, hidden=256, depth=2, n_classes=4)
    assert chain.param_bytes() == 301072
    q8, q16 = quantize(chain, "int8"), quantize(chain, "fp16")
    assert q8.param_bytes() == 79396 and q16.param_bytes() == 151568
    assert (q8.dtype, q16.dtype) == ("int8", "fp16")
    p8, b8 = q8.params(), q8.buffers()
    assert p8["fc2.0.W"].dtype == np.int8 and p8["fc2.0.W"].shape == (256, 256)
    assert p8["fc2.0.b"].dtype == np.float32
    assert b8["fc2.0.W_scale"].dtype == np.float32 and b8["fc2.0.W_scale"].shape == (256,)
    assert b8["fc2.0.W_zero"].dtype == np.int8 and b8["fc2.0.W_zero"].shape == (256,)
    assert q16.params()["fc2.0.W"].dtype == np.float16
    assert q8.n_params() == chain.n_params()          # same weights, narrower


@pytest.mark.parametrize("dtype", ["fp16", "int8"])
def test_costs_read_weights_at_the_stored_width(dtype):
    """Per block: param_bytes is the stored bytes; forward reads them instead of the fp32
    weights (fwd_bytes - param_bytes is unchanged); FLOPs are the dense kernel's."""
    chain = tiny_transformer(vocab=16, d_model=32, n_heads=2, n_layers=1, seq_len=8)
    dep = quantize(chain, dtype)
    for b, c32, c in zip(dep.blocks, chain.costs(4), dep.costs(4)):
        assert c.param_bytes == b.layer.param_bytes()
        assert c.fwd_bytes - c.param_bytes == c32.fwd_bytes - c32.param_bytes
        assert (c.fwd_flops, c.out_shape) == (c32.fwd_flops, c32.out_shape)
    assert dep.cost(4).param_bytes == dep.param_bytes() < chain.param_bytes()


def test_int8_activations_add_quantize_flops_per_input_value():
    """mlp 32-128-128-4, batch 8: each Linear quantizes its input, 4 FLOPs per value:
    4 * 8 * (32 + 128 + 128) = 9216 more FLOPs than the weight-only deployment."""
    chain = mlp(in_dim=32, hidden=128, depth=2, n_classes=4)
    w8 = quantize(chain, "int8").cost(8).fwd_flops
    a8 = quantize(chain, "int8", activations=True).cost(8).fwd_flops
    assert ACT_FLOPS["int8"] == 4 and a8 - w8 == 9216


# -- numerics --------------------------------------------------------------------
def test_affine_int8_by_hand():
    """Channel [-1, 0, 0.5, 2]: S = 3/255, Z = round(-128 + 1/S) = round(-43) = -43;
    q = round(r/S) + Z = [-85, 0, 42.5 -> 42 (half to even), 170] - 43 = [-128, -43, -1, 127].
    Zero is exact: S (Z - Z) = 0."""
    w = np.array([[-1.0], [0.0], [0.5], [2.0]], np.float32)      # Linear layout: one column
    q, s, z = quantize_int8(w, axis=1)
    assert q.dtype == np.int8 and q[:, 0].tolist() == [-128, -43, -1, 127]
    assert z.tolist() == [-43] and s[0] == np.float32(3 / 255)
    back = dequantize_int8(q, s, z, axis=1)[:, 0]
    assert back[1] == 0.0 and np.all(np.abs(back - w[:, 0]) <= s[0] / 2)


@pytest.mark.parametrize("make", [
    lambda: mlp(in_dim=32, hidden=128, depth=2, n_classes=4),
    lambda: lenet(in_ch=1, size=16, n_classes=4),
    lambda: tiny_transformer(vocab=16, d_model=32, n_heads=2, n_layers=1, seq_len=8),
], ids=["mlp", "lenet_conv", "transformer_attention"])
def test_int8_error_is_at_most_half_a_step_per_channel(make):
    """|W - S (q - Z)| <= S/2 for every weight, with S its output channel's scale
    (plus float32 rounding of the product: 1e-6 relative to the channel's range)."""
    chain = make()
    dep = quantize(chain, "int8")
    checked = 0
    for ref, layer in pairs(chain, dep):
        for name in layer.weights:
            w, back = ref.params[name], layer.weight(name)
            s = layer.buffers[name + "_scale"]
            shape = [1] * w.ndim
            shape[layer.axis] = -1
            bound = s.reshape(shape) * (0.5 + 1e-6 * 255)
            assert np.all(np.abs(w - back) <= bound)
            checked += w.size
    assert checked == sum(int(np.prod(layer.shapes[k])) for _, layer in pairs(chain, dep)
                          for k in layer.weights)


def test_deployed_forward_is_float32_compute_on_the_stored_weights(trained):
    """fp32: bitwise the original. fp16 / int8: bitwise the original kernels run on
    W.astype(float16) widened / on S (q - Z) -- the numerics are exactly that."""
    chain, test = trained
    x = test.x[:50]
    ref = chain.forward(x)[0]
    assert np.array_equal(quantize(chain, "fp32").forward(x)[0], ref)
    for dtype in ("fp16", "int8"):
        dep = quantize(chain, dtype)
        twin = copy.deepcopy(chain)
        for (tw, layer) in pairs(twin, dep):
            tw.params["W"] = layer.weight("W")
        if dtype == "fp16":
            assert all(np.array_equal(t.params["W"], r.params["W"].astype(np.float16).astype(
                np.float32)) for (t, _), (r, _) in zip(pairs(twin, dep), pairs(chain, dep)))
        assert np.array_equal(dep.forward(x)[0], twin.forward(x)[0])
        assert not np.array_equal(dep.forward(x)[0], ref)


def test_trained_mlp_keeps_its_accuracy_under_fp16_and_int8(trained):
    """Stated bounds: fp16 drops at most 0.5 point, int8 (with or without int8 activations)
    at most 2 points of held-out accuracy. Logits really change (int8 more than fp16)."""
    chain, test = trained
    out = {}
    for name, kw in {"fp16": dict(dtype="fp16"), "int8": dict(dtype="int8"),
                     "int8+act": dict(dtype="int8", activations=True)}.items():
        r = out[name] = accuracy_change(chain, deploy(chain, **kw), test)
        print(f"\n{name}: accuracy {r['reference_accuracy']:.4f} -> {r['deployed_accuracy']:.4f} "
              f"({r['accuracy_change']:+.4f}), mean |dlogit| {r['mean_abs_logit_diff']:.4f}, "
              f"agreement {r['agreement']:.4f}")
    assert out["fp16"]["reference_accuracy"] > 0.85
    assert out["fp16"]["accuracy_change"] >= -0.005
    assert out["int8"]["accuracy_change"] >= -0.02
    assert out["int8+act"]["accuracy_change"] >= -0.02
    assert 0 < out["fp16"]["mean_abs_logit_diff"] < out["int8"]["mean_abs_logit_diff"]
    assert out["int8"]["mean_abs_logit_diff"] < out["int8+act"]["mean_abs_logit_diff"]


def test_int8_activation_ranges_are_per_row_so_batches_do_not_matter():
    """A row's quantized values are the same alone or among other rows (bitwise)."""
    x = np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32) * [1, 2, 3, 4, 5]
    whole = fake_quant(x, "int8", groups=6)
    assert np.array_equal(whole[2:3], fake_quant(x[2:3], "int8", groups=1))
    assert not np.array_equal(whole, x)
    assert np.all(np.abs(whole - x) <= (np.ptp(np.c_[x, np.zeros(6)], axis=1) / 255 / 2
                                        * (1 + 1e-5))[:, None])


# -- pruning ---------------------------------------------------------------------
SIZES = {"fc1": (32, 128), "fc2": (128, 128), "head": (128, 4)}   # (n_in, n_out) of each W


@pytest.mark.parametrize("fraction", [0.5, 0.95])
def test_pruning_zeroes_exactly_the_smallest_fraction_of_each_tensor(trained, fraction):
    """Per tensor: round(fraction * size) zeros -- 0.5: 2048, 8192, 256; 0.95: 3891 (3891.2),
    15565 (15564.8), 486 (486.4) -- every kept |w| >= every removed |w|, kept values unchanged."""
    chain, _ = trained
    dep = prune(chain, fraction)
    assert dep.dtype == "fp32"
    for (ref, layer), (name, (n_in, n_out)) in zip(pairs(chain, dep), SIZES.items()):
        w, p = ref.params["W"], layer.weight("W")
        k = int(np.floor(fraction * w.size + 0.5))
        assert np.sum(p == 0) == k
        kept = p != 0
        assert np.array_equal(p[kept], w[kept])
        assert np.abs(w[~kept]).max() <= np.abs(w[kept]).min()
        assert dep.density[list(SIZES).index(name)] == (w.size - k) / w.size


def test_pruned_bytes_are_dense_or_csr_whichever_is_smaller(trained):
    """CSR per W, one row per output channel: nnz * (value + 4 B index) + (n_out + 1) * 4 B.
    50% fp32: 8 B per kept weight = dense 4 B per weight + the row pointers: dense stays,
    bytes unchanged. 95% fp32: nnz fc1 205, fc2 819, head 26 -> CSR; biases 4 B each:
    (1640 + 516 + 512) + (6552 + 516 + 512) + (208 + 20 + 16) = 10492.
    95% int8: 5 B per kept weight + row pointers + per-channel scale/zero (5 B) + biases:
    (1025 + 516 + 640 + 512) + (4095 + 516 + 640 + 512) + (130 + 20 + 20 + 16) = 8642."""
    chain, _ = trained
    assert prune(chain, 0.5).param_bytes() == chain.param_bytes()
    nnz = {"fc1": 205, "fc2": 819, "head": 26}
    csr32 = sum(nnz[n] * 8 + (o + 1) * 4 + o * 4 for n, (_, o) in SIZES.items())
    csr8 = sum(nnz[n] * 5 + (o + 1) * 4 + o * 5 + o * 4 for n, (_, o) in SIZES.items())
    p95 = prune(chain, 0.95)
    assert p95.param_bytes() == csr32 == 10492
    assert all(layer.layout("W") == "csr" for layer in _leaves(p95.blocks[1].layer))
    assert all(layer.layout("W") == "dense" for _, layer in pairs(chain, prune(chain, 0.5)))
    d8 = deploy(chain, "int8", prune=0.95)
    assert d8.param_bytes() == csr8 == 8642
    assert d8.params()["fc2.0.W"].dtype == np.int8 and d8.params()["fc2.0.W"].shape == (819,)
    # Stored sparse, computed dense: the same numbers as the dense zero-filled matrix.
    twin = copy.deepcopy(chain)
    for tw, layer in pairs(twin, d8):
        tw.params["W"] = layer.weight("W")
    x = np.ones((3, 32), np.float32)
    assert np.array_equal(d8.forward(x)[0], twin.forward(x)[0])


def test_pruning_the_trained_mlp_half_is_mild_95_percent_is_not(trained):
    """Stated bounds (measured, no fine-tuning): 50% per tensor costs at most 2 points of
    held-out accuracy; 95% costs at least 20 (measured: about 50)."""
    chain, test = trained
    half = accuracy_change(chain, prune(chain, 0.5), test)
    most = accuracy_change(chain, prune(chain, 0.95), test)
    both = accuracy_change(chain, deploy(chain, "int8", prune=0.5), test)
    for name, r in (("prune 50%", half), ("prune 95%", most), ("prune 50% + int8", both)):
        print(f"\n{name}: accuracy {r['reference_accuracy']:.4f} -> {r['deployed_accuracy']:.4f} "
              f"({r['accuracy_change']:+.4f}), mean |dlogit| {r['mean_abs_logit_diff']:.4f}, "
              f"agreement {r['agreement']:.4f}")
    assert half["accuracy_change"] >= -0.02
    assert both["accuracy_change"] >= -0.02
    assert most["accuracy_change"] <= -0.20


# -- the original, errors, stage slices -----------------------------------------
def test_deploy_leaves_the_original_untouched(trained):
    chain, test = trained
    before, logits = snapshot(chain), chain.forward(test.x)[0]
    dep = deploy(chain, "int8", prune=0.5, activations=True)
    dep.forward(test.x)
    after = snapshot(chain)
    assert before.keys() == after.keys()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert all(type(b.layer[0]) is Linear for b in chain.blocks)
    assert all(isinstance(b.layer[0], Compressed) for b in dep.blocks)
    assert np.array_equal(chain.forward(test.x)[0], logits)
    assert not hasattr(chain, "density")


def test_deployed_layers_are_inference_only_and_bad_input_names_the_field(trained):
    chain, test = trained
    dep = quantize(chain, "int8")
    y, caches = dep.forward(test.x[:4], train=True)
    with pytest.raises(SimdlError, match="inference-only"):
        dep.backward(np.ones_like(y), caches)
    with pytest.raises(SimdlError, match="deploy.dtype"):
        deploy(chain, "int4")
    with pytest.raises(SimdlError, match="prune.fraction"):
        prune(chain, 1.0)


def test_a_stage_slice_deploys_on_its_own():
    """A plan's stage deploys blocks [start, stop): conv layers too, one density per block."""
    chain = lenet(in_ch=1, size=16, n_classes=4)
    stage = deploy(chain[1:3], "int8", prune=0.5)
    assert len(stage.density) == 2 and all(abs(d - 0.5) < 0.01 for d in stage.density)
    assert isinstance(stage.blocks[0].layer[0], Compressed)
    assert isinstance(stage.blocks[0].layer[0].kernel, Conv2d)
    x = np.ones((2, *chain[1:3].in_shape), np.float32)
    assert stage.forward(x)[0].shape == chain[1:3].forward(x)[0].shape
    assert isinstance(chain.blocks[1].layer[0], Conv2d)
