"""Pruning and sparsity as hardware does them: 2:4 numerics, the bytes each format stores,
the declared per-unit speed-ups and the kernel times they give, and their errors."""
from __future__ import annotations

import copy
import math
import typing

import numpy as np
import pytest

from simdl import api
from simdl.errors import ScenarioError, SimdlError
from simdl.hw import catalogue
from simdl.hw.devices import DeviceSpec, UnitSpec, load_catalogue, make_device, sparse_speedup
from simdl.nn import compress
from simdl.nn.compress import (Compressed, _leaves, deploy, prune, prune_2_4,
                               stored_bytes)
from simdl.nn.models import lenet, mlp, tiny_transformer
from simdl.plan.plan import stored_fraction
from simdl.scenario import DeployEntry, parse


def pairs(ref, dep):
    """(original layer, deployed layer) for every compressible layer, in order."""
    for a, b in zip(ref.blocks, dep.blocks):
        yield from zip(_leaves(a.layer), _leaves(b.layer))


def groups_of_four(w, axis):
    """w's weights as rows of 4 consecutive ones along `axis` (the input axis)."""
    return np.moveaxis(w, axis, -1).reshape(-1, 4)


# -- 2:4 numerics ------------------------------------------------------------------
def test_2_4_keeps_the_two_largest_magnitudes_of_each_group_of_four_inputs():
    """Linear W is (n_in, n_out): groups run down a column. Column 0: [0.125, -0.875,
    0.375, 0.25] keeps -0.875 and 0.375; [5, -6, 7, 0] keeps -6 and 7. Column 1 ties:
    [1, -1, 1, -1] keeps the first two; [0, 0, 0, 2] keeps the first 0 and 2."""
    w = np.array([[0.125, 1], [-0.875, -1], [0.375, 1], [0.25, -1],
                  [5, 0], [-6, 0], [7, 0], [0, 2]], np.float32)
    assert prune_2_4(w, axis=0).tolist() == [[0, 1], [-0.875, -1], [0.375, 0], [0, 0],
                                            [0, 0], [-6, 0], [7, 0], [0, 2]]
    assert prune_2_4(w, axis=0).dtype == np.float32
    # A conv W (C_out, C_in, k, k): groups run over the input channels at each tap.
    conv = np.arange(1, 17, dtype=np.float32).reshape(1, 4, 2, 2) * [1, -1]
    kept = prune_2_4(conv, axis=1)
    assert kept[0, :, 0, 0].tolist() == [0, 0, 9, 13] and kept[0, :, 1, 1].tolist() == [0, 0, -12, -16]


@pytest.mark.parametrize("make, blocks", [
    (lambda: mlp(in_dim=32, hidden=64, depth=2, n_classes=4), 3),
    (lambda: lenet(in_ch=4, size=16, n_classes=4), 4),     # conv1 has 4 inputs; conv2 has 6
    (lambda: tiny_transformer(vocab=16, d_model=32, n_heads=2, n_layers=1, seq_len=8), 2),
], ids=["mlp", "lenet", "transformer"])
def test_a_2_4_deployment_zeroes_two_of_every_four_and_computes_with_the_masked_weights(
        make, blocks):
    """Every pruned weight: exactly 2 zeros per group of 4 along its input axis, the kept
    two are the group's two largest |w| and unchanged. A layer whose input axis is not
    a multiple of 4 (lenet's conv2, 6 channels) is left dense and unpruned. The deployed
    chain's outputs are bitwise those of the fp32 chain with the masked weights."""
    chain = make()
    dep = prune(chain, 0.5, "2:4")
    twin = copy.deepcopy(chain)
    pruned = 0
    for (ref, layer), (tw, _) in zip(pairs(chain, dep), pairs(twin, dep)):
        axis = 1 - layer.axis
        for name in layer.weights:
            w, p = ref.params[name], layer.weight(name)
            tw.params[name] = p
            if layer.sparsity is None:
                assert w.shape[axis] % 4 and np.array_equal(p, w) and layer.layout(name) == "dense"
                continue
            g, gw = groups_of_four(p, axis), groups_of_four(w, axis)
            assert ((g == 0).sum(axis=1) == 2).all()
            kept = g != 0
            assert np.array_equal(g[kept], gw[kept])
            smallest_kept = np.where(kept, np.abs(gw), np.inf).min(axis=1)
            largest_gone = np.where(kept, -np.inf, np.abs(gw)).max(axis=1)
            assert (smallest_kept >= largest_gone).all() and layer.layout(name) == "2:4"
            pruned += 1
    assert pruned >= blocks
    x = (np.random.default_rng(1).integers(0, 16, (3, 8)) if chain.in_dtype.kind == "i"
         else np.random.default_rng(1).standard_normal((3, *chain.in_shape)).astype(np.float32))
    assert np.array_equal(dep.forward(x)[0], twin.forward(x)[0])
    assert not np.array_equal(dep.forward(x)[0], chain.forward(x)[0])


