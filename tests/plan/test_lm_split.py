"""Where a generation pipeline cuts and which devices it uses: exo's memory split by hand,
`cuts: auto` and `auto`'s device subset against brute force over every choice."""
import itertools

import pytest
from test_generation import REAL, scenario

from simdl import api
from simdl.errors import PlanError, ScenarioError
from simdl.plan.baselines import baselines, memory_cuts, offered_memory
from simdl.plan.lm_estimate import StepTimes
from simdl.plan.lm_split import best_cuts, best_path
from simdl.plan.plan import Stage
from simdl.scenario import parse
from simdl.world import build

GiB = 2**30
MIXED = [{"name": "phone", "type": "phone_flagship"}, {"name": "laptop", "type": "laptop_gaming"},
         {"name": "desktop", "type": "desktop_rtx4090"}]
L7B = {"name": "llm", "preset": "llama2_7b", "weights": "q4_0"}
L1B = {"name": "llm", "preset": "llama3_2_1b", "weights": "q4_0"}
#: the real decoder's layers hold ~10 KB of weights each: 8 KiB pages any on the phone
SMALL = [{"name": "phone", "type": "phone_flagship", "memory": "8KiB"},
         {"name": "laptop", "type": "laptop"}, {"name": "desktop", "type": "desktop_rtx4090"}]


def world_of(model, devices, strategies=None, **load):
    sc = scenario(model, strategies or [{"name": "single", "device": "phone"}], devices,
                  max_batch=2, **load)
    return sc, build(sc, timing_only=True)


def stages_of(devices, bounds):
    return [Stage((d,), a, b) for d, a, b in zip(devices, bounds, bounds[1:])]


def brute(world, devices, times):
    """Every cut of the blocks over `devices` in order: (seconds, cuts), fastest first."""
    n = len(world.chain)
    return sorted((times.full_step(stages_of(devices, [0, *c, n]), world.workload.source),
                   list(c)) for c in itertools.combinations(range(1, n), len(devices) - 1))


def test_memory_cuts_are_exos_split_by_hand():
    """exo weighs a GPU machine by its VRAM: desktop 22 GiB, laptop 7 GiB, phone 3 GiB of
    RAM. 34 blocks in that order: 23.375, 7.4375, 3.1875 -> 23, 7, 3 and the largest
    remainder (the laptop) +1 = 23, 8, 3; listed the other way round 3, 8, 23."""
    _, world = world_of(L7B, MIXED)
    assert [offered_memory(world, d) for d in ("desktop", "laptop", "phone")] == [
        22 * GiB, 7 * GiB, 3 * GiB]
    assert memory_cuts(world, ["desktop", "laptop", "phone"]) == [23, 31]
    assert memory_cuts(world, ["phone", "laptop", "desktop"]) == [3, 11]
    ring = baselines(world)["memory_proportional"].replicas[0].stages
    assert [(s.device, s.start, s.stop) for s in ring] == [
        ("desktop", 0, 23), ("laptop", 23, 31), ("phone", 31, 34)]


def test_the_pipeline_strategy_takes_cuts_memory():
    sc, world = world_of(L7B, MIXED, [{"name": "pipeline", "devices": ["desktop", "laptop",
                                                                        "phone"],
                                       "cuts": "memory"}])
    plan = api.plan(world, sc.strategies[0], 0)
    assert plan.params["cuts"] == [23, 31]


def test_memory_cuts_refuse_a_device_whose_share_rounds_to_none():
    _, world = world_of(REAL, SMALL)   # 5 blocks; the phone's 8 KiB is no share of them
    with pytest.raises(PlanError, match="phone"):
        memory_cuts(world, ["desktop", "phone"])


@pytest.mark.parametrize("model, devices, order", [
    (REAL, SMALL, ["phone", "laptop"]),
    (REAL, SMALL, ["laptop", "phone", "desktop"]),
    (REAL, SMALL, ["desktop", "laptop", "phone"]),
    (L1B, MIXED, ["phone", "laptop"]),
    (L1B, MIXED, ["laptop", "phone", "desktop"]),
    (L7B, MIXED, ["desktop", "phone"]),
])
def test_auto_cuts_are_the_fastest_of_all_cuts(model, devices, order):
    _, world = world_of(model, devices, prompt=8, tokens=4)
    times = StepTimes(world)
    ranked = brute(world, order, times)
    cuts = best_cuts(world, [(d,) for d in order], times)
    n = len(world.chain)
    got = times.full_step(stages_of(order, [0, *cuts, n]), "phone")
    assert got == pytest.approx(ranked[0][0], rel=1e-12)
    assert ranked[0][0] < ranked[-1][0]  # the cuts matter here


def test_auto_cuts_refuse_when_no_cut_fits_the_cache():
    _, world = world_of(REAL, SMALL, prompt=2000, tokens=100)  # 64 B a token and layer
    with pytest.raises(PlanError, match="cuts"):
        best_cuts(world, [("phone",)])


def test_auto_chooses_the_fastest_ordered_subset_by_brute_force():
    _, world = world_of(REAL, SMALL, prompt=8, tokens=4)
    times = StepTimes(world)
    found, cuts, seconds = best_path(world, ["phone", "laptop", "desktop"], times)
    every = [s for k in (1, 2, 3) for order in itertools.permutations(
        ["phone", "laptop", "desktop"], k) for s, _ in brute(world, list(order), times)[:1]]
    assert seconds == pytest.approx(min(every), rel=1e-12)
    n = len(world.chain)
    assert times.full_step(stages_of(found, [0, *cuts, n]), "phone") == pytest.approx(
        seconds, rel=1e-12)


