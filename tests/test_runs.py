"""End to end: every shipped scenario runs; runs are deterministic; splitting keeps the numbers."""
from pathlib import Path

import numpy as np
import pytest

from simdl import api
from simdl.scenario import dump, parse
from simdl.scenario_jobs import is_jobs
from simdl.sim.training import DECISIONS
from simdl.yamlfile import read

ROOT = Path(__file__).resolve().parents[1]
#: The one-job scenarios (tests/test_jobs.py runs those with `jobs:`).
SCENARIOS = sorted(p for p in (ROOT / "scenarios").glob("*.yaml") if not is_jobs(read(p)))


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
            assert (r.requests.status == "completed").sum() == scenario.workload.requests
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


def battery_run(source, battery, retries=None):
    """slow_link's watch (with a tiny `battery`) serves 30 requests alone, in a closed
    loop, for `source`; `retries` None keeps the default budget."""
    data = dump(api.resolve(ROOT / "scenarios" / "slow_link.yaml"))
    data["devices"][0]["battery"] = battery
    data["workload"] |= {"requests": 30, "source": source}
    if retries is not None:
        data["workload"]["retries"] = retries
    data["strategies"] = [{"name": "single", "device": "watch"}]
    result = api.run(parse(data), timing_only=True)["single"]
    events = result.events
    (died,) = events.loc[events.kind == "leave", "t_start"]
    assert events.loc[events.kind == "leave", "label"].tolist() == ["battery empty"]
    # every request ends exactly once: submitted = completed + failed
    ends = events[events.kind.isin(["request", "failed"])]
    assert sorted(ends.request) == list(range(30))
    assert (ends.device == source).all() and (ends.t_start <= ends.t_end).all()
    s = result.summary.iloc[0]
    assert s.requests_completed + s.requests_failed == 30
    assert s.requests_failed == (result.requests.status == "failed").sum()
    return result, died


@pytest.mark.parametrize("retries", [None, 0])
def test_a_request_on_a_device_whose_battery_dies_is_retried_or_fails_never_lost(retries):
    """The phone asks; the watch serves until its battery dies mid-request. With the
    default budget that request is retried on the pool re-planned without the watch
    (the phone) and completes; with `retries: 0` it fails, cause device_left, at the
    instant the watch died. Either way the requests after it are served by the phone."""
    result, died = battery_run("phone", "0.02J", retries)
    reqs, events = result.requests, result.events
    hit = reqs[(reqs.arrival < died) & ~(reqs.finish < died)]
    assert len(hit) == 1
    r = int(hit.request.iloc[0])
    before, after = reqs[reqs.request < r], reqs[reqs.request > r]
    assert len(before) > 0 and (before.status == "completed").all()
    assert (before.path == "watch").all() and (before.finish < died).all()
    assert (after.status == "completed").all() and (after.path == "phone").all()
    replan = events[events.kind == "replan"]
    assert replan.t_end.tolist() == [died] and replan.label.tolist() == ["phone"]
    mine = hit.iloc[0]
    if retries is None:
        assert (mine.status, mine.cause, mine.attempts, mine.path) == (
            "completed", "", 2, "phone")
        assert mine.finish > died
        retry = events[events.kind == "retry"]
        assert retry[["t_end", "label", "request"]].values.tolist() == [[died, "device_left", r]]
        assert (result.summary.requests_failed.iloc[0], result.summary.retries.iloc[0]) == (0, 1)
    else:
        assert (mine.status, mine.cause, mine.attempts, mine.path) == (
            "failed", "device_left", 1, "")
        failed = events[events.kind == "failed"]
        assert failed[["t_end", "label", "request"]].values.tolist() == [[died, "device_left", r]]
        assert (events.kind == "retry").sum() == 0
        s = result.summary.iloc[0]
        assert (s.requests_failed, s.failed_device_left, s.retries) == (1, 1, 0)


def test_when_the_device_whose_battery_dies_is_the_source_what_it_asked_fails():
    """The watch asks and serves: once its battery is empty, nothing can take its
    requests or give it an answer; each fails, cause source_left, none is lost, and the
    one in flight is not retried (nobody is left to ask again)."""
    result, died = battery_run("watch", "0.002J")
    reqs = result.requests
    failed = reqs[reqs.status == "failed"]
    assert len(failed) > 0 and (failed.cause == "source_left").all()
    assert (failed.attempts == 1).all() and not (result.events.kind == "retry").any()
    assert (reqs.loc[reqs.status == "completed", "finish"] < died).all()
    assert (result.events.loc[result.events.kind == "failed", "t_end"] == died).all()
    assert result.summary.failed_source_left.iloc[0] == len(failed)

def test_building_again_reuses_the_last_draw_of_samples_and_a_new_seed_draws_anew():
    from simdl.world import build
    sc = api.resolve(Path("scenarios/quickstart.yaml"))
    first, again = build(sc), build(sc)
    assert again.data is first.data and again.train_data is first.train_data
    assert not first.data.x.flags.writeable  # shared, so nobody may write into it
    other = build(api.resolve(sc, seed=sc.seed + 1))
    assert other.data is not first.data
    assert not np.array_equal(other.data.x, first.data.x)
    assert np.array_equal(build(sc).data.x, first.data.x)  # drawn again, the same bits
