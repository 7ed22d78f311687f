"""Distributed inference: every exact strategy computes the single-device outputs;
compression, tensor-parallel traffic and the privacy constraint are measured."""
from pathlib import Path

import numpy as np
import pytest

from simdl import api
from simdl.errors import PlanError
from simdl.nn import shard as tp
from simdl.scenario import parse

ROOT = Path(__file__).resolve().parents[1]


def scenario(model, strategies, devices=("phone", "laptop", "pc", "tablet"), batch=6,
             requests=3, **extra):
    types = {"phone": "phone_flagship", "laptop": "laptop", "pc": "desktop_pc",
             "tablet": "tablet", "edge": "edge_server"}
    return parse({
        "name": "t", "seed": 0,
        "devices": [{"name": d, "type": types[d]} for d in devices],
        "network": {"kind": "home"}, "model": model,
        "workload": {"kind": "inference", "requests": requests, "batch": batch,
                     "arrival": {"kind": "closed", "concurrency": 2}, "source": "phone"},
        "strategies": [{"name": "single", "label": "reference", "device": "phone"}, *strategies],
        **extra})


MLP = {"name": "mlp", "in_dim": 16, "hidden": 24, "depth": 2, "n_classes": 5}
CNN = {"name": "mobilenet_small", "width": 8, "size": 16}
TRANSFORMER = {"name": "tiny_transformer", "vocab": 16, "d_model": 32, "n_heads": 4,
               "n_layers": 2, "seq_len": 8}
EXACT = {
    "pipeline": {"name": "pipeline", "devices": ["phone", "laptop", "pc"], "cuts": [1, 2],
                 "microbatches": 3},
    "data_parallel-round_robin": {"name": "data_parallel", "devices": ["laptop", "pc"],
                                  "dispatch": "round_robin"},
    "data_parallel-least_loaded": {"name": "data_parallel", "devices": ["laptop", "pc", "tablet"],
                                   "dispatch": "least_loaded"},
    "data_parallel-weighted": {"name": "data_parallel", "devices": ["laptop", "pc"],
                               "dispatch": "weighted"},
    "data_parallel-split": {"name": "data_parallel", "devices": ["laptop", "pc", "tablet"],
                            "dispatch": "split"},
    "tensor_parallel-2": {"name": "tensor_parallel", "devices": ["laptop", "pc"]},
    "tensor_parallel-3": {"name": "tensor_parallel", "devices": ["laptop", "pc", "tablet"]},
    "hybrid": {"name": "hybrid", "pipelines": [[["phone"], ["laptop", "pc"]], [["tablet"], ["pc"]]],
               "cuts": [2], "microbatches": 2},
    "offload-0": {"name": "offload", "target": "pc", "cut": 0},
    "offload-2": {"name": "offload", "target": "pc", "cut": 2},
}


@pytest.mark.parametrize("model", [MLP, CNN, TRANSFORMER], ids=["mlp", "mobilenet", "transformer"])
@pytest.mark.parametrize("strategy", sorted(EXACT))
def test_every_exact_strategy_computes_the_single_device_outputs(strategy, model):
    """rtol = atol = 1e-5 in float32: tensor-parallel row splits add partial sums in
    another order; every other strategy runs the same kernels on the same numbers."""
    run = api.run(scenario(model, [EXACT[strategy] | {"label": "split"}]))
    ref, out = run["reference"].outputs, run["split"].outputs
    assert sorted(ref) == sorted(out) == [0, 1, 2]
    for r in ref:
        np.testing.assert_allclose(out[r], ref[r], rtol=1e-5, atol=1e-5)


def test_compressed_deployments_measure_their_accuracy_change_and_store_int8():
    run = api.run(ROOT / "scenarios" / "compressed.yaml", timing_only=False)
    rows = run.comparison.set_index("strategy")
    assert rows.loc["phone-fp32", "accuracy"] > 0.8  # the model was trained
    for name in ("phone-fp16", "phone-int8", "phone-pruned-80", "pc-pruned-80", "pc-fp16-2of4"):
        assert not np.isnan(rows.loc[name, "accuracy_change"])
        assert rows.loc[name, "accuracy_fp32"] == pytest.approx(rows.loc["phone-fp32", "accuracy"])
    weights = {name: _weight_bytes(run[name], dev) for name, dev in
               (("phone-fp32", "phone"), ("phone-fp16", "phone"), ("phone-int8", "phone"))}
    assert weights["phone-fp16"] == pytest.approx(weights["phone-fp32"] / 2, rel=0.01)
    assert weights["phone-int8"] == pytest.approx(weights["phone-fp32"] / 4, rel=0.05)
    assert _weight_bytes(run["phone-pruned-80"], "phone") < weights["phone-fp32"] / 2
    # mlp 32-1024-1024-1024-4: 2134016 weights, 3076 float32 biases (12304 B). fp16:
    # 2 B each = 4280336 B. 2:4: the kept half at 2 B + 2 bits each (1067008 / 4 B).
    assert _weight_bytes(run["pc-fp16"], "pc") == 2134016 * 2 + 12304 == 4280336
    assert _weight_bytes(run["pc-fp16-2of4"], "pc") == 1067008 * 2 + 266752 + 12304 == 2413072


