"""Calibration: the fit recovers known figures from measurements the simulator makes,
and a held-out row never shapes the profile it is judged by."""
import math

import numpy as np
import pandas as pd
import pytest

import simdl.api as sd
from simdl import calibrate as cal
from simdl.hw.devices import load_catalogue, make_device

MODELS = ("lenet", "resnet_small", "mobilenet_small", "tiny_transformer", "mlp")
#: The published models calibration runs on (full size: their costs only are walked).
FULL = ("resnet18", "mobilenet_v2", "efficientnet_b0", "mobilenet_v3_small", "resnet50",
        "deit_tiny")


def simulated_ms(device: str, unit: str, model: str, efficiency: float, overhead: str) -> float:
    """One request of batch 1 alone on `unit` of `device`, as the simulator times it."""
    sc = sd.parse({
        "name": "calib", "seed": 0,
        "devices": [{"name": "d", "type": device,
                     f"units.{unit}.efficiency": efficiency, f"units.{unit}.overhead": overhead}],
        "network": {"kind": "home"}, "model": {"name": model},
        "workload": {"kind": "inference", "requests": 1, "batch": 1, "source": "d"},
        "strategies": [{"name": "single", "device": "d", "unit": unit}]})
    run = sd.run(sc, timing_only=True)
    return float(run.results[0].requests.latency.iloc[0]) * 1e3


def test_work_times_a_lone_request_as_the_simulator_does():
    spec = load_catalogue()["phone_flagship"]
    for model in MODELS:
        w = cal.work(spec, "cpu", model, "fp32", 1)
        unit = spec.units["cpu"]
        assert w.seconds(unit.efficiency, unit.overhead) * 1e3 == pytest.approx(
            simulated_ms("phone_flagship", "cpu", model, unit.efficiency,
                         f"{unit.overhead * 1e6}us"), rel=1e-12)


def test_the_fit_recovers_known_figures_from_simulated_measurements():
    true_eff, true_ovh = 0.0123, 37e-6   # small efficiency: compute-bound kernels dominate
    spec = make_device("phone_flagship", {"units.cpu.efficiency": true_eff,
                                          "units.cpu.overhead": f"{true_ovh * 1e6}us"})
    works = [cal.work(spec, "cpu", m, "fp32", 1) for m in MODELS]
    y = [simulated_ms("phone_flagship", "cpu", m, true_eff, f"{true_ovh * 1e6}us") / 1e3
         for m in MODELS]
    e, o, t = cal.fit(works, y, traffic=False)
    assert (e, o, t) == (pytest.approx(true_eff, rel=1e-6), pytest.approx(true_ovh, rel=1e-5), 1)
    # with the overhead given, the efficiency alone
    e1, o1, _ = cal.fit(works[:1], y[:1], overhead=true_ovh, traffic=False)
    assert (e1, o1) == (pytest.approx(true_eff, rel=1e-6), true_ovh)


def test_the_fit_recovers_efficiency_overhead_and_traffic():
    """Full-size models on a phone GPU, where some blocks are memory-bound: all three."""
    spec = load_catalogue()["phone_flagship"]
    works = [cal.work(spec, "gpu", m, "fp16", 1) for m in FULL]
    truth = cal.Profile(0.17, 42e-6, 2.0 ** -1.5)
    y = [w.seconds(*truth) for w in works]
    assert any(w.seconds(*truth) != w.seconds(truth.efficiency, truth.overhead) for w in works)
    got = cal.fit(works, y)
    assert got == (pytest.approx(truth.efficiency, rel=1e-6),
                   pytest.approx(truth.overhead, rel=1e-5), truth.traffic)


def test_best_overhead_is_the_least_squares_solution():
    spec = load_catalogue()["phone_flagship"]
    works = [cal.work(spec, "cpu", m, "fp32", 1) for m in MODELS]
    y = np.array([w.seconds(0.05, 2e-5) for w in works]) * np.array([1.1, 0.9, 1.05, 1.0, 0.97])
    o = cal.best_overhead(works, y, 0.05)
    assert o > 0

    def sq(ov):
        return sum((w.seconds(0.05, ov) / t - 1) ** 2 for w, t in zip(works, y))
    assert sq(o) <= min(sq(o * (1 + d)) for d in (-1e-3, 1e-3))


def measured_frame(rows):
    return pd.DataFrame(rows, columns=["device", "unit", "runtime", "model", "precision",
                                       "batch", "latency_ms"])


