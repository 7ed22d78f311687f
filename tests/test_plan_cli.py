"""`simdl plan`: the planner's best plans beside the baselines, the winner marked, the
plans written as a scenario `simdl run` accepts; bad flags exit 2 with one line."""
from dataclasses import replace
from pathlib import Path

import pytest

from simdl import api, planner
from simdl.cli import main
from simdl.plan.baselines import BASELINES
from simdl.scenario import load

ROOT = Path(__file__).resolve().parents[1]
ROOM = str(ROOT / "scenarios/living_room.yaml")


@pytest.fixture(scope="module")
def planned():
    world = api.build(load(ROOM), timing_only=True, pretrain=False)
    return world, planner.plan_pool(world, "throughput", 3)


def test_prints_the_baselines_and_marks_the_winner(capsys, planned):
    _, want = planned
    assert main(["plan", ROOM]) == 0
    out = capsys.readouterr().out
    for name in BASELINES:
        assert f" {name} " in out
    (marked,) = [line for line in out.splitlines() if line.startswith("*")]
    assert marked.split()[1] == want.winner
    assert f"chosen: {want.winner}, {want.plans[want.winner].describe()}" in out
    # every device in a ring is beaten by a subset of them
    assert "note: ring_listed uses 5 devices;" in out


def test_the_winner_is_the_simulated_best_of_the_candidates(planned):
    _, want = planned
    rows = want.table[want.table.label.str.startswith("plan-")]
    assert want.winner == rows.loc[rows.sim_throughput_rps.idxmax(), "label"]
    assert want.plans[want.winner] == want.choice.plan


def test_the_mark_follows_the_simulated_choice_not_the_estimates_first(monkeypatch, planned):
    """When simulation reorders the candidates, the one chosen is marked and written first."""
    world, _ = planned
    real = api.planner.choose

    def second(*args, **kwargs):
        c = real(*args, **kwargs)
        return replace(c, plan=c.found.ranked[1].plan)

    monkeypatch.setattr(api.planner, "choose", second)
    got = planner.plan_pool(world, "throughput", 3)
    assert got.winner == "plan-2"
    assert list(got.table.chosen) == ["", "*"] + [""] * (len(got.table) - 2)
    assert planner.planned_scenario(load(ROOM), got)["strategies"][0]["label"] == "auto-best"
    assert got.plans["plan-2"] == got.choice.plan


def test_out_writes_a_scenario_that_runs_the_same_plans(tmp_path, capsys, planned):
    world, want = planned
    out = tmp_path / "planned.yaml"
    assert main(["plan", ROOM, "--out", str(out)]) == 0
    sc = load(out)
    labels = [api.label(e) for e in sc.strategies]
    assert labels[0] == "auto-best" and set(labels[1:]) == set(want.plans) - {want.winner}
    for i, e in enumerate(sc.strategies):
        made = api.plan(world, e, i)
        p = want.plans[want.winner if e.label == "auto-best" else e.label]
        assert (made.replicas, made.microbatches, made.dispatch) == (
            p.replicas, p.microbatches, p.dispatch)
    result = api.run(sc, "auto-best", timing_only=True)
    assert int(result.results[0].summary.requests_completed.iloc[0]) == sc.workload.requests


def test_check_prints_the_error_of_every_plan_scored(capsys, planned):
    _, want = planned
    assert main(["plan", ROOM, "--check"]) == 0
    out = capsys.readouterr().out
    check = out.split("estimator against simulator")[1]
    for label in want.plans:
        assert f"\n{label} " in check


def test_plot_draws_the_front(tmp_path, capsys):
    png = tmp_path / "front.png"
    assert main(["plan", ROOM, "--plot", str(png), "--top", "1"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_training_scenario_prints_the_sync_chosen(capsys):
    scenario = str(ROOT / "scenarios/train_ring_vs_ps.yaml")
    assert main(["plan", scenario, "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "chosen: " in out and "sync" in out and "compression" in out


@pytest.mark.parametrize("flags, field", [
    (["--top", "0"], "--top"),
    (["--out", "."], "--out"),
    (["--plot", "/no/such/folder/x.png"], "--plot"),
])
def test_bad_flags_exit_2_with_one_line(capsys, flags, field):
    assert main(["plan", ROOM, *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"simdl: error: {field}") and len(err.strip().splitlines()) == 1


def test_an_unknown_objective_exits_2(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["plan", ROOM, "--objective", "speed"])
    assert exit.value.code == 2
    assert "--objective" in capsys.readouterr().err


def test_training_refuses_out_with_one_line(tmp_path, capsys):
    scenario = str(ROOT / "scenarios/train_ring_vs_ps.yaml")
    assert main(["plan", scenario, "--out", str(tmp_path / "x.yaml")]) == 2
    assert capsys.readouterr().err.startswith("simdl: error: --out")


def test_units_and_dtypes_widen_the_search_to_a_unit_split(capsys):
    """On the phone with an NPU, a GPU and a CPU, fp16 on its units together beats any
    one unit; without the flags the search stays on fp32 on the fastest unit."""
    phone = str(ROOT / "scenarios/phone_units.yaml")
    assert main(["plan", phone]) == 0
    plain = capsys.readouterr().out
    assert main(["plan", phone, "--units", "--dtypes", "fp32", "fp16"]) == 0
    wide = capsys.readouterr().out
    chosen = [line for line in (plain + wide).splitlines() if line.startswith("chosen:")]
    assert "(npu+gpu" not in chosen[0] and "[fp16]" not in chosen[0]
    assert "(npu+gpu" in chosen[1] and "[fp16]" in chosen[1]


def test_an_unknown_dtype_exits_2(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["plan", ROOM, "--dtypes", "fp8"])
    assert exit.value.code == 2