def test_pruning_speeds_up_only_2_4_weight_products_on_a_unit_that_declares_it():
    """Unstructured 80% leaves every device's work as it was (no unit declares it). 2:4
    in fp16 on the PC, whose GPU declares 2:4 x2 for fp16: exactly half of the Linear
    products go, 20 requests x 256 rows x 2 x 2134016 weights / 2; the ReLUs stay."""
    run = api.run(ROOT / "scenarios" / "compressed.yaml", timing_only=True)
    busy = {name: run[name].devices.set_index("device").loc[dev, "flops"]
            for name, dev in (("phone-fp32", "phone"), ("phone-pruned-80", "phone"),
                              ("pc-fp32", "pc"), ("pc-pruned-80", "pc"), ("pc-fp16", "pc"),
                              ("pc-fp16-2of4", "pc"))}
    assert busy["phone-pruned-80"] == busy["phone-fp32"]
    assert busy["pc-pruned-80"] == busy["pc-fp32"] == busy["pc-fp16"]
    assert busy["pc-fp16"] - busy["pc-fp16-2of4"] == 20 * 256 * 2 * 2134016 / 2


def _weight_bytes(result, device):
    e = result.events
    return e[(e.kind == "alloc") & (e.device == device) & e.label.str.startswith("weights")].nbytes.sum()


@pytest.mark.parametrize("k", [2, 3])
def test_tensor_parallel_traffic_matches_the_ring_collective_formulas(k):
    """Per collective of payload S over k members on a ring: all-gather moves (k-1) S
    bytes in all, all-reduce 2 (k-1) S."""
    devices = ["laptop", "pc", "tablet"][:k]
    sc = scenario(MLP, [{"name": "tensor_parallel", "label": "tp", "devices": devices}],
                  requests=2, batch=4)
    run = api.run(sc, "tp", timing_only=True)
    world = api.build(sc)
    expected = 0.0
    shape = (4, *world.chain.in_shape)
    for block in world.chain:
        program = tp.shard(block.layer, k)
        for op, cost in zip(program.ops, program.costs(shape)):
            if isinstance(op, tp.Gather):
                expected += (k - 1) * cost.nbytes
            elif isinstance(op, tp.Reduce):
                expected += 2 * (k - 1) * cost.nbytes
        shape = block.layer.cost(shape).out_shape
    e = run["tp"].events
    moved = e[(e.kind == "transfer") & ~e.label.str.match(r"^(input|act|out) ")].nbytes.sum()
    assert moved == pytest.approx(2 * expected, rel=1e-9)  # two requests


def test_input_stays_on_its_device_in_every_strategy_that_runs():
    run = api.run(ROOT / "scenarios" / "privacy.yaml", timing_only=True)
    for result in run.results:
        e = result.events
        raw = e[(e.kind == "transfer") & e.label.str.startswith("input")]
        assert raw.empty, (result.strategy, raw)
        assert (result.requests.status == "completed").all()


@pytest.mark.parametrize("strategy", [
    {"name": "offload", "target": "edge", "cut": 0},
    {"name": "single", "device": "edge"},
    {"name": "data_parallel", "devices": ["phone", "edge"]},
    {"name": "tensor_parallel", "devices": ["phone", "edge"]},
])
def test_plans_that_would_ship_the_raw_input_are_refused(strategy):
    sc = scenario(CNN, [strategy | {"label": "bad"}], devices=("phone", "edge"),
                  constraints={"input_stays_on": "phone"})
    with pytest.raises(PlanError, match=r"input_stays_on: 'phone' is not valid; the raw input"):
        api.run(sc, "bad", timing_only=True)


def test_ensembles_report_each_member_and_the_fused_accuracy():
    run = api.run(ROOT / "scenarios" / "ensemble.yaml")
    rows = run.comparison.set_index("strategy")
    members = [c for c in rows.columns if c.startswith("accuracy_") and "@" in c]
    assert len(members) == 3
    for fusion in ("mean", "vote", "confidence"):
        assert rows.loc[fusion, members].notna().all()
        assert rows.loc[fusion, "accuracy"] >= rows.loc[fusion, members].min()
    assert rows.loc["mean", "accuracy"] > rows.loc["mean", members].mean()


def test_priority_classes_get_their_own_latency_percentiles():
    run = api.run(ROOT / "scenarios" / "priorities.yaml", timing_only=True)
    row = run["least-loaded"].summary.iloc[0]
    assert row["latency_p95_ms_interactive"] < row["latency_p95_ms_background"]
