"""Cost before work: every quantity is bounded before anything is allocated, `validate`
never trains, `run` refuses what cannot fit in memory, and the summary says what a
throughput and an energy figure are measured against."""
import re
from pathlib import Path

import pytest
import yaml

from simdl import budget
from simdl import world as world_module
from simdl.api import run
from simdl.cli import main
from simdl.nn.models import MODELS, SIZES
from simdl.report.tables import devices_table, links_table, summary
from simdl.scenario import parse
from stand_ins import Joules, Spec
from test_tables import DURATION, ENERGY, LINK_STATS, ROWS, SPECS

ROOT = Path(__file__).resolve().parents[1]


def scenario(**over) -> dict:
    """A tiny scenario: mlp 4-8-8-2 (130 parameters, 3 blocks), 10 requests, 2 strategies."""
    base = {
        "name": "tiny",
        "devices": [{"name": "phone", "type": "phone_flagship"},
                    {"name": "tv", "type": "smart_tv"}],
        "network": {"kind": "home"},
        "model": {"name": "mlp", "in_dim": 4, "hidden": 8, "depth": 2, "n_classes": 2},
        "workload": {"kind": "inference", "requests": 10, "source": "phone"},
        "strategies": [{"name": "single", "label": "p", "device": "phone"},
                       {"name": "single", "label": "t", "device": "tv"}],
    }
    for key, value in over.items():
        old = base.get(key, {})
        same = isinstance(value, dict) and all(value.get(k, old.get(k)) == old.get(k)
                                               for k in ("name", "kind"))
        base[key] = {**old, **value} if same else value
    return base


def write(tmp_path: Path, data: dict) -> str:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def one_line(argv: list[str], capsys) -> str:
    """The one error line of `simdl *argv`, which must exit 2."""
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, err
    return err.strip()


# -- sizes from arguments ------------------------------------------------------------

CASES = [("mlp", {}), ("mlp", {"in_dim": 7, "hidden": 5, "depth": 3, "n_classes": 3}),
         ("lenet", {}), ("lenet", {"in_ch": 3, "size": 32, "n_classes": 4}),
         ("resnet_small", {}), ("resnet_small", {"width": 8, "in_ch": 1}),
         ("mobilenet_small", {}), ("mobilenet_small", {"width": 4}),
         ("tiny_transformer", {}),
         ("tiny_transformer", {"vocab": 10, "d_model": 24, "n_heads": 3, "n_layers": 3,
                               "seq_len": 5})]


@pytest.mark.parametrize("name,kw", CASES)
def test_a_size_function_matches_the_built_model(name, kw):
    chain, size = MODELS[name](**kw), SIZES[name](**kw)
    assert (size.params, size.in_shape) == (chain.n_params(), chain.in_shape)


def test_sizes_by_hand():
    # (4+1)*8 + (8+1)*8 + (8+1)*2; LeNet-5's classic 61,706
    assert SIZES["mlp"](in_dim=4, hidden=8, depth=2, n_classes=2).params == 130
    assert SIZES["lenet"]().params == 61_706


def test_every_model_has_a_size_function_with_its_builders_signature():
    import inspect
    assert set(SIZES) == set(MODELS)
    for name in MODELS:
        assert inspect.signature(SIZES[name]).parameters == inspect.signature(MODELS[name]).parameters


# -- bounds: one line, nothing allocated ------------------------------------------------

BOUNDS = "see README 'Bounds'"


def test_a_million_wide_mlp_is_refused_from_its_arguments(tmp_path, capsys):
    """33e6 + 1,000,001e6 + 4,000,004 parameters: numpy was asked for 3.6 TiB before."""
    data = scenario(model={"name": "mlp", "hidden": 1_000_000, "in_dim": 32, "n_classes": 4})
    line = one_line(["validate", write(tmp_path, data)], capsys)
    assert line == ("simdl: error: model parameters: 1,000,038,000,004 is not valid; at most "
                    "100,000,000 parameters in all models together "
                    f"(simdl.budget.MAX_PARAMS, {BOUNDS})")


