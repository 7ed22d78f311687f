"""Bytes per token of tensor-parallel decode (issue 17): one token of one sequence, a
(1, 1, dim) activation, through a decoder split over k devices. Every layer syncs twice
(after attention, after the MLP), each an all-reduce of S = dim x 4 B (fp32 on the wire).
Star: each worker sends S to the root and gets S back per sync. Ring: each member sends
2 (k-1)/k S per sync (Patarasuk & Yuan 2009)."""
import pytest

from simdl import api
from simdl.scenario import parse

DIM, LAYERS = 32, 3
LM = {"name": "decoder_lm", "vocab": 40, "dim": DIM, "n_layers": LAYERS, "n_heads": 8,
      "n_kv_heads": 4, "ffn_hidden": 48, "seq_len": 1}
DEVICES = {"laptop": "laptop", "pc": "desktop_pc", "tablet": "tablet", "phone": "phone_flagship"}
S = DIM * 4


def decode_step(k, collective, timing_only=True):
    devices = list(DEVICES)[:k]
    sc = parse({
        "name": "t", "seed": 0,
        "devices": [{"name": d, "type": t} for d, t in DEVICES.items()],
        "network": {"kind": "home"}, "model": LM,
        "workload": {"kind": "inference", "requests": 1, "batch": 1,
                     "arrival": {"kind": "closed", "concurrency": 1}, "source": "phone"},
        "strategies": [{"name": "single", "label": "reference", "device": "phone"},
                       {"name": "tensor_parallel", "label": "tp", "devices": devices,
                        "collective": collective}]})
    return api.run(sc, None if not timing_only else "tp", timing_only=timing_only)


def per_layer(run, k, column):
    """Bytes each device moved (`device`: sent, `resource`: received) in each layer block."""
    e = run["tp"].events
    t = e[(e.kind == "transfer") & e.label.str.match(r"^layer\d+ ")]
    out = {}
    for layer in range(1, LAYERS + 1):
        rows = t[t.label.str.startswith(f"layer{layer} ")]
        out[layer] = rows.groupby(column).nbytes.sum().to_dict()
    return out


@pytest.mark.parametrize("k", [2, 3, 4])
def test_star_decode_moves_two_syncs_of_dim_activations_per_layer_per_worker(k):
    run = decode_step(k, "star")
    root, workers = list(DEVICES)[0], list(DEVICES)[1:k]
    want = {root: 2 * (k - 1) * S, **dict.fromkeys(workers, 2 * S)}
    for column in ("device", "resource"):          # sent, then received
        assert per_layer(run, k, column) == {layer: want for layer in range(1, LAYERS + 1)}
    e = run["tp"].events
    sends = e[(e.kind == "transfer") & e.label.str.match(r"^layer1 ")]
    assert sends.groupby("device").size().to_dict() == {root: 2 * (k - 1),
                                                        **dict.fromkeys(workers, 2)}


@pytest.mark.parametrize("k", [2, 3, 4])
def test_ring_decode_moves_two_all_reduces_per_layer_per_member(k):
    run = decode_step(k, "ring")
    want = dict.fromkeys(list(DEVICES)[:k], pytest.approx(2 * 2 * (k - 1) / k * S, rel=1e-12))
    for column in ("device", "resource"):
        assert per_layer(run, k, column) == {layer: want for layer in range(1, LAYERS + 1)}


def test_a_star_decode_step_gives_the_single_device_logits():
    run = decode_step(3, "star", timing_only=False)
    ref, out = run["reference"].outputs, run["tp"].outputs
    assert sorted(ref) == sorted(out) == [0]
    assert out[0].shape == (1, 1, LM["vocab"])
    assert abs(out[0] - ref[0]).max() <= 1e-5


def test_a_stage_with_an_unknown_collective_is_refused():
    from dataclasses import replace

    from simdl.errors import PlanError
    from simdl.plan.plan import Plan, Replica, Stage, check
    world = api.build(parse({
        "name": "t", "seed": 0, "devices": [{"name": d, "type": t} for d, t in DEVICES.items()],
        "network": {"kind": "home"}, "model": LM,
        "workload": {"kind": "inference", "requests": 1, "batch": 1, "source": "phone"},
        "strategies": [{"name": "single", "device": "phone"}]}))
    stage = Stage(("laptop", "pc"), 0, len(world.chain))
    plan = Plan("explicit", (Replica((stage,)),), "phone")
    check(plan, world)
    with pytest.raises(PlanError, match=r"stages\[0\]\.collective: 'mesh' is not valid; "
                                        r"choose one of: ring, star"):
        check(replace(plan, replicas=(Replica((replace(stage, collective="mesh"),)),)), world)
