"""Several jobs on one pool (simdl.jobs): jobs apart run as each alone, jobs on one
unit queue by job priority then arrival, jobs.csv's slowdown is shared / alone, a
bad job entry is one line naming it, and the run is deterministic."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simdl import jobs
from simdl.errors import SimdlError
from simdl.scenario_jobs import load_any, parse_jobs

ROOT = Path(__file__).resolve().parents[1]


def mlp(hidden):
    return {"name": "mlp", "in_dim": 16, "hidden": hidden, "depth": 2, "n_classes": 4}


def serve(name, priority, device, times, hidden=32):
    """An inference job: requests at `times` on `device`, which is also the source."""
    return {"name": name, "priority": priority, "model": mlp(hidden),
            "workload": {"kind": "inference", "requests": len(times), "batch": 4,
                         "arrival": {"kind": "trace", "times": times}, "source": device},
            "strategy": {"name": "single", "device": device}}


def scenario(job_list, devices=("phone",), network=None):
    return parse_jobs({"name": "jobs", "seed": 3,
                       "devices": [{"name": d, "type": "phone_midrange"} for d in devices],
                       "network": network or {"kind": "home"}, "jobs": job_list})


def latencies(result):
    req = result.requests
    return dict(zip(req.request, req.latency))


def test_jobs_apart_run_exactly_as_each_alone():
    """Disjoint devices and links: a pipeline's requests and a data-parallel training's
    losses are bit for bit those of each job run alone."""
    links = [{"a": "a0", "b": "a1", "bandwidth": "100Mbps", "latency": "2ms"},
             {"a": "b0", "b": "b1", "bandwidth": "50Mbps", "latency": "1ms"}]
    served = serve("served", 0, "a0", [0.0, 0.001, 0.002, 0.01], hidden=64)
    served["strategy"] = {"name": "pipeline", "devices": ["a0", "a1"]}
    trained = {"name": "trained", "priority": 1, "model": mlp(32),
               "workload": {"kind": "training", "steps": 4, "batch": 32, "lr": 0.1,
                            "data_on": ["b0", "b1"]},
               "strategy": {"name": "allreduce", "workers": ["b0", "b1"]}}
    sc = scenario([served, trained], ("a0", "a1", "b0", "b1"), {"kind": "links", "links": links})
    run = jobs.run(sc, timing_only=False)
    shared, alone = run.shared, run.alone
    assert len(shared[0].requests) == 4
    assert latencies(shared[0]) == latencies(alone[0])
    pd.testing.assert_frame_equal(shared[0].requests, alone[0].requests)
    np.testing.assert_array_equal(shared[1].extra["training"].loss,
                                  alone[1].extra["training"].loss)
    np.testing.assert_array_equal(shared[1].extra["training"].t, alone[1].extra["training"].t)
    assert set(run.table.slowdown) == {1.0}
    for together, by_itself in zip(shared, alone):  # every row (kernels, flows, memory) its own
        pd.testing.assert_frame_equal(together.events, by_itself.events)


def alone_latency(job):
    return latencies(jobs.run(scenario([job]), timing_only=True).shared[0])


def test_one_unit_serves_the_lower_job_priority_first():
    """B (priority 1) sends two requests at t=0, A (priority 0) one at t0 while B's first
    runs: B's first ends at b, then A goes before B's second, which is queued earlier."""
    t0 = 1e-5
    a = alone_latency(serve("a", 0, "phone", [0.0], hidden=48))[0]
    b = alone_latency(serve("b", 0, "phone", [0.0], hidden=96))[0]
    assert b > t0  # A arrives while B's first request runs
    run = jobs.run(scenario([serve("b", 1, "phone", [0.0, 0.0], hidden=96),
                             serve("a", 0, "phone", [t0], hidden=48)]), timing_only=True)
    got_b, got_a = latencies(run["b"]), latencies(run["a"])
    assert got_b[0] == b
    assert got_a[0] == pytest.approx(b + a - t0, rel=1e-12, abs=0)
    assert got_b[1] == pytest.approx(b + a + b, rel=1e-12, abs=0)


def test_equal_priorities_queue_in_arrival_order():
    t0 = 1e-5
    a = alone_latency(serve("a", 0, "phone", [0.0], hidden=48))[0]
    b = alone_latency(serve("b", 0, "phone", [0.0], hidden=96))[0]
    run = jobs.run(scenario([serve("b", 1, "phone", [0.0, 0.0], hidden=96),
                             serve("a", 1, "phone", [t0], hidden=48)]), timing_only=True)
    got_b, got_a = latencies(run["b"]), latencies(run["a"])
    assert got_b[0] == b
    assert got_b[1] == pytest.approx(2 * b, rel=1e-12, abs=0)
    assert got_a[0] == pytest.approx(2 * b + a - t0, rel=1e-12, abs=0)


def test_a_first_job_at_the_same_instant_is_served_as_alone():
    """Both at t=0, A (priority 0) first: A's latency is its own; B's is A's compute and
    then its own."""
    a = alone_latency(serve("a", 0, "phone", [0.0], hidden=48))[0]
    b = alone_latency(serve("b", 0, "phone", [0.0], hidden=96))[0]
    run = jobs.run(scenario([serve("a", 0, "phone", [0.0], hidden=48),
                             serve("b", 1, "phone", [0.0], hidden=96)]), timing_only=True)
    assert latencies(run["a"])[0] == a
    assert latencies(run["b"])[0] == pytest.approx(a + b, rel=1e-12, abs=0)


def test_slowdown_is_shared_over_alone():
    run = jobs.run(scenario([serve("b", 1, "phone", [0.0, 0.0], hidden=96),
                             serve("a", 0, "phone", [1e-5], hidden=48)]), timing_only=True)
    table = run.table.set_index(["job", "figure"])
    for i, job in enumerate(("b", "a")):
        shared, alone = run.shared[i].summary.iloc[0], run.alone[i].summary.iloc[0]
        for figure in ("latency_p50_ms", "latency_p95_ms"):
            assert table.loc[(job, figure), "slowdown"] == shared[figure] / alone[figure]
        assert (table.loc[(job, "throughput_rps"), "slowdown"]
                == alone["throughput_rps"] / shared["throughput_rps"])
    assert table.loc[("a", "latency_p50_ms"), "slowdown"] > 1.0


@pytest.mark.parametrize("change, where", [
    ({"priority": -1}, "jobs[1].priority"),
    ({"name": "a/b"}, "jobs[1].name"),
    ({"name": "B"}, "jobs[1].name"),
    ({"strategy": {"name": "nope"}}, "jobs[1].strategy.name"),
    ({"workload": {"kind": "inference", "requests": 1, "source": "tv"}},
     "jobs[1].workload.source"),
    ({"strategy": {"name": "single", "device": "phone", "sweep": {"device": ["phone"]}}},
     "jobs[1].strategy.sweep"),
    ({"model": {"name": "mlp", "in_dim": 16, "hidden": 8, "depth": 1, "n_classes": 4,
                "width": 3}}, "jobs[1].model.width"),
])
def test_a_bad_job_entry_is_one_line_naming_it(change, where):
    entries = [serve("b", 1, "phone", [0.0]), serve("a", 0, "phone", [0.0]) | change]
    with pytest.raises(SimdlError) as err:
        jobs.run(scenario(entries), timing_only=True)
    assert err.value.where == where
    assert "\n" not in str(err.value)


def test_jobs_beside_a_top_level_model_is_refused():
    data = {"name": "x", "devices": [{"name": "phone", "type": "phone_midrange"}],
            "network": {"kind": "home"}, "model": mlp(8), "jobs": [serve("a", 0, "phone", [0.0])]}
    with pytest.raises(SimdlError) as err:
        parse_jobs(data)
    assert err.value.where == "model"


def test_a_generation_job_apart_runs_as_alone_and_beside_one_it_is_slowed():
    """A language model (a full-size preset: its numbers only, even in a real run) on
    its own device generates exactly as alone; sharing the phone's GPU with a camera
    job of priority 0, both are slowed (a prefill's blocks keep the unit, so the
    camera's kernels wait too), and jobs.csv says by how much."""
    talk = {"name": "talk", "priority": 1,
            "model": {"name": "llm", "preset": "llama3_2_1b", "weights": "q4_0"},
            "workload": {"kind": "generation", "requests": 2, "source": "b", "prompt": 8,
                         "tokens": 4, "max_batch": 2,
                         "arrival": {"kind": "trace", "times": [0.0005, 0.0005]}},
            "strategy": {"name": "single", "device": "b"}}
    camera = serve("camera", 0, "a", [k * 0.002 for k in range(100)], hidden=512)
    apart = jobs.run(scenario([camera, talk], ("a", "b")), timing_only=False)
    pd.testing.assert_frame_equal(apart.shared[1].extra["tokens"], apart.alone[1].extra["tokens"])
    pd.testing.assert_frame_equal(apart.shared[1].events, apart.alone[1].events)
    talk["workload"]["source"] = talk["strategy"]["device"] = "a"
    together = jobs.run(scenario([camera, talk], ("a",)), timing_only=True)
    finish = together.shared[1].extra["tokens"].finish
    assert (finish > together.alone[1].extra["tokens"].finish).all()
    table = together.table.set_index(["job", "figure"])
    for key in (("talk", "ttft_p50_ms"), ("talk", "tpot_p50_ms"), ("camera", "latency_p50_ms")):
        row = table.loc[key]
        assert row.slowdown == row.shared / row.alone > 1, key
    row = table.loc[("talk", "tokens_per_s")]
    assert row.slowdown == row.alone / row.shared > 1


def test_the_scenario_writes_the_same_files_twice(tmp_path):
    sc = load_any(ROOT / "scenarios" / "camera_and_federated.yaml")
    first = jobs.run(sc, timing_only=True).write(tmp_path / "one")
    second = jobs.run(sc, timing_only=True).write(tmp_path / "two")
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert {"jobs.csv", "devices.csv", "camera", "federated"} <= {f.parts[0] for f in files}
    for f in files:
        if f.suffix != ".png":
            assert (first / f).read_bytes() == (second / f).read_bytes(), f
    table = pd.read_csv(first / "jobs.csv")
    assert list(table.job.unique()) == ["camera", "federated"]


def test_every_jobs_key_is_documented():
    """The `jobs` row lists a job's keys exactly; every top-level key has its row."""
    from test_readme import section

    from simdl.scenario_jobs import JobEntry, JobsScenario
    keys = section("Scenario keys")
    listed = keys.split("`jobs` |")[1].split("`{")[1].split("}`")[0]
    assert listed.split(", ") == list(JobEntry.model_fields)
    for name in JobsScenario.model_fields:
        assert f"`{name}`" in keys, name


def test_the_shipped_jobs_scenario_gives_one_timeline_real_or_timing_only():
    """As tests/test_runs.py checks every one-job scenario: both modes, each job's rows
    alike, together and alone."""
    sc = load_any(ROOT / "scenarios" / "camera_and_federated.yaml")
    real, timed = jobs.run(sc), jobs.run(sc, timing_only=True)
    for a, b in zip(real.shared + real.alone, timed.shared + timed.alone):
        assert a.events.equals(b.events), a.strategy
    assert (real.shared[0].requests.status == "completed").sum() == sc.jobs[0].workload.requests
    assert len(real.shared[1].extra["training"]) == sc.jobs[1].workload.steps
    assert real.table.slowdown.iloc[1] > 1.0  # the camera waits behind training kernels


def test_each_jobs_rows_go_to_its_own_log_and_all_to_the_pool():
    """Kernels, flows and memory through a job's view are its rows; a reservation that
    waited is logged to its own job when another job's release grants it."""
    from simdl.hw.devices import make_device
    from simdl.hw.topologies import home
    from simdl.sim.engine import Simulator
    from simdl.sim.shared import JobSim

    devices = {d: make_device("phone_midrange", {}, where=d) for d in ("phone", "tv")}
    sim = Simulator(devices, home(devices))
    a, b = JobSim(sim, 0), JobSim(sim, 1)
    whole = devices["phone"].memory

    def job_a():
        held = a.reserve({"phone": whole}, "a-arena")
        yield a.compute("phone", 1e6, label="a-kernel")
        yield a.transfer("phone", "tv", 1e3, label="a-flow")
        a.release(held)

    def job_b():
        wanted = b.reserve({"phone": whole}, "b-arena")
        yield wanted.wait
        b.allocate("phone", 10.0, "b-bytes", under=wanted)
        b.free("phone", 10.0, "b-bytes", under=wanted)
        b.release(wanted)

    sim.process(job_a())
    sim.process(job_b())
    sim.run()
    rows_a = [(r[2], r[5]) for r in a.log.rows]
    rows_b = [(r[2], r[5]) for r in b.log.rows]
    assert rows_a == [("compute", "a-kernel"), ("transfer", "a-flow")]
    assert rows_b == [("memwait", "b-arena"), ("alloc", "b-bytes"), ("alloc", "b-bytes")]
    assert sorted(sim.log.rows) == sorted(a.log.rows + b.log.rows)
