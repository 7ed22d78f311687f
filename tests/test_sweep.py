"""`simdl sweep`: its points (grid, random, Latin hypercube), their names and seeds,
resuming, failures recorded, and a table that does not depend on workers or order."""
import hashlib
import json
import math
import os
import subprocess
import sys
from concurrent.futures import Executor, Future
from pathlib import Path

import pytest
import yaml

from simdl import api, sweep
from simdl.cli import main
from simdl.cluster import executor
from simdl.errors import ScenarioError, SimdlError
from simdl.rng import stream
from test_cli import assert_one_clear_line

TINY = {"name": "tiny", "seed": 3,
        "devices": [{"name": "phone", "type": "phone_flagship"}, {"name": "tv", "type": "smart_tv"}],
        "network": {"kind": "home"},
        "model": {"name": "mlp", "in_dim": 4, "hidden": 8, "depth": 1, "n_classes": 2},
        "workload": {"kind": "inference", "requests": 2, "source": "phone"},
        "strategies": [{"name": "single", "label": "phone", "device": "phone"},
                       {"name": "single", "label": "tv", "device": "tv"}]}


def write_sweep(folder: Path, **spec) -> Path:
    (folder / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({"scenario": "tiny.yaml"} | spec))
    return path


class Inline(Executor):
    """Runs each point at once, in this process, and counts them."""

    def __init__(self):
        self.ran = []

    def submit(self, fn, *args, **kwargs):
        self.ran.append(args[0]["seed"])
        future = Future()
        future.set_result(fn(*args, **kwargs))
        return future


# -- the points ----------------------------------------------------------------

def test_a_grid_is_every_combination_the_first_field_slowest(tmp_path):
    path = write_sweep(tmp_path, grid={"workload.batch": [1, 2], "workload.requests": [1, 2, 3]})
    got = [p.params for p in sweep.points(path)]
    assert got == [{"workload.batch": b, "workload.requests": r} for b in (1, 2) for r in (1, 2, 3)]
    assert [p.scenario["workload"]["batch"] for p in sweep.points(path)] == [1, 1, 1, 2, 2, 2]


def test_a_random_sample_is_the_seeds_own_stream_mapped_to_each_range(tmp_path):
    fields = {"workload.arrival.rate": {"low": 2.0, "high": 8.0},
              "workload.batch": {"low": 1, "high": 4, "int": True},
              "devices.tv.memory": ["1GiB", "2GiB"]}
    spec = sweep.Sample(kind="random", n=5, seed=7, fields=fields)
    rng = stream(7, "sweep/sample")
    rate, batch, memory = rng.random(5), rng.random(5), rng.random(5)
    assert sweep.sampled(spec) == [
        {"workload.arrival.rate": 2.0 + 6.0 * rate[i],
         "workload.batch": 1 + math.floor(4 * batch[i]),
         "devices.tv.memory": ["1GiB", "2GiB"][math.floor(2 * memory[i])]} for i in range(5)]
    assert sweep.sampled(spec.model_copy(update={"seed": 8})) != sweep.sampled(spec)


LHS_FIELDS = {"a": {"low": 0.0, "high": 1.0}, "b": {"low": 1.0, "high": 256.0, "log": True},
              "c": {"low": 0, "high": 7, "int": True}, "d": list("abcdefgh")}


def strata(rows):
    """Per field, the stratum (of 8) each row's value falls in."""
    return {"a": [math.floor(r["a"] * 8) for r in rows],
            "b": [math.floor(math.log2(r["b"])) for r in rows],
            "c": [r["c"] for r in rows], "d": ["abcdefgh".index(r["d"]) for r in rows]}


def test_a_latin_hypercube_hits_each_of_its_n_strata_once_per_field():
    rows = sweep.sampled(sweep.Sample(kind="lhs", n=8, seed=1, fields=LHS_FIELDS))
    for field, hit in strata(rows).items():
        assert sorted(hit) == list(range(8)), field
    # the same draw count, independently, misses strata: the test tells the two apart
    rows = sweep.sampled(sweep.Sample(kind="random", n=8, seed=1, fields=LHS_FIELDS))
    assert any(sorted(hit) != list(range(8)) for hit in strata(rows).values())


def test_a_point_is_named_by_the_hash_of_its_canonical_json(tmp_path):
    (point,) = sweep.points(write_sweep(tmp_path))
    identity = {"timing_only": False, "scenario": point.scenario}
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    assert point.name == hashlib.sha256(text.encode()).hexdigest()[:16]
    shuffled = dict(reversed(list(point.scenario.items())))
    assert sweep.Point({}, 3, shuffled, False).name == point.name
    assert sweep.Point({}, 3, point.scenario, True).name != point.name
    # pinned: the same scenario has the same name on any machine, in any process
    literal = {"w": [1.5, "a"], "seed": 3, "name": "x"}
    assert sweep.Point({}, 3, literal, False).name == "99cb8c5b06d8f259"