@pytest.mark.parametrize("dtype", ["fp16", "int8"])
def test_2_4_survives_quantization_with_its_zeros_exact(dtype):
    """Pruned, then stored as fp16 / int8: the pruned weights come back exactly 0 (q = Z),
    the kept ones as the dtype rounds them, and the forward runs on exactly those."""
    chain = mlp(in_dim=32, hidden=64, depth=2, n_classes=4)
    masked, dep = prune(chain, 0.5, "2:4"), deploy(chain, dtype, prune=0.5, sparsity="2:4")
    twin = copy.deepcopy(chain)
    for (m, layer), (tw, _) in zip(pairs(masked, dep), pairs(twin, dep)):
        w, p = m.weight("W"), layer.weight("W")
        assert np.array_equal(p == 0, w == 0) and layer.layout("W") == "2:4"
        assert np.abs(p - w).max() > 0
        tw.params["W"] = p
    x = np.ones((2, 32), np.float32)
    assert np.array_equal(dep.forward(x)[0], twin.forward(x)[0])
    assert dep.density == [0.5, 0.5, 0.5]


# -- bytes -------------------------------------------------------------------------
def test_stored_bytes_by_hand():
    """A 16 x 8 matrix (128 weights, 16 rows). 2:4 keeps 64 values + 2 bits each (16 B):
    fp32 256 + 16, fp16 128 + 16, int8 64 + 16. Unstructured CSR: kept x (width + 4) +
    17 row pointers x 4 = 68, or dense when smaller: fp16 with 10 kept 60 + 68 = 128 <
    256; with 40 kept 240 + 68 > 256 -> 256. Without rows (the per-weight rate) there
    are no pointers and no rounding: 0.5 kept fp16 2:4 = 0.5 x 2 + 0.5 x 2 / 8."""
    assert [stored_bytes(d, "2:4", 128, 64, 16) for d in ("fp32", "fp16", "int8")] == [272, 144, 80]
    assert stored_bytes("fp16", "unstructured", 128, 10, 16) == 128
    assert stored_bytes("fp16", "unstructured", 128, 40, 16) == 256
    assert stored_bytes("fp16", "2:4", 1.0, 0.5) == 1.125
    assert stored_bytes("fp16", "2:4", 8, 4, 2) == 9                  # 1 bit-byte rounded up
    assert stored_bytes("int8", "unstructured", 1.0, 0.1) == pytest.approx(0.5)