def test_auto_leaves_the_phone_out_of_the_mixed_pool():
    sc = scenario(L7B, [{"name": "auto"}], MIXED, prompt=64, tokens=32, max_batch=2)
    world = build(sc, timing_only=True)
    plan = api.plan(world, sc.strategies[0], 0)
    assert "phone" not in plan.devices
    times = StepTimes(world)
    chosen = times.full_step(plan.replicas[0].stages, "phone")
    memory = times.full_step(stages_of(["desktop", "laptop", "phone"], [0, 23, 31, 34]), "phone")
    assert chosen < memory


def test_auto_takes_two_boards_when_neither_holds_the_model():
    """Two Raspberry Pi 5 cut to 3 GiB: Llama 3 8B in Q4_0 (4.6 GB) pages from a 450 MB/s
    SSD on either alone, every step; split, each holds its half."""
    pis = [{"name": f"pi{i}", "type": "sbc_rpi5", "memory": "3GiB"} for i in range(2)]
    sc = {"name": "g", "devices": pis, "network": {"kind": "home"},
          "model": {"name": "llm", "preset": "llama3_8b", "weights": "q4_0"},
          "workload": {"kind": "generation", "requests": 1, "source": "pi0", "prompt": 8,
                       "tokens": 3}, "strategies": [{"name": "auto"}]}
    sc = parse(sc)
    world = build(sc, timing_only=True)
    plan = api.plan(world, sc.strategies[0], 0)
    assert sorted(plan.devices) == ["pi0", "pi1"]
    times = StepTimes(world)
    split = times.full_step(plan.replicas[0].stages, "pi0")
    alone = times.full_step([Stage(("pi0",), 0, len(world.chain))], "pi0")
    assert split < alone / 5


@pytest.mark.parametrize("params, field", [
    ({"objective": "latency"}, "objective"), ({"microbatches": [2]}, "microbatches"),
    ({"dtypes": ["fp16"]}, "dtypes"), ({"units": True}, "units")])
def test_generation_auto_refuses_what_it_does_not_choose(params, field):
    sc = scenario(REAL, [{"name": "auto", **params}], SMALL)
    world = build(sc, timing_only=True)
    with pytest.raises((PlanError, ScenarioError), match=field):
        api.plan(world, sc.strategies[0], 0)


def test_hybrid_runs_on_a_full_size_preset():
    sc = scenario(L7B, [{"name": "hybrid", "pipelines": [[["desktop"], ["laptop"]]]}], MIXED)
    world = build(sc, timing_only=True)
    plan = api.plan(world, sc.strategies[0], 0)
    assert [s.device for s in plan.replicas[0].stages] == ["desktop", "laptop"]


def test_hybrid_of_several_pipelines_is_refused_for_generation_naming_the_field():
    sc = scenario(L7B, [{"name": "hybrid", "pipelines": [[["desktop"]], [["laptop"]]]}], MIXED)
    world = build(sc, timing_only=True)
    with pytest.raises(PlanError, match=r"strategies\[0\]\.pipelines"):
        api.plan(world, sc.strategies[0], 0)


def test_balanced_cuts_make_the_busiest_stage_least_busy_by_brute_force():
    _, world = world_of(L1B, MIXED, prompt=8, tokens=4)
    times = StepTimes(world)
    order = ["laptop", "desktop"]
    tables = [(d,) for d in order]
    n = len(world.chain)

    def busiest(cut):
        stages = stages_of(order, [0, cut, n])
        memory = times.memory(stages)
        out = times.lm.decode(world.workload.max_batch,
                              world.workload.max_batch * (8 + 4))[2]
        hop = times.together([("laptop", "desktop", out[cut - 1])])
        load = world.workload
        return max(times.stage(stages[0], memory[0], "decode", load.max_batch,
                               load.max_batch * 12),
                   hop + times.stage(stages[1], memory[1], "decode", load.max_batch,
                                     load.max_batch * 12))

    (cut,) = best_cuts(world, tables, times, balanced=True)
    assert busiest(cut) == min(busiest(c) for c in range(1, n))
    assert best_cuts(world, tables, times) != [cut]   # the sum's best is another cut


def test_generation_auto_serves_the_most_tokens_of_its_candidates_by_simulation():
    """Four equal boards, four sequences at once: the step alone picks one board; the
    simulator finds that a pipeline of boards with a decode group per stage serves more
    tokens per second (prefills spread, the pipeline full)."""
    from simdl.planner import generated_rate
    from simdl.plan.lm_split import best_paths, path_plan
    pis = [{"name": f"pi{i}", "type": "sbc_rpi5"} for i in range(4)]
    sc = scenario({"name": "llm", "preset": "llama3_8b", "weights": "q4_0"},
                  [{"name": "auto"}], pis, requests=4, source="pi0", prompt=32, tokens=16,
                  max_batch=4, arrival={"kind": "closed", "concurrency": 4})
    world = build(sc, timing_only=True)
    plan = api.plan(world, sc.strategies[0], 0)
    paths = best_paths(world, list(world.devices))
    assert len(best_path(world, list(world.devices))[0]) == 1      # the step's choice
    alone = generated_rate(path_plan(world, paths[1]), world)
    assert plan.microbatches > 1 and len(plan.devices) > 1
    assert generated_rate(plan, world) > 1.5 * alone
    every = [generated_rate(path_plan(world, p, k), world) for p in paths.values()
             for k in (1, len(p[0]))]
    assert generated_rate(plan, world) >= max(every)
    bounds = [s.start for s in plan.replicas[0].stages[1:]]
    assert bounds == best_cuts(world, [(d,) for d in plan.devices], balanced=True)