def test_seeds_come_from_the_base_seed_and_the_values_never_the_order(tmp_path):
    up = sweep.points(write_sweep(tmp_path, grid={"workload.batch": [1, 2]}, seeds=2))
    down = sweep.points(write_sweep(tmp_path, grid={"workload.batch": [2, 1]}, seeds=2))
    assert {p.name: p.seed for p in up} == {p.name: p.seed for p in down}
    assert [p.seed for p in up] == [sweep.derived_seed(3, {"workload.batch": b}, k)
                                    for b in (1, 2) for k in (0, 1)]
    assert len({p.seed for p in up}) == 4
    listed = sweep.points(write_sweep(tmp_path, seeds=[5, 0]))
    assert [p.seed for p in listed] == [5, 0] and listed[0].scenario["seed"] == 5
    (alone,) = sweep.points(write_sweep(tmp_path))
    assert alone.seed == 3


def test_strategies_keeps_only_the_labels_given(tmp_path):
    (point,) = sweep.points(write_sweep(tmp_path, strategies=["tv"]))
    assert [s["label"] for s in point.scenario["strategies"]] == ["tv"]


def test_override_enters_lists_by_index_or_name_and_refuses_a_slip():
    sc = api.override(api.parse(TINY), {"devices.tv.memory": "1GiB", "strategies.0.device": "tv",
                                        "strategies.tv.label": "television", "model.width": 3})
    assert sc.devices[1].memory == "1GiB" and sc.strategies[0].device == "tv"
    assert sc.strategies[1].label == "television" and sc.model.width == 3  # a parameter added
    with pytest.raises(ScenarioError, match=r"^workload\.batchx: 1 is not valid; unknown key"):
        api.override(api.parse(TINY), {"workload.batchx": 1})  # added, then refused by the schema
    with pytest.raises(ScenarioError, match=r"^workload\.arrival\.rate: 'rate' is not valid; "
                       r"one of: kind, concurrency$"):
        api.override(api.parse(TINY), {"workload.arrival.rate.x": 1})  # not added inside
    with pytest.raises(ScenarioError, match=r"^devices\.radio: 'radio' is not valid; an index "
                       r"below 2 or one of: phone, tv$"):
        api.override(api.parse(TINY), {"devices.radio.memory": 1})


# -- bad sweep files -----------------------------------------------------------

@pytest.mark.parametrize("spec, expect", [
    ({"grid": {"workload.batchx": [1]}},
     r"^point 0 \(workload\.batchx=1\) workload\.batchx: 1 is not valid; unknown key; "
     r"allowed keys: kind, requests"),
    ({"grid": {"workload.batch": [2, 0]}},
     r"^point 1 \(workload\.batch=0\) workload\.batch: 0 is not valid; input should be greater"),
    ({"grid": {"model.hiddn": [4]}}, r"^model\.hiddn: 4 is not valid; unknown parameter; allowed: in_dim, hidden"),
    ({"grids": {}}, r"^grids: \{\} is not valid; unknown key"),
    ({"sample": {"kind": "lhs", "n": 2, "fields": {"workload.batch": {"low": 3, "high": 1}}}},
     r"^sample\.fields\.workload\.batch.*: .* is not valid; high \(1\.0\) must be above low"),
    ({"strategies": ["radio"]}, r"^strategies\[0\]: 'radio' is not valid; choose one of: phone, tv$"),
    ({"seeds": 0}, r"^seeds"),
])
def test_a_bad_sweep_file_is_one_line_and_exit_2_naming_the_field(tmp_path, capsys, spec, expect):
    path = write_sweep(tmp_path, **spec)
    assert_one_clear_line(["sweep", str(path), "--out", str(tmp_path / "out")], expect, capsys)
    assert not (tmp_path / "out").exists()  # nothing ran


