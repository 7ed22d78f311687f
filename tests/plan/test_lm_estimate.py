"""The decode-step and prefill estimate (`plan.lm_estimate`) against the simulator: a
lone request's ttft and tpot equal to the bit (1e-9), on one device and 2- and 3-stage
pipelines, a full-size preset and a real decoder_lm, weights paged or not."""
from dataclasses import replace

import pytest
from test_generation import LLM, REAL, scenario, simulate

from simdl import api
from simdl.plan.lm_estimate import StepTimes
from simdl.plan.lm_model import StepCosts

THREE = [{"name": "phone", "type": "phone_flagship"}, {"name": "laptop", "type": "laptop"},
         {"name": "desktop", "type": "desktop_rtx4090"}]
BIG = {"name": "llm", "preset": "llama2_7b", "weights": "q4_0"}   # 3.8 GB: the phone pages
#: the real decoder's layers hold ~10 KB of weights each: 8 KiB pages any on the phone
SMALL_PHONE = [{"name": "phone", "type": "phone_flagship", "memory": "8KiB"}, *THREE[1:]]

CASES = {
    "single": [{"name": "single", "device": "laptop"}],
    "single-source": [{"name": "single", "device": "phone"}],
    "pipeline2": [{"name": "pipeline", "devices": ["laptop", "phone"], "cuts": [9]}],
    "pipeline3": [{"name": "pipeline", "devices": ["desktop", "phone", "laptop"],
                   "cuts": [5, 11]}],
    "pipeline3-source-last": [{"name": "pipeline", "devices": ["laptop", "desktop", "phone"],
                               "cuts": [3, 12]}],
    "tensor_parallel": [{"name": "tensor_parallel", "devices": ["laptop", "desktop"]}],
}
#: cuts of the real decoder's 5 blocks, and of the 7B's 34 giving the phone 32 (it pages)
OWN_CUTS = {"decoder_lm": {"pipeline2": [2], "pipeline3": [1, 3], "pipeline3-source-last": [2, 3]},
            "llama2_7b": {"pipeline2": [2], "pipeline3": [1, 33], "pipeline3-source-last": [1, 2]}}


def strategy_for(model, case):
    """The case's strategy, with the model's own cuts."""
    entry = dict(CASES[case][0])
    own = OWN_CUTS.get(model.get("preset", model["name"]), {})
    if case in own:
        entry["cuts"] = own[case]
    return [entry]


def measured(model, strategy, devices):
    sc = scenario(model, strategy, devices, prompt=8, tokens=4)
    world, sim, made, ev = simulate(sc)
    q = made.seqs[0]
    plan = api.plan(world, sc.strategies[0], 0)
    return world, plan, made, q.first - q.arrival, (q.finish - q.first) / 3


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("model, devices, paged", [
    (LLM, THREE, False), (BIG, THREE, True), (REAL, THREE, False), (REAL, SMALL_PHONE, True),
    ({**LLM, "wire": "fp16"}, THREE, False)],
    ids=["preset", "preset-paged", "real", "real-paged", "preset-fp16-wire"])
def test_a_lone_request_is_the_simulators_to_the_bit(case, model, devices, paged):
    world, plan, made, ttft, tpot = measured(model, strategy_for(model, case), devices)
    assert made.outcome == "completed"
    on_phone = "phone" in plan.devices
    assert any(m.paged > 0 for m in made.memory) == (paged and on_phone)
    est = StepTimes(world).lone(plan, 8, 4)
    assert est.ttft == pytest.approx(ttft, rel=1e-9, abs=0)
    assert est.tpot == pytest.approx(tpot, rel=1e-9, abs=0)


def test_the_estimate_is_not_the_kernels_alone():
    """The hand-overs and the tokens sent back count: a pipeline's step is more than
    its kernels (this fails if `together` is replaced by 0)."""
    world, plan, made, ttft, tpot = measured(LLM, CASES["pipeline2"], THREE)
    times = StepTimes(world)
    stages = plan.replicas[0].stages
    memory = times.memory(stages)
    kernels = sum(times.stage(s, m, "decode", 1, 8) for s, m in zip(stages, memory))
    step = times.step(stages, plan.source, 1, 8)
    assert step > kernels * (1 + 1e-6)
    assert times.back(["laptop"], "phone", "phone", 1) > 0


def test_paging_is_charged_at_the_bandwidth_the_unit_sees():
    """A discrete GPU pages its weights from storage: the extra bytes make the kernel's
    memory term gain paged / storage_bw at the GPU's own (VRAM) bandwidth, not the
    device RAM's."""
    from simdl.hw.devices import make_device
    from simdl.plan.lm_memory import stage_memory
    from simdl.plan.plan import Stage
    spec = make_device("laptop_gaming", {"units.gpu.memory": "2GiB"})
    world, *_ = measured(BIG, CASES["single"], THREE)
    world = replace(world, devices={**world.devices, "laptop": spec})
    (m,) = stage_memory(world, Stage(("laptop",), 0, len(world.chain), unit="gpu"),
                        StepCosts(world.chain))
    assert m.tier == "vram:gpu" and m.paged > 0
    assert m.mem_bw == spec.units["gpu"].mem_bw != spec.mem_bw
    assert m.paged_extra * m.weights / m.mem_bw == pytest.approx(m.paged / m.storage_bw,
                                                                 rel=1e-15)


def test_flows_started_together_share_their_link():
    """Two equal flows over one bottleneck take twice one's bandwidth phase: max-min."""
    world, plan, *_ = measured(LLM, CASES["single"], THREE)
    times = StepTimes(world)
    hop = times.net.hop("laptop", "phone")
    nbytes = 1e7
    one = times.together([("laptop", "phone", nbytes)])
    assert one == pytest.approx(hop.delay + nbytes / hop.rate, rel=1e-12)
    both = times.together([("laptop", "phone", nbytes), ("laptop", "phone", nbytes)])
    assert both == pytest.approx(hop.delay + 2 * nbytes / hop.rate, rel=1e-12)
    assert times.together([("laptop", "laptop", nbytes)]) == 0.0