def test_stored_fraction_of_each_format_by_hand():
    """Share of the fp32 bytes: 2:4 (width / 2 + 1/8) / 4 -- fp32 0.53125, fp16 0.28125,
    int8 0.15625 (int8 2:4 is 5/8 of plain int8). Unstructured: min(width, kept x (width
    + 4)) / 4 -- 50% of fp16 would be 3 B a weight in CSR, so it stays dense at 0.5; 80%
    of fp16 is 0.2 x 6 / 4 = 0.3."""
    assert [stored_fraction(d, 0.5, "2:4") for d in ("fp32", "fp16", "int8")] == [
        0.53125, 0.28125, 0.15625]
    assert stored_fraction("fp16", 0.5) == stored_fraction("fp16", 0.0) == 0.5
    assert stored_fraction("fp16", 0.8) == pytest.approx(0.3, rel=1e-12)
    assert stored_fraction("fp32", 0.0) == 1.0 and stored_fraction("int8", 0.0) == 0.25


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "int8"])
def test_deployed_2_4_bytes_are_the_storage_rule_and_the_plan_estimate(dtype):
    """mlp 32-64-64-4: W of 2048, 4096 and 256 weights (6400), biases 132 x 4 B = 528.
    2:4 stores the kept 3200 at the dtype's width plus 3200 x 2 bits = 800 B: fp32 13600,
    fp16 7200, int8 4000 (+ 132 channels x 5 B of scale and zero-point = 660) -- and the
    plan's per-weight fraction of the fp32 weights (25600 B) is the same number."""
    chain = mlp(in_dim=32, hidden=64, depth=2, n_classes=4)
    dep = deploy(chain, dtype, prune=0.5, sparsity="2:4")
    weights = {"fp32": 13600, "fp16": 7200, "int8": 4000}[dtype]
    extras = 528 + (660 if dtype == "int8" else 0)
    assert dep.param_bytes() == weights + extras
    assert stored_fraction(dtype, 0.5, "2:4") * 6400 * 4 == weights
    for layer in (layer for b in dep.blocks for layer in _leaves(b.layer)):
        w = layer.shapes["W"]
        arrays = layer.params["W"].nbytes + layer.buffers["W_meta"].nbytes
        assert arrays == stored_bytes(dtype, "2:4", math.prod(w), math.prod(w) // 2, w[1])


# -- what a sparse unit speeds up --------------------------------------------------
def test_sparse_flops_are_the_weight_products_of_the_pruned_layers_only():
    """Batch 8. mlp 32-64-4: fc1 GEMM 2 x 8 x 32 x 64 = 32768 (its ReLU's 512 not);
    head 2 x 8 x 64 x 4 = 4096. lenet(in_ch=4): conv1 (4 inputs) 2 x 8 x 6 x 4 x 25 x
    16 x 16 = 2457600; conv2 (6 inputs) was left dense: 0. Attention: the four
    projections 8 x 32 tokens x 32 x 32 = 262144 of its 295936 (the scores stay)."""
    net = prune(mlp(in_dim=32, hidden=64, depth=1, n_classes=4), 0.5, "2:4")
    assert sparse_flops(net, 8) == [32768, 4096]
    dense = mlp(in_dim=32, hidden=64, depth=1, n_classes=4)
    assert sparse_flops(dense, 8) == [0, 0] == sparse_flops(deploy(dense, dtype="fp16"), 8)
    assert [c.fwd_flops for c in net.costs(8)] == [32768 + 512, 4096]  # costs are the dense ones
    conv = prune(lenet(in_ch=4, size=16, n_classes=4), 0.5, "2:4")
    assert sparse_flops(conv, 8)[:2] == [2457600, 0]
    attention = prune(tiny_transformer(vocab=16, d_model=32, n_heads=2, n_layers=1, seq_len=4),
                      0.5, "2:4")
    block = attention.blocks[1].layer
    assert any(isinstance(layer, Compressed) for layer in _leaves(block))
    attn = next(layer for layer in _leaves(block) if len(layer.weights) == 4)
    assert attn.weight_flops((8, 4, 32)) == 8 * 32 * 32 * 32
    assert 0 < sparse_flops(attention, 8)[1] < attention.costs(8)[1].fwd_flops


def sparse_flops(chain, batch):
    """Per block, the forward FLOPs the cost marks as products with pruned weights."""
    return [c.sparse_flops for c in chain.costs(batch)]


def toy(declared=True):
    """A cpu (fp32, fp16) and a gpu (fp32, fp16) that runs 2:4 at 2x in fp16 only."""
    cpu = UnitSpec(kind="cpu", peak={"fp32": 1e9, "fp16": 2e9}, efficiency=1.0, overhead=0.0,
                   active_power=1.0)
    gpu = UnitSpec(kind="gpu", peak={"fp32": 4e9, "fp16": 8e9}, efficiency=1.0, overhead=0.0,
                   active_power=1.0, sparsity={"2:4": {"fp16": 2.0}} if declared else {})
    return DeviceSpec(type="toy", label="toy", units={"cpu": cpu, "gpu": gpu}, memory=1e9,
                      mem_bw=1e9, idle_power=0.0, radio_tx_power=0.0, radio_rx_power=0.0,
                      battery=None, background=0.0, interfaces={})


def test_the_speedup_is_the_units_declared_factor_for_that_pattern_and_dtype_only():
    spec = toy()
    assert sparse_speedup(spec, None, "fp16", "2:4") == 2.0          # best unit: the gpu
    assert sparse_speedup(spec, "gpu", "fp16", "2:4") == 2.0
    assert sparse_speedup(spec, "cpu", "fp16", "2:4") == 1.0          # the unit named runs it
    assert sparse_speedup(spec, "gpu", "fp32", "2:4") == 1.0          # not its fp32 engine
    assert sparse_speedup(spec, "gpu", "fp16", "unstructured") == 1.0
    assert sparse_speedup(spec, "gpu", "fp16", None) == 1.0           # not pruned
    assert sparse_speedup(toy(declared=False), None, "fp16", "2:4") == 1.0


# A PC whose units are compute-bound and have no launch cost or background load, so
# a kernel takes exactly FLOPs / (peak x efficiency 0.5).
PC = {"name": "pc", "type": "desktop_pc", "background": 0, "mem_bw": "1000TB/s",
      "units.gpu.overhead": 0, "units.cpu.overhead": 0, "units.cpu.mem_bw": "1000TB/s"}
GPU_FP16, GPU_FP32, CPU_INT8 = 51e12 * 0.5, 12.7e12 * 0.5, 2.05e12 * 0.5


def kernels(deploy_entry, pc=PC, **strategy):
    """Per block (fc1, head) of one batch of 8 through mlp 64-128-32 on the pc:
    (FLOPs the kernel ran, its duration)."""
    sc = parse({
        "name": "t", "devices": [pc], "network": {"kind": "home"},
        "model": {"name": "mlp", "in_dim": 64, "hidden": 128, "depth": 1, "n_classes": 32},
        "workload": {"kind": "inference", "requests": 1, "batch": 8, "source": "pc"},
        "strategies": [{"name": "single", "device": "pc", "deploy": {"pc": deploy_entry},
                        **strategy}]})
    e = api.run(sc, timing_only=True)["single"].events
    e = e[e.kind == "compute"]
    return [(f, t1 - t0) for f, t0, t1 in zip(e.flops, e.t_start, e.t_end)]


# fc1: GEMM 2 x 8 x 64 x 128 = 131072 + ReLU 8 x 128 = 1024; head: 2 x 8 x 128 x 32 = 65536.
DENSE = [131072 + 1024, 65536]


def assert_kernels(got, flops, rate=GPU_FP16):
    """The kernels ran `flops` and took flops / rate (to the clock's float rounding)."""
    assert [f for f, _ in got] == flops
    assert [t for _, t in got] == pytest.approx([f / rate for f in flops], rel=1e-9)


def test_a_2_4_stage_on_a_unit_declaring_2x_runs_half_the_weight_products():
    """fc1: 131072 / 2 + 1024 = 66560; head: 65536 / 2 = 32768 -- in FLOPs and in time."""
    assert_kernels(kernels({"dtype": "fp16", "sparsity": "2:4"}), [66560, 32768])


def test_the_declared_factor_is_used_not_a_fixed_two():
    """Declared x4: fc1 131072 / 4 + 1024 = 33792, head 65536 / 4 = 16384."""
    pc = PC | {"units.gpu.sparsity.2:4.fp16": 4}
    assert_kernels(kernels({"dtype": "fp16", "sparsity": "2:4"}, pc), [33792, 16384])


@pytest.mark.parametrize("entry, pc, rate, strategy", [
    ({"dtype": "fp16", "prune": 0.5}, PC, GPU_FP16, {}),                        # unstructured
    ({"dtype": "fp16", "prune": 0.9}, PC, GPU_FP16, {}),
    ({"dtype": "fp16", "sparsity": "2:4"}, PC | {"units.gpu.sparsity": None}, GPU_FP16, {}),
    ({"dtype": "fp32", "sparsity": "2:4"}, PC, GPU_FP32, {}),                   # CUDA cores
    ({"dtype": "int8", "sparsity": "2:4"}, PC, CPU_INT8, {"unit": "cpu"}),      # named unit
    ({"dtype": "fp16"}, PC, GPU_FP16, {}),
], ids=["unstructured-50", "unstructured-90", "gpu-without-2:4", "fp32-2:4", "cpu-int8-2:4",
        "dense"])
def test_everything_else_runs_at_the_dense_time(entry, pc, rate, strategy):
    """No declared pattern for the stage's pattern, dtype and unit: dense FLOPs and time."""
    assert_kernels(kernels(entry, pc, **strategy), DENSE, rate)


def test_the_shipped_catalogue_declares_2_4_on_the_three_ampere_gpus_only():
    declared = {(t, n): dict(u.sparsity) for t, spec in load_catalogue().items()
                for n, u in spec.units.items() if u.sparsity}
    ampere = {"2:4": {"fp16": 2.0, "int8": 2.0}}
    assert declared == {("desktop_pc", "gpu"): ampere, ("edge_box", "gpu"): ampere,
                        ("cloud_gpu", "gpu"): ampere}


# -- errors ------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    ({"units.gpu.sparsity": {"2:8": {"fp16": 2}}},
     r"^devices\.pc\.units\.gpu\.sparsity\.2:8: \{'fp16': 2\} is not valid; no such pattern; "
     r"choose one of: unstructured, 2:4 \(quote '2:4': bare, YAML reads it as the number 124\)$"),
    ({"units.cpu.sparsity.2:4.fp16": 2},
     r"^devices\.pc\.units\.cpu\.sparsity\.2:4\.fp16: 2 is not valid; a speed-up for a dtype "
     r"the unit runs: fp32, int8$"),
    ({"units.gpu.sparsity.2:4.int8": 0.5},
     r"^devices\.pc\.units\.gpu\.sparsity\.2:4\.int8: 0\.5 is not valid; a speed-up factor of "
     r"1 or more, e\.g\. 2 \(twice as fast\)$"),
    ({"units.gpu.sparsity.2:4.int8": "fast"}, r"\.int8: 'fast' is not valid; a speed-up factor"),
    ({"units.gpu.sparsity.2:4.int8": float("inf")}, r"\.int8: inf is not valid; a speed-up"),
    ({"units.gpu.sparsity": ["2:4"]},
     r"^devices\.pc\.units\.gpu\.sparsity: \['2:4'\] is not valid; write a mapping of "
     r"pattern: \{dtype: speed-up\}"),
    ({"units.gpu.sparsity.2:4": 2},
     r"^devices\.pc\.units\.gpu\.sparsity\.2:4: 2 is not valid; write a mapping of dtype: "
     r"speed-up, e\.g\. \{fp16: 2\}$"),
    ({"sparse": True}, r"^devices\.pc\.sparse: True is not valid; no such field; a device has: "),
])
def test_bad_sparsity_declarations_name_the_path_the_value_and_what_is_allowed(overrides, message):
    with pytest.raises(ScenarioError, match=message):
        make_device("desktop_pc", overrides, where="devices.pc")