@pytest.mark.parametrize("field,over,expect", [
    ("requests", {"workload": {"requests": 10**12}},
     "workload.requests: 1,000,000,000,000 is not valid; at most 100,000 requests "
     "(simdl.budget.MAX_REQUESTS"),
    ("devices", {"devices": [{"name": "phone", "type": "phone_flagship"},
                             {"name": "tv", "type": "smart_tv", "count": 1_000_000}]},
     "devices: 1,000,001 is not valid; at most 256 devices (after count expansion) "
     "(simdl.budget.MAX_DEVICES"),
    ("pretrain", {"model": {"pretrain": 10**8}},
     "model.pretrain: 100,000,000 is not valid; at most 10,000 pretraining steps "
     "(simdl.budget.MAX_PRETRAIN_STEPS"),
    ("steps", {"workload": {"kind": "training", "steps": 10**9},
               "strategies": [{"name": "single_device", "device": "phone"}]},
     "workload.steps: 1,000,000,000 is not valid; at most 100,000 steps "
     "(simdl.budget.MAX_STEPS"),
    ("batch", {"workload": {"batch": 5000}},
     "workload.batch: 5000 is not valid; at most 4,096 samples per batch "
     "(simdl.budget.MAX_BATCH"),
    ("input", {"model": {"name": "lenet", "size": 513}},
     "model input: 263,169 is not valid; at most 262,144 scalars per sample "
     "(simdl.budget.MAX_INPUT"),
])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_quantity_over_its_bound_is_one_line(field, over, expect, command, tmp_path, capsys):
    data = scenario(**over)
    out = ["--out", str(tmp_path / "run")] if command == "run" else []
    line = one_line([command, write(tmp_path, data), *out], capsys)
    assert line == f"simdl: error: {expect}, {BOUNDS})"


def test_the_device_bound_is_inclusive():
    at = scenario(devices=[{"name": "phone", "type": "phone_flagship"},
                           {"name": "w", "type": "smartwatch", "count": 255}])
    budget.check(parse(at))
    at["devices"][1]["count"] = 256
    with pytest.raises(budget.BudgetError, match=r"^devices: 257 is not valid"):
        budget.check(parse(at))