def synthetic(effs):
    """Rows made from known efficiencies per (device, runtime), overhead 20 us."""
    specs = load_catalogue()
    rows = []
    for (device, runtime), eff in effs.items():
        for m in FULL:
            w = cal.work(specs[device], "cpu", m, "fp32", 1)
            rows.append((device, "cpu", runtime, m, "fp32", 1, w.seconds(eff, 20e-6) * 1e3))
    return measured_frame(rows)


def test_calibrate_recovers_profiles_and_held_out_errors_vanish_on_exact_data():
    effs = {("phone_flagship", "rt-a"): 0.02, ("phone_flagship", "rt-b"): 0.05,
            ("tablet", "rt-a"): 0.03}
    table, profiles = cal.calibrate(synthetic(effs))
    for (device, runtime), eff in effs.items():
        got = profiles["devices"][device]["cpu"][f"{runtime}-fp32"]
        assert got["efficiency"] == pytest.approx(eff, rel=1e-5)
        assert got["overhead_s"] == pytest.approx(20e-6, rel=1e-4)
        assert (got["rows"], got["traffic"], got["fitted_on"]) == (len(FULL), 1.0, "setup")
    assert (table.heldout_from == "setup").all()
    assert table.error_heldout.abs().max() < 1e-6
    assert table.error_before.abs().min() > 0.01   # the catalogue's figures were off


def test_a_held_out_row_never_shapes_its_own_prediction():
    rows = synthetic({("phone_flagship", "rt-a"): 0.02})
    base, _ = cal.calibrate(rows)
    moved = rows.copy()
    moved.loc[2, "latency_ms"] *= 7.0
    again, _ = cal.calibrate(moved)
    assert again.heldout_ms[2] == base.heldout_ms[2]
    assert again.heldout_ms[0] != base.heldout_ms[0]   # the others do see it


def test_a_device_without_own_rows_borrows_its_kinds_pooled_profile():
    rows = synthetic({("phone_flagship", "rt-a"): 0.02, ("tablet", "rt-a"): 0.02})
    lone = rows[(rows.device == "phone_flagship") | (rows.model == "resnet18")].reset_index(drop=True)
    table, profiles = cal.calibrate(lone)
    assert table[table.device == "tablet"].heldout_from.tolist() == ["kind"]
    assert profiles["kinds"]["cpu"]["rt-a-fp32"]["rows"] == len(FULL) + 1


def test_a_setup_with_one_row_borrows_its_runtime_familys_other_precisions():
    rows = synthetic({("phone_flagship", "rt-a"): 0.02})
    rows.loc[0, "precision"] = "fp16"
    rows.loc[0, "latency_ms"] = cal.work(load_catalogue()["phone_flagship"], "cpu", FULL[0],
                                         "fp16", 1).seconds(0.02, 20e-6) * 1e3
    table, profiles = cal.calibrate(rows)
    assert table.heldout_from.tolist() == ["family"] + ["setup"] * (len(FULL) - 1)
    assert table.runtime.tolist() == ["rt-a-fp16"] + ["rt-a-fp32"] * (len(FULL) - 1)
    fp16 = profiles["devices"]["phone_flagship"]["cpu"]["rt-a-fp16"]
    assert (fp16["fitted_on"], fp16["rows"]) == ("family", len(FULL))


def test_a_thread_count_is_part_of_the_setup():
    rows = synthetic({("phone_flagship", "rt-a"): 0.02}).assign(threads=[1, 4, 4, 4, 4, 4])
    table, profiles = cal.calibrate(rows)
    assert set(profiles["devices"]["phone_flagship"]["cpu"]) == {"rt-a-1t-fp32", "rt-a-4t-fp32"}


TABLE = {"devices": {"phone_flagship": {"cpu": {"rt-a": {"efficiency": 0.125,
                                                         "overhead_s": 3.5e-05}}}},
         "kinds": {"gpu": {"rt-a": {"efficiency": 0.25, "overhead_s": 1e-4}},
                   "npu": {"rt-n": {"efficiency": 0.5, "overhead_s": 2e-4}}}}