def test_a_bare_2_4_in_the_catalogue_says_to_quote_it():
    raw = copy.deepcopy(catalogue.read()["desktop_pc"])
    raw["units"]["gpu"]["sparsity"] = {124: {"fp16": 2}}
    with pytest.raises(ScenarioError, match=r"^catalogue\.pc\.units\.gpu\.sparsity\.124: .*"
                                            r"quote '2:4'"):
        catalogue.parse_device(raw, "catalogue.pc")


def test_a_null_sparsity_override_removes_the_declaration():
    spec = make_device("desktop_pc", {"units.gpu.sparsity.2:4.int8": None})
    assert spec.units["gpu"].sparsity == {"2:4": {"fp16": 2.0}}
    assert make_device("desktop_pc", {"units.gpu.sparsity": None}).units["gpu"].sparsity == {}


def deploy_scenario(entry):
    return {"name": "t", "devices": [{"name": "pc", "type": "desktop_pc"}],
            "network": {"kind": "home"}, "model": {"name": "mlp"},
            "workload": {"kind": "inference", "requests": 1, "source": "pc"},
            "strategies": [{"name": "single", "deploy": {"pc": entry}}]}


def test_a_2_4_deployment_fills_in_half_and_refuses_another_fraction():
    assert DeployEntry.model_validate({"sparsity": "2:4"}).prune == 0.5
    assert DeployEntry.model_validate({"sparsity": "2:4", "prune": 0.5}).prune == 0.5
    assert DeployEntry.model_validate({"prune": 0.3}).sparsity == "unstructured"
    with pytest.raises(ScenarioError, match=r"^strategies\[0\]\.deploy\.pc\.prune: 0\.3 is not "
                                            r"valid; 2:4 keeps 2 of every 4 weights, so prune "
                                            r"is 0\.5 \(or left out\)$"):
        parse(deploy_scenario({"sparsity": "2:4", "prune": 0.3}))
    with pytest.raises(ScenarioError, match=r"^strategies\[0\]\.deploy\.pc\.sparsity: 124 is "
                                            r"not valid; write 'unstructured' or '2:4' \(quoted"):
        parse(deploy_scenario({"sparsity": 124}))
    with pytest.raises(ScenarioError, match=r"^strategies\[0\]\.deploy\.pc\.sparsity: 'block' "
                                            r"is not valid; input should be 'unstructured' or"):
        parse(deploy_scenario({"sparsity": "block"}))


def test_pruning_functions_refuse_a_bad_pattern_or_fraction():
    chain = mlp(in_dim=8, hidden=8, depth=1, n_classes=4)
    with pytest.raises(SimdlError, match=r"^prune\.fraction: 0\.3 is not valid; 2:4 keeps 2 of "
                                         r"every 4 weights, so the fraction is 0\.5$"):
        prune(chain, 0.3, "2:4")
    with pytest.raises(SimdlError, match=r"^prune\.fraction: 0\.0 is not valid; 2:4"):
        deploy(chain, "fp16", sparsity="2:4")
    with pytest.raises(SimdlError, match=r"^prune\.sparsity: 'block' is not valid; choose one "
                                         r"of: unstructured, 2:4$"):
        prune(chain, 0.5, "block")


def test_the_pattern_lists_agree():
    """Three layers name the patterns; they must not drift apart."""
    scenario_patterns = typing.get_args(DeployEntry.model_fields["sparsity"].annotation)
    assert compress.PATTERNS == catalogue.PATTERNS == scenario_patterns == ("unstructured", "2:4")
