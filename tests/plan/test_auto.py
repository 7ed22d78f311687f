"""`name: auto` in a scenario runs the planner's choice, and any plan it finds can be
written as a strategy entry (`strategies.entry`) that makes the same plan again."""
from dataclasses import replace
from pathlib import Path

import pytest

from simdl import api, planner
from simdl.errors import PlanError, ScenarioError
from simdl.plan.baselines import baselines
from simdl.plan.search import search
from simdl.plan.space import Space
from simdl.plan.strategies import entry, explicit
from simdl.plan.train_search import train_search
from simdl.scenario import StrategyEntry, dump, load, parse

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def room():
    sc = load(ROOT / "scenarios/living_room.yaml")
    return sc, api.build(sc, timing_only=True, pretrain=False)


def shape(p):
    return (p.replicas, p.source, p.microbatches, p.dispatch)


def test_auto_runs_the_planners_choice_not_a_fixed_one(room):
    _, world = room
    made = api.plan(world, StrategyEntry(name="auto"), 0)
    assert made.strategy == "auto"
    assert shape(made) == shape(planner.choose(world, "throughput").plan)
    fixed = baselines(world)
    assert shape(made) != shape(fixed["fastest_single"])
    assert set(made.devices) != set(world.devices)  # not every device


def test_auto_passes_objective_and_devices_to_the_planner(room):
    _, world = room
    e = StrategyEntry(name="auto", objective="latency", devices=["phone", "tablet"], top=2)
    space = Space(devices=("phone", "tablet"))
    assert shape(api.plan(world, e, 0)) == shape(planner.choose(world, "latency", space,
                                                                top=2).plan)


def test_a_bare_name_is_a_strategy_entry(room):
    sc, _ = room
    data = dump(sc) | {"strategies": ["auto", {"name": "single", "device": "phone"}]}
    assert [e.name for e in parse(data).strategies] == ["auto", "single"]


def test_a_bad_auto_parameter_names_its_field(room):
    _, world = room
    with pytest.raises(ScenarioError, match=r"strategies\[0\]\.objective"):
        api.plan(world, StrategyEntry(name="auto", objective="speed"), 0)


@pytest.mark.parametrize("space", [Space(), Space(dtypes=("fp32", "fp16"), units=True,
                                                  microbatches=(1, 2), group=2)])
def test_every_ranked_plan_round_trips_through_its_entry(room, space):
    _, world = room
    ranked = search(world, "throughput", space).ranked
    kinds = set()
    for s in ranked:
        written = entry(s.plan)
        kinds.add(written["name"])
        assert shape(api.plan(world, StrategyEntry(**written), 0)) == shape(s.plan)
    assert "explicit" in kinds and len(ranked) > 3


def test_explicit_shares_must_add_up_to_one(room):
    _, world = room
    whole = [{"devices": ["phone"], "start": 0, "stop": len(world.chain)}]
    with pytest.raises(PlanError, match="add up to 1"):
        explicit(world, [{"stages": whole, "share": 0.5}, {"stages": whole, "share": 0.6}],
                 "weighted")
    assert explicit(world, [{"stages": whole}], "split").dispatch == "one"
    assert [r.share for r in explicit(world, [{"stages": whole}] * 2).replicas] == [0.5, 0.5]


def test_training_auto_is_the_training_planners_choice():
    """`auto` in a training scenario runs what `simdl plan` chooses: the first plan to
    reach the held-out loss in simulated time, not the estimate's fastest steps."""
    sc = load(ROOT / "scenarios/train_slow_uplink.yaml")
    world = api.build(sc, timing_only=True, pretrain=False)
    made = api.train_plan(world, StrategyEntry(name="auto"), 0)
    _, choice = planner.plan_training(world, 3)
    assert made == replace(choice.best.plan, strategy="auto")
    assert made.sync.kind != train_search(world).best.plan.sync.kind
