"""The training planner re-scores the estimate's fastest few by simulating their numerics
and returns the one that reaches a held-out loss first (`simdl.train_rescore`).

Checked against brute force: each candidate trained to its last step with no early
stop, the ranking rebuilt from the metrics `api.run` writes."""
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from simdl import api, planner
from simdl.errors import PlanError
from simdl.plan.train_search import (
    TO_TARGET,
    numerics,
    reference,
    shortlist,
    train_search,
)
from simdl.scenario import dump, load, parse
from simdl.sim.engine import Simulator
from simdl.sim.training import train
from simdl.train_rescore import Trial, rank_key, train_choice

ROOT = Path(__file__).resolve().parents[1]
UPLINK = ROOT / "scenarios" / "train_slow_uplink.yaml"


def lan(devices, bandwidth, latency="50us"):
    """Each device on its own link of `bandwidth` to one switch."""
    return {"kind": "links", "links": [{"a": d, "b": "sw", "bandwidth": bandwidth,
                                        "latency": latency} for d in devices]}


def world_of(data):
    return api.build(parse(data), timing_only=True, pretrain=False)


@pytest.fixture(scope="module")
def uplink():
    return world_of(dump(load(UPLINK)))


@pytest.fixture(scope="module")
def fast():
    """The same phones, model and workload on a 10 Gb/s LAN: the exchange costs next to
    nothing beside the arithmetic."""
    return world_of(dump(load(UPLINK)) | {"network": lan(["phone0", "phone1", "phone2"],
                                                         "10Gbps")})


@pytest.fixture(scope="module")
def tiny():
    """Three small devices on 20 Mb/s links, a small MLP, 12 steps."""
    return world_of({
        "name": "tiny", "seed": 3, "devices": [{"name": "p", "type": "phone_lowend", "count": 3}],
        "network": lan(["p0", "p1", "p2"], "20Mbps", "5ms"),
        "model": {"name": "mlp", "in_dim": 32, "hidden": 64, "depth": 2, "n_classes": 4},
        "workload": {"kind": "training", "steps": 12, "batch": 96, "lr": 0.1},
        "strategies": ["single_device"]})


def test_a_slow_uplink_is_worth_compressing_a_fast_link_is_not(uplink, fast):
    slow_table, slow = planner.plan_training(uplink)
    _, quick = planner.plan_training(fast)
    assert slow.best.plan.sync.compression != "none"
    assert quick.best.plan.sync.compression == "none"
    # The slow pick beats the lossless reference in simulated time, and says so.
    assert slow.trials[0].time_to_target < slow.reference.time_to_target
    assert "sooner than the reference" in slow_table.why.iloc[0]
    # Both tables show the estimate's and the simulator's step side by side.
    assert {"est_step_s", "sim_step_s", "time_to_target_s"} <= set(slow_table.columns)
    assert list(slow_table.chosen) == ["*"] + [""] * (len(slow_table) - 1)


def brute_force(world, candidates, reference_plan, space):
    """Every candidate trained to its last step, evaluated after every step, without the
    planner's early stop; the target and ranking rebuilt from the metrics frames."""
    load = world.workload
    frames = []
    for e in candidates:
        steps = load.steps if e.plan == reference_plan else math.ceil(space.patience * load.steps)
        w = replace(world, workload=replace(load, steps=steps, eval_every=1))
        frames.append(train(e.plan, w, Simulator(w.devices, w.network)).frame())
    target = frames[[e.plan for e in candidates].index(reference_plan)].eval_loss.min()

    def key(i):
        df = frames[i]
        hit = df[df.eval_loss <= target]
        if hit.empty:
            return (1, df.eval_loss.iloc[-1])
        lossy = candidates[i].plan.sync.compression != "none"
        return (0, hit.t.iloc[0] * (1 + space.margin if lossy else 1))

    order = sorted(range(len(candidates)), key=lambda i: (key(i), i))
    return target, [candidates[i] for i in order], [key(i) for i in order]