def test_a_runtime_lays_its_profiles_on_the_units_that_have_one(monkeypatch):
    from simdl.hw import runtimes
    monkeypatch.setattr(runtimes, "profiles", lambda: TABLE)
    spec = make_device("phone_flagship", runtime="rt-a")
    base = load_catalogue()["phone_flagship"]
    assert (spec.units["cpu"].efficiency, spec.units["cpu"].overhead) == (0.125, 3.5e-05)
    assert (spec.units["gpu"].efficiency, spec.units["gpu"].overhead) == (0.25, 1e-4)
    assert spec.units["npu"] == base.units["npu"]          # no rt-a profile: the catalogue's
    # an explicit override still wins over the runtime's figure
    spec = make_device("phone_flagship", {"units.cpu.efficiency": 0.3}, runtime="rt-a")
    assert spec.units["cpu"].efficiency == 0.3
    with pytest.raises(Exception, match=r"devices\[0\]\.runtime.*rt-a, rt-n"):
        make_device("phone_flagship", where="devices[0]", runtime="tflite")


def test_a_scenario_picks_a_runtime(monkeypatch):
    from simdl.hw import runtimes
    monkeypatch.setattr(runtimes, "profiles", lambda: TABLE)
    fast = simulated_ms("phone_flagship", "cpu", "lenet", 0.4, "5us")
    sc = {"name": "rt", "devices": [{"name": "d", "type": "phone_flagship", "runtime": "rt-a"}],
          "network": {"kind": "home"}, "model": {"name": "lenet"},
          "workload": {"kind": "inference", "requests": 1, "batch": 1, "source": "d"},
          "strategies": [{"name": "single", "device": "d", "unit": "cpu"}]}
    got = float(sd.run(sd.parse(sc), timing_only=True).results[0].requests.latency.iloc[0]) * 1e3
    assert got == pytest.approx(simulated_ms("phone_flagship", "cpu", "lenet", 0.125, "35us"),
                                rel=1e-12)
    assert got != pytest.approx(fast)


def test_a_profiles_traffic_divides_the_bandwidth_the_unit_sees(monkeypatch):
    from simdl.hw import runtimes
    table = {"devices": {"laptop_gaming": {"gpu": {"rt": {"efficiency": 0.5, "overhead_s": 1e-5,
                                                          "traffic": 0.25}}}}, "kinds": {}}
    monkeypatch.setattr(runtimes, "profiles", lambda: table)
    base = load_catalogue()["laptop_gaming"]
    spec = make_device("laptop_gaming", runtime="rt")
    assert spec.units["gpu"].mem_bw == base.units["gpu"].mem_bw * 4   # VRAM, its own
    assert spec.units["cpu"].mem_bw == base.units["cpu"].mem_bw       # untouched
    w = cal.work(base, "gpu", "resnet18", "fp16", 8)
    got = cal.work(spec, "gpu", "resnet18", "fp16", 8).seconds(0.5, 1e-5)
    assert got == w.seconds(0.5, 1e-5, 0.25)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """`simdl calibrate` on the shipped measurements (about 20 s)."""
    out = tmp_path_factory.mktemp("calibration") / "run"
    table, _ = cal.run(None, out)
    return table, out


def test_the_shipped_profiles_are_what_calibrate_writes(shipped):
    from importlib import resources
    _, out = shipped
    assert (out / "runtimes.yaml").read_text() == resources.files("simdl.hw").joinpath(
        "runtimes.yaml").read_text()


def test_held_out_error_meets_the_target_and_beats_the_catalogue(shipped):
    head = cal.summary(shipped[0])
    assert head["rows"] >= 60 and head["devices"] >= 8
    assert head["median_error_heldout"] <= 0.25
    assert head["median_error_heldout"] < head["median_error_before"]


def test_the_phones_scenario_simulates_the_fitted_latencies(shipped, tmp_path):
    from pathlib import Path
    table, _ = shipped
    run = sd.run(Path(__file__).parents[1] / "scenarios" / "mobilenet_v2_phones.yaml",
                 timing_only=True)
    sc = run.scenario
    runtime = {d.name: (d.type, d.runtime) for d in sc.devices}
    for entry, result in zip(sc.strategies, run.results):
        device_type, setup = runtime[entry.params["device"]]
        unit = entry.params["unit"]
        row = table[(table.device == device_type) & (table.unit == unit)
                    & (table.runtime == setup) & (table.model == "mobilenet_v2")]
        busy = result.devices.set_index("device").loc[entry.params["device"], f"busy_{unit}_s"]
        assert busy / sc.workload.requests * 1e3 == pytest.approx(row.fitted_ms.item(), rel=1e-5)
