"""Atomic files, byte-stable formats, run ids, and a whole run folder written twice."""
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml

import simdl
from simdl.errors import ScenarioError
from simdl.report import store
from simdl.report.result import RUN_FILES, Result, write_comparison
from simdl.report.store import atomic_write, new_run_id, write_csv, write_json
from simdl.sim.recorder import COLUMNS
from stand_ins import Joules, Spec

ROWS = [
    (0.0, 0.0, "alloc", "phone", "memory", "weights", 0.0, 1000.0, -1, -1),
    (0.0, 0.5, "compute", "phone", "cpu", "r0", 1e9, 0.0, 0, -1),
    (0.5, 0.75, "transfer", "phone", "tv", "act r0", 0.0, 4000.0, 0, -1),
    (0.75, 1.0, "compute", "tv", "gpu", "r0", 1e9, 0.0, 0, -1),
    (0.0, 1.0, "request", "phone", "", "phone>tv", 0.0, 0.0, 0, -1),
    (0.5, 1.5, "failed", "tv", "", "device_left", 0.0, 0.0, 1, -1),
]


def result(strategy="pipeline"):
    return Result.from_log(
        scenario="home", strategy=strategy, seed=3,
        events=pd.DataFrame.from_records(ROWS, columns=list(COLUMNS)),
        specs={"phone": Spec("phone", ["cpu"]), "tv": Spec("tv", ["gpu"])},
        energy={"phone": Joules(1.0, 0.5, 0.1), "tv": Joules(2.0, 0.25, 0.0)},
        link_stats=[{"resource": "wifi", "bytes": 8000.0, "busy_time": 0.25}],
        duration=1.5, resolved={"name": "home", "seed": 99, "devices": ["phone", "tv"]})


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_atomic_write_replaces_the_whole_file(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    atomic_write(target, "old")
    atomic_write(target, b"new bytes")
    assert target.read_bytes() == b"new bytes"
    assert [p.name for p in target.parent.iterdir()] == ["a.txt"]


def test_a_failed_write_leaves_no_partial_file_and_no_temp(tmp_path, monkeypatch):
    def fail(_fd):
        raise OSError("disk full")

    monkeypatch.setattr(store.os, "fsync", fail)  # after the bytes went to the temp file
    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "new.csv", "a,b\n1,2\n")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "kept.json"
    atomic_write(target, "{}\n")

    def fail(_src, _dst):
        raise KeyboardInterrupt  # even an interrupt cleans up

    monkeypatch.setattr(store.os, "replace", fail)
    with pytest.raises(KeyboardInterrupt):
        write_json({"a": 1}, target)
    assert target.read_text() == "{}\n"
    assert [p.name for p in tmp_path.iterdir()] == ["kept.json"]


def test_csv_floats_use_a_fixed_format_and_unix_line_ends(tmp_path):
    df = pd.DataFrame({"x": [0.1 + 0.2, 1 / 3, 2.0], "name": ["a", "b", ""]})
    text = write_csv(df, tmp_path / "t.csv").read_bytes()
    assert text == b"x,name\n0.3,a\n0.333333333,b\n2,\n"