def test_a_folder_that_is_not_a_sweeps_is_refused(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert_one_clear_line(["sweep", str(write_sweep(tmp_path)), "--out", str(tmp_path / "out"),
                           "--workers", "1"], r"^--out: .* a new or empty folder, or a sweep's",
                          capsys)


# -- running, resuming, failing ------------------------------------------------

def test_a_resumed_sweep_runs_only_the_points_not_done(tmp_path):
    pts = sweep.points(write_sweep(tmp_path, grid={"workload.requests": [1, 2, 3]}, seeds=2),
                       timing_only=True)
    out = tmp_path / "out"
    first = Inline()
    sweep.execute(pts, out, first)
    table = (out / "sweep.csv").read_bytes()
    assert len(first.ran) == 6
    gone = dead_pid()
    for p in pts[1:3]:  # as if killed: two folders never renamed into place, no marker
        left = out / "points" / f".{p.name}.incomplete-{gone}-x"
        os.rename(out / "points" / p.name, left)
        (left / sweep.MARKER).unlink()
    again = Inline()
    outcome = sweep.execute(pts, out, again)
    assert sorted(again.ran) == sorted(p.seed for p in pts[1:3])
    assert (outcome.ran, outcome.skipped, outcome.failed) == (2, 4, 0)
    assert (out / "sweep.csv").read_bytes() == table
    assert sorted(os.listdir(out / "points")) == sorted(p.name for p in pts)  # leftovers gone


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_failing_point_is_recorded_and_the_sweep_goes_on(tmp_path, capsys):
    path = write_sweep(tmp_path, grid={"devices.tv.memory": ["2GiB", "100B"]})
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--workers", "1", "--quiet"]) == 1
    frame = sweep.table(out, sweep.points(path))
    failed = frame[frame.status == "failed"]
    assert sorted(frame.status) == ["done", "done", "failed"]
    assert failed["devices.tv.memory"].tolist() == ["100B"] and failed.strategy.tolist() == [""]
    assert failed.error.iloc[0].startswith("PlanError: strategies[1]")
    assert set(frame[frame.status == "done"].strategy) == {"phone", "tv"}
    marker = json.loads((out / "points" / failed.point.iloc[0] / sweep.MARKER).read_text())
    assert marker["status"] == "failed" and marker["error"] == failed.error.iloc[0]
    assert "1 failed" in capsys.readouterr().out


def test_the_table_is_the_same_on_one_or_two_workers_or_in_reverse(tmp_path):
    pts = sweep.points(write_sweep(tmp_path, grid={"workload.requests": [1, 2]}, seeds=2))
    tables = []
    for name, workers in (("one", 1), ("two", 2)):
        with executor(None, workers) as pool:
            sweep.execute(pts, tmp_path / name, pool)
        tables.append((tmp_path / name / "sweep.csv").read_bytes())
    sweep.execute(pts[::-1], tmp_path / "reversed", Inline())
    tables.append((tmp_path / "reversed" / "sweep.csv").read_bytes())
    assert tables[0] == tables[1] == tables[2]
    header = tables[0].decode().splitlines()[0].split(",")
    assert header[:7] == ["workload.requests", "seed", "point", "strategy", "status", "error",
                          "plan"]
    assert len(tables[0].decode().splitlines()) == 1 + 4 * 2


def test_files_all_keeps_each_points_whole_run(tmp_path):
    pts = sweep.points(write_sweep(tmp_path, strategies=["phone"]), timing_only=True)
    sweep.execute(pts, tmp_path / "out", Inline(), files=True)
    folder = tmp_path / "out" / "points" / pts[0].name
    assert {"done.json", "summary.csv", "scenario.resolved.yaml"} <= set(os.listdir(folder))
    assert (folder / "run" / "phone" / "events.csv").is_file()


def test_the_notebook_sweep_returns_the_table(tmp_path):
    path = write_sweep(tmp_path, grid={"workload.requests": [1, 2]})
    frame = sweep.sweep(path, tmp_path / "out", workers=1, timing_only=True)
    assert frame.equals(sweep.table(tmp_path / "out", sweep.points(path, timing_only=True)))
    assert len(frame) == 4 and set(frame["workload.requests"]) == {1, 2}


class Lost(Inline):
    """A worker that dies on the first point it is given (the others run)."""

    def submit(self, fn, *args, **kwargs):
        if not self.ran:
            self.ran.append(None)
            future = Future()
            future.set_exception(BrokenPipeError("worker lost"))
            return future
        return super().submit(fn, *args, **kwargs)


def test_the_notebook_sweep_says_when_a_lost_worker_left_points_undone(tmp_path, monkeypatch):
    from contextlib import contextmanager

    import simdl.cluster

    @contextmanager
    def lost(cluster, workers):
        yield Lost()

    monkeypatch.setattr(simdl.cluster, "executor", lost)
    path = write_sweep(tmp_path, grid={"workload.requests": [1, 2]})
    with pytest.raises(SimdlError, match="1 did not finish, a worker was lost"):
        sweep.sweep(path, tmp_path / "out", timing_only=True)
    monkeypatch.undo()
    frame = sweep.sweep(path, tmp_path / "out", workers=1, timing_only=True)  # resumes
    assert len(frame) == 4


def test_the_shipped_example_sweeps_are_valid():
    examples = sorted((Path(__file__).resolve().parents[1] / "scenarios" / "sweeps").glob("*.yaml"))
    assert examples
    for path in examples:
        assert path.read_text().startswith("# "), f"{path.name} opens with its question"
        pts = sweep.points(path, timing_only=True)
        assert len({p.name for p in pts}) == len(pts) > 1