def test_validate_never_pretrains(tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("validate ran the pretraining")

    monkeypatch.setattr(world_module, "fit", refuse)
    assert main(["validate", write(tmp_path, scenario(model={"pretrain": 5}))]) == 0
    out = capsys.readouterr().out
    assert "estimate: 2 strategy runs, ~140 events" in out


def test_events_and_pretraining_work_are_bounded(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(budget, "MAX_EVENTS", 139)
    line = one_line(["validate", write(tmp_path, scenario())], capsys)
    assert line == ("simdl: error: events (estimated): 140 is not valid; at most 139 "
                    f"event-log rows per run (simdl.budget.MAX_EVENTS, {BOUNDS})")
    monkeypatch.setattr(budget, "MAX_EVENTS", 140)
    monkeypatch.setattr(budget, "MAX_PRETRAIN_FLOP", 112_639)
    line = one_line(["validate", write(tmp_path, scenario(model={"pretrain": 5}))], capsys)
    assert line == ("simdl: error: pretraining work (FLOP): 112,640 is not valid; at most "
                    "112,639 FLOP of pretraining in all models together "
                    f"(simdl.budget.MAX_PRETRAIN_FLOP, {BOUNDS})")


# -- the estimate, by hand -----------------------------------------------------------

def test_the_estimate_by_hand():
    sc = parse(scenario(model={"pretrain": 5}))
    models = {"main": MODELS["mlp"](in_dim=4, hidden=8, depth=2, n_classes=2)}
    est = budget.estimate(sc, models)
    assert est.runs == 2 and est.params == 130
    assert est.events == 2 * 10 * (3 + 4)
    assert est.model_bytes == 2 * 4 * 130            # weights and gradients
    assert est.data_bytes == 2560 * 4 * 4
    assert est.log_bytes == 140 * 200
    # answers: 2 runs x 10 requests x 2 logits x 4 B; activations: 2 devices x (8+8+2) x 4 B
    assert est.kernel_bytes == 160 + 144
    # per step of 32: fwd 2048+256+4096+256+1024, bwd 4096+256+8192+256+2048
    assert est.pretrain_flop == 5 * (7680 + 14848)
    assert (est.timing_bytes, est.real_bytes) == (70_000, 70_304)


def test_training_estimate_counts_a_model_copy_per_device():
    sc = parse(scenario(workload={"kind": "training", "steps": 3, "batch": 2,
                                  "optimizer": "adam"},
                        strategies=[{"name": "single_device", "device": "phone"}]))
    est = budget.estimate(sc, {"main": MODELS["mlp"](in_dim=4, hidden=8, depth=2, n_classes=2)})
    assert est.events == 1 * 3 * 2 * (2 * 3 + 4)
    # 2 copies x 130 x 4 B x (weights, grads, 2 Adam moments); saved + out per block at batch 2:
    # fc: saved (in 4 + relu 8) x2 x4 B, out 8x2x4; fc2: (8+8) x2x4, 64; head: 8x2x4, 2x2x4
    per_device = (96 + 64) + (128 + 64) + (64 + 16)
    assert est.kernel_bytes == 2 * 130 * 4 * 4 + 2 * per_device


# -- run refuses what cannot fit --------------------------------------------------------

def test_run_refuses_arrays_larger_than_memory_and_suggests_timing_only(tmp_path, capsys,
                                                                       monkeypatch):
    monkeypatch.setattr(budget, "machine_memory", lambda: 70_000)
    path = write(tmp_path, scenario())
    line = one_line(["run", path, "--out", str(tmp_path / "a")], capsys)
    assert line == ("simdl: error: memory: ~70,304 bytes of real-mode arrays is not valid; "
                    "this machine has 70,000 bytes; --timing-only needs ~70,000 bytes and fits")
    assert not (tmp_path / "a").exists()
    assert main(["run", path, "--timing-only", "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    monkeypatch.setattr(budget, "machine_memory", lambda: 69_999)
    line = one_line(["run", path, "--timing-only", "--out", str(tmp_path / "c")], capsys)
    assert line == ("simdl: error: memory: ~70,000 bytes of timing-only arrays is not valid; "
                    "this machine has 69,999 bytes; make the scenario smaller")


def test_validate_says_when_run_would_refuse(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(budget, "machine_memory", lambda: 70_000)
    assert main(["validate", write(tmp_path, scenario())]) == 0
    out = capsys.readouterr().out
    assert ("estimate: 2 strategy runs, ~140 events, real-mode memory ~70,304 bytes "
            "(timing-only ~70,000 bytes), pretraining 0.0 GFLOP") in out
    assert "note: `simdl run` would refuse it: memory: ~70,304 bytes" in out


def test_every_bound_is_in_the_readme_with_its_value():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Bounds", 1)[1].split("\n## ", 1)[0]
    for name, value in vars(budget).items():
        if name.startswith("MAX_"):
            shown = f"{value:,.0f}" if value < 1e12 else f"{value:.0e}".replace("+", "")
            assert re.search(rf"`{name}`.*{re.escape(shown)}", section), (name, shown)


# -- what users misread ------------------------------------------------------------------

def test_energy_used_leaves_out_devices_that_did_nothing():
    import pandas as pd
    from simdl.sim.recorder import COLUMNS
    events = pd.DataFrame.from_records(ROWS, columns=list(COLUMNS))
    specs = SPECS | {"watch": Spec("watch", ["cpu"])}
    energy = ENERGY | {"watch": Joules(4.0, 0.0, 0.0)}
    devices = devices_table(events, specs, energy, DURATION)
    row = summary(events, devices, links_table(LINK_STATS, DURATION), DURATION).iloc[0]
    assert (row["energy_used_J"], row["energy_J"]) == (3.5 + 3.0, 3.5 + 3.0 + 4.0)


def test_an_open_loop_run_reports_offered_load_beside_capacity():
    """A trace of 4 arrivals 0.5 s apart offers 3 / 1.5 s = 2 requests/s, 3 samples each.
    One device serving its own input: no transfer, so the capacity is 1 / one request's
    compute, which is the simulated latency of a request that never queues."""
    data = scenario(workload={"requests": 4, "batch": 3,
                              "arrival": {"kind": "trace", "times": [0.0, 0.5, 1.0, 1.5]}},
                    strategies=[{"name": "single", "device": "phone"}])
    r = run(parse(data), timing_only=True)
    row = r.comparison.iloc[0]
    assert (row["offered_rps"], row["offered_samples_per_s"]) == (2.0, 6.0)
    from simdl.hw.devices import best_unit
    phone = world_module.build(parse(data), timing_only=True, pretrain=False).devices["phone"]
    assert row["capacity_bottleneck"] == f"phone/{best_unit(phone)}"
    latency = r.results[0].requests["latency"]  # equal but for the clock's rounding
    assert latency.max() - latency.min() < 1e-15
    assert row["capacity_rps"] == pytest.approx(1 / latency.iloc[0], rel=1e-9)


def test_a_closed_loop_run_has_capacity_but_no_offered_load():
    r = run(parse(scenario(workload={"requests": 2})), timing_only=True)
    assert "offered_rps" not in r.comparison.columns
    assert (r.comparison["capacity_rps"] > 0).all()


def test_a_transfer_can_be_the_bottleneck():
    """Serving the phone's input on the tv, 16 samples of 1x28x28 float32 (50,176 B) a
    request: the busiest resource is the link that carries them, at its capacity."""
    from simdl.plan.costs import Costs
    data = scenario(model={"name": "lenet"}, workload={"batch": 16},
                    strategies=[{"name": "single", "device": "tv"}])
    sc = parse(data)
    row = run(sc, timing_only=True).comparison.iloc[0]
    w = world_module.build(sc, timing_only=True, pretrain=False)
    cap = w.network.capacity
    resource, crossings = max(Costs(w).hop("phone", "tv").uses, key=lambda u: u[1] / cap[u[0]])
    assert row["capacity_bottleneck"] == resource
    assert row["capacity_rps"] == pytest.approx(cap[resource] / (crossings * 16 * 3136),
                                                rel=1e-12)
