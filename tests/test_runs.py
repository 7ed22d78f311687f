"""End to end: every shipped scenario runs; runs are deterministic; splitting keeps the numbers."""
from pathlib import Path

import numpy as np
import pytest

from simdl import api
from simdl.scenario import dump, parse
from simdl.sim.training import DECISIONS

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = sorted((ROOT / "scenarios").glob("*.yaml"))


#: How a scenario is written without each value-dependent decision (sim.training.DECISIONS).
WITHOUT = {"target_accuracy": lambda data: data["workload"] | {"target_accuracy": None}}


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_every_shipped_scenario_gives_one_timeline_real_or_timing_only(path):
    """Both modes, every strategy: identical event logs, except where timing-only says it
    could not take a listed decision; then the real run without that decision has the
    timing-only log, and the real run with it ends sooner (the decision matters)."""
    scenario = api.resolve(path)
    run = api.run(scenario, timing_only=True)
    assert set(run.skipped) <= set(DECISIONS) and set(WITHOUT) == set(DECISIONS)
    real = api.run(scenario)
    assert real.skipped == []
    if run.skipped:
        data = dump(scenario)
        for decision in run.skipped:
            data["workload"] = WITHOUT[decision](data)
        decided = real
        real = api.run(parse(data))
        assert any(len(a.events) < len(b.events) for a, b in zip(decided.results, real.results))
        for r in run.results:
            assert r.summary.timing_only_skipped.iloc[0] == " ".join(run.skipped)
    for a, b in zip(real.results, run.results):
        assert a.events.equals(b.events), a.strategy
    assert [r.strategy for r in run.results] == [api.label(e) for _, e in api.selected(scenario, None)]
    for r in run.results:
        if scenario.workload.kind == "training":
            assert len(r.extra["training"]) == scenario.workload.steps
            assert r.summary.makespan_s.iloc[0] > 0
        else:
            assert (r.requests.status == "done").sum() == scenario.workload.requests
            assert r.summary.throughput_rps.iloc[0] > 0


def test_same_scenario_and_seed_give_byte_identical_files(tmp_path):
    path = ROOT / "scenarios" / "quickstart.yaml"
    a = api.run(path).write(tmp_path / "a")
    b = api.run(path).write(tmp_path / "b")
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.suffix in (".csv", ".json", ".yaml"))
    assert len(files) > 10
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


def test_a_different_seed_changes_poisson_arrivals():
    path = ROOT / "scenarios" / "quickstart.yaml"
    a = api.run(path, "phone-only", timing_only=True)["phone-only"].requests
    b = api.run(path, "phone-only", timing_only=True, seed=1)["phone-only"].requests
    assert not np.array_equal(a.arrival.to_numpy(), b.arrival.to_numpy())


@pytest.mark.parametrize("microbatches", [1, 3])
def test_a_pipeline_computes_exactly_the_single_device_outputs(microbatches):
    """Same inputs, same kernels, cut in three stages: bitwise-equal logits per request."""
    data = dump(api.resolve(ROOT / "scenarios" / "quickstart.yaml"))
    data["workload"] |= {"requests": 6, "batch": 6}
    data["strategies"] = [
        {"name": "single", "device": "phone"},
        {"name": "pipeline", "devices": ["phone", "tablet", "tv"], "cuts": [2, 5],
         "microbatches": microbatches}]
    run = api.run(parse(data))
    single, pipe = run["single"].outputs, run["pipeline"].outputs
    assert sorted(single) == sorted(pipe) == list(range(6))
    for r in single:
        np.testing.assert_allclose(pipe[r], single[r], rtol=1e-6, atol=1e-6)
        assert single[r].shape == (6, 10)


def test_requests_on_a_device_whose_battery_dies_are_reported_dropped_never_lost():
    """A watch with a tiny battery serves a stream: every request ends as done or dropped."""
    data = dump(api.resolve(ROOT / "scenarios" / "slow_link.yaml"))
    data["devices"][0]["battery"] = "0.002J"
    data["workload"] |= {"requests": 30}
    data["strategies"] = [{"name": "single", "device": "watch"}]
    result = api.run(parse(data), timing_only=True)["single"]
    status = result.requests.status.value_counts().to_dict()
    assert status.get("dropped", 0) > 0 and sum(status.values()) == 30
    events = result.events
    leave = events[events.kind == "leave"]
    assert leave.label.tolist() == ["battery empty"]
    dropped = events[events.kind == "dropped"]
    source = data["workload"]["source"]
    assert (dropped.device == source).all() and dropped.label.str.contains("battery empty").all()
    assert (dropped.t_start <= dropped.t_end).all() and (dropped.t_end >= leave.t_start.iloc[0]).all()
    assert sorted(dropped.request) == sorted(result.requests.query("status == 'dropped'").request)