def test_the_ranking_is_brute_force_simulations(tiny):
    space = replace(TO_TARGET, top=6)
    choice = train_choice(tiny, space)
    found = train_search(tiny, space)
    ref = reference(found)
    candidates = [ref, *shortlist(found, space.top, without=(numerics(ref.plan),))]
    target, order, keys = brute_force(tiny, candidates, ref.plan, space)
    assert choice.target == target
    assert [t.plan for t in choice.trials] == [e.plan for e in order]
    assert [rank_key(t, space.margin) for t in choice.trials] == keys
    # The simulation overturns the estimate: ranked by seconds per update, it differs.
    by_estimate = sorted(candidates, key=lambda e: e.per_update)
    assert [e.plan for e in by_estimate] != [e.plan for e in order]


def test_a_candidate_that_never_reaches_the_target_ranks_after_all_that_do(tiny):
    """A target below what the reference reaches: the plans that reach it come first by
    time, then the rest by their last loss, the reference among them."""
    full = train_choice(tiny, replace(TO_TARGET, top=6))
    target = sorted(t.final_loss for t in full.trials)[2]  # reached by a few, not all
    choice = train_choice(tiny, replace(TO_TARGET, top=6, target_loss=target, patience=1))
    reached = [t.reached_at is not None for t in choice.trials]
    assert any(reached) and not all(reached)
    assert reached == sorted(reached, reverse=True)
    missed = [t for t in choice.trials if t.reached_at is None]
    assert [t.final_loss for t in missed] == sorted(t.final_loss for t in missed)
    assert all(t.steps == tiny.workload.steps for t in missed)  # patience 1: no more


def trial(time, compression="none", final=0.5, reached=True):
    plan = type("P", (), {"sync": type("S", (), {"compression": compression})()})()
    est = type("E", (), {"plan": plan})()
    return Trial(est, 0.5, 10, 3 if reached else None, time if reached else math.inf,
                 (final,), (time,))


def test_rank_key_margin_and_misses():
    lossless, lossy = trial(1.05), trial(1.0, "int8")
    assert rank_key(lossless, 0.1) < rank_key(lossy, 0.1)  # 5 % sooner is not enough
    assert rank_key(lossy, 0.0) < rank_key(lossless, 0.0)
    assert rank_key(trial(1e9), 0.1) < rank_key(trial(0.1, reached=False, final=0.0), 0.1)
    assert rank_key(trial(1, reached=False, final=0.4), 0) < rank_key(
        trial(1, reached=False, final=0.6), 0)


def test_the_shortlist_holds_an_uncompressed_rival_and_one_plan_per_numerics(uplink):
    found = train_search(uplink, TO_TARGET)
    fastest = sorted(found.ranked, key=lambda e: e.per_update)[:3]
    assert all(e.plan.sync.compression != "none" for e in fastest)  # what the estimate likes
    picked = shortlist(found, 3)
    assert picked[0].plan.sync.compression == "none"
    assert len({numerics(e.plan) for e in picked}) == len(picked) == 3
    ref = reference(found)
    assert numerics(ref.plan) not in {numerics(e.plan) for e in
                                      shortlist(found, 6, without=(numerics(ref.plan),))}


def test_the_same_seed_gives_the_same_pick_and_figures(tiny):
    a, b = (train_choice(tiny, replace(TO_TARGET, top=3)) for _ in range(2))
    assert a.best.plan == b.best.plan and a.target == b.target
    assert [(t.plan, t.losses, t.times) for t in a.trials] == [
        (t.plan, t.losses, t.times) for t in b.trials]


def test_progress_hears_one_line_per_trial(tiny):
    lines = []
    choice = train_choice(tiny, replace(TO_TARGET, top=2), progress=lines.append)
    assert len(lines) == len(choice.trials) and lines[0].startswith("simulated 1/")


@pytest.mark.parametrize("field, value", [("top", 0), ("patience", 0.5), ("margin", -0.1),
                                          ("target_loss", 0.0)])
def test_a_bad_space_names_its_field(tiny, field, value):
    with pytest.raises(PlanError, match=f"space.{field}"):
        train_choice(tiny, replace(TO_TARGET, **{field: value}))


def test_a_reference_that_diverges_asks_for_a_target(tiny):
    load = replace(tiny.workload, lr=math.inf)  # NaN weights after the first step
    with pytest.raises(PlanError, match="space.target_loss"), np.errstate(all="ignore"):
        train_choice(replace(tiny, workload=load), replace(TO_TARGET, top=1))