def test_json_is_sorted_compact_and_ends_with_a_newline(tmp_path):
    text = write_json({"b": [1, 2.5], "a": "x"}, tmp_path / "t.json").read_text()
    assert text == '{"a":"x","b":[1,2.5]}\n'
    with pytest.raises(ValueError):
        write_json({"a": float("nan")}, tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()


def test_run_ids_count_up_per_strategy_without_clock(tmp_path):
    assert new_run_id(tmp_path, "home", "pipeline") == "pipeline-0001"
    assert new_run_id(tmp_path, "home", "pipeline") == "pipeline-0002"
    assert new_run_id(tmp_path, "home", "single") == "single-0001"
    (tmp_path / "home" / "pipeline-0007").mkdir()
    assert new_run_id(tmp_path, "home", "pipeline") == "pipeline-0008"
    assert new_run_id(tmp_path, "office", "pipeline") == "pipeline-0001"
    assert (tmp_path / "home" / "pipeline-0008").is_dir()  # claimed


def test_run_ids_without_a_strategy_are_plain_numbers(tmp_path):
    assert new_run_id(tmp_path / "home") == "0001"
    (tmp_path / "home" / "pipeline-0005").mkdir()  # another strategy's ids do not count
    assert new_run_id(tmp_path / "home") == "0002"
    assert sorted(p.name for p in (tmp_path / "home").iterdir()) == ["0001", "0002",
                                                                    "pipeline-0005"]


def test_run_ids_refuse_names_that_are_not_one_folder(tmp_path):
    with pytest.raises(ScenarioError, match="scenario.name: '../up'"):
        new_run_id(tmp_path, "../up", "single")


def test_a_run_folder_holds_every_view(tmp_path):
    folder = result().write(tmp_path / "run")
    assert sorted(p.name for p in folder.iterdir()) == sorted(RUN_FILES)
    assert (folder / "requests.csv").read_text().split("\n") == [
        "request,class,status,cause,attempts,arrival,start,finish,latency,memory_wait,"
        "plan_wait,path",
        "0,,completed,,1,0,0,1,1,0,0,phone>tv",
        "1,,failed,device_left,1,0.5,,,,0,0,",  # a failed request: no finish, no path
        ""]
    events = pd.read_csv(folder / "events.csv")
    assert list(events.columns) == list(COLUMNS) and len(events) == len(ROWS)


def test_faults_csv_is_written_only_when_a_device_left(tmp_path):
    """The tv leaves at 1.25 and never returns; no request completes after that, so none
    recovered from the leave."""
    plain = result().write(tmp_path / "plain")
    assert not (plain / "faults.csv").exists()
    left = Result.from_log(
        scenario="home", strategy="pipeline", seed=3,
        events=pd.DataFrame.from_records(
            ROWS + [(1.25, 1.25, "leave", "tv", "", "battery empty", 0.0, 0.0, -1, -1)],
            columns=list(COLUMNS)),
        specs={"phone": Spec("phone", ["cpu"]), "tv": Spec("tv", ["gpu"])},
        energy={}, link_stats=[], duration=1.5, resolved={"name": "home"})
    folder = left.write(tmp_path / "left")
    assert sorted(p.name for p in folder.iterdir()) == sorted(RUN_FILES + ("faults.csv",))
    assert (folder / "faults.csv").read_text() == (
        "device,left_at,why,back_at,recovery_s\ntv,1.25,battery empty,,\n")


def test_the_resolved_scenario_gets_version_and_run_seed_first(tmp_path):
    text = (result().write(tmp_path) / "scenario.resolved.yaml").read_text()
    data = yaml.safe_load(text)
    assert list(data) == ["simdl_version", "seed", "name", "devices"]
    assert (data["simdl_version"], data["seed"]) == (simdl.__version__, 3)


def test_writing_twice_gives_byte_identical_files(tmp_path):
    a = files(result().write(tmp_path / "a"))
    b = files(result().write(tmp_path / "b"))
    assert a == b


def test_extra_tables_are_written_beside_the_others(tmp_path):
    r = result()
    r.extra["profile"] = pd.DataFrame({"step": [0, 1], "loss": [2.5, 1.25]})
    assert (r.write(tmp_path) / "profile.csv").read_text() == "step,loss\n0,2.5\n1,1.25\n"


def test_a_comparison_is_one_row_per_result(tmp_path):
    folder = write_comparison([result("single"), result("pipeline")], tmp_path)
    table = pd.read_csv(folder / "summary.csv")
    assert table["strategy"].tolist() == ["single", "pipeline"]
    assert (folder / "comparison.png").stat().st_size > 5000
    assert not [p for p in os.listdir(folder) if p.endswith(".tmp")]
