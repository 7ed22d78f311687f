"""Generation (issue 17): several decode groups in flight through a pipeline
(`microbatches`), the wire dtype of activations between devices, memory over time.
Expectations are closed forms by hand."""
from dataclasses import replace

import numpy as np
import pytest

from simdl import api
from simdl.errors import SimdlError
from simdl.nn import kv
from simdl.nn.llm_shapes import TOKEN_BYTES
from simdl.plan.lm_model import to_wire
from simdl.scenario import parse
from simdl.sim import generation, generation_plan
from simdl.sim.engine import Simulator
from simdl.world import build

REAL = {"name": "decoder_lm", "vocab": 40, "dim": 16, "n_layers": 2, "n_heads": 4,
        "n_kv_heads": 2, "ffn_hidden": 24}
OVERHEAD = 20e-6     # the laptop GPU's launch overhead: a kernel's whole time here
LATENCY = 1e-3       # each link's latency: a transfer's whole time here (to 1e-12)
#: A laptop whose kernels take their launch overhead only (rates made huge) and whose
#: speed does not depend on load: a block is OVERHEAD, a stage of two blocks 2 OVERHEAD.
FLAT = {"type": "laptop", "units.cpu": None, "units.gpu.peak.fp32": "1e18PFLOPS",
        "mem_bw": "1e18PB/s",
        "background": 0}


def world_of(names, strategies, model=REAL, timing_only=True, **load):
    links = [{"a": a, "b": b, "bandwidth": 1e15, "latency": LATENCY}
             for i, a in enumerate(names) for b in names[i + 1:]]
    sc = parse({"name": "g", "devices": [FLAT | {"name": n} for n in names],
                "network": {"kind": "links", "links": links, "overhead": 0}, "model": model,
                "workload": {"kind": "generation", "requests": 2, "source": names[0],
                             "prompt": 4, "tokens": 6, "max_batch": 2,
                             "arrival": {"kind": "trace", "times": [0.0] * 4}} | load,
                "strategies": strategies})
    return sc, build(sc, timing_only=timing_only)


def run(sc, world, k=0, timing_only=True, groups=1):
    """Strategy k's plan run with `groups` decode groups (its `microbatches`: set here,
    as `plan.strategies` bounds a pipeline's micro-batches by `batch`, 1 here)."""
    sim = Simulator(world.devices, world.network, timing_only=timing_only)
    p = replace(api.plan(world, sc.strategies[k], k), microbatches=groups)
    generation_plan.check_plan(p, world)
    made = generation.execute(p, world, sim)
    return made, sim.log.frame()


def pipe(**extra):
    return {"name": "pipeline", "devices": ["a", "b"], "cuts": [2]} | extra


@pytest.mark.parametrize("k", [1, 2])
def test_two_decode_groups_keep_a_two_stage_pipeline_full_by_the_closed_form(k):
    """Stage time T = 2 OVERHEAD on each device, hand-over and token back L each, cycle
    C = 2T + 2L. Prefills: r0 on a [0, T), on b [T+L, 2T+L): first token 2T+2L; r1 on a
    [T, 2T), on b [2T+L, 3T+L): 3T+2L. K = 2: each request its own group, whose steps
    never wait (the other group is on the other stage): r finishes at first + 5C.
    K = 1: r1 joins at the step after r0's first (r0's step 0 runs alone), so it
    finishes one step after r0: 2T+2L + 6C."""
    sc, world = world_of(["a", "b"], [pipe()])
    made, ev = run(sc, world, groups=k)
    t, lat = 2 * OVERHEAD, LATENCY
    c = 2 * t + 2 * lat
    first = [2 * t + 2 * lat, 3 * t + 2 * lat]
    finish = ([first[0] + 5 * c, first[1] + 5 * c] if k == 2 else
              [first[0] + 5 * c, first[0] + 6 * c])
    for r in (0, 1):
        assert made.seqs[r].first == pytest.approx(first[r], rel=1e-9)
        assert made.seqs[r].finish == pytest.approx(finish[r], rel=1e-9)
    assert [made.seqs[r].group for r in (0, 1)] == ([0, 1] if k == 2 else [0, 0])
    steps = ev[(ev.kind == "compute") & ev.label.str.contains(" step ")]
    assert steps.label.str.split(" step ").str[1].nunique() == (10 if k == 2 else 6)


def test_a_sequence_joins_the_group_holding_the_fewest():
    """K = 2, max_batch 2, three requests at t=0 with 6, 2 and 3 tokens: r0 -> group 0,
    r1 -> group 1; r1 ends after one step, r2 is admitted then and joins group 1 (0
    sequences against group 0's 1), not group 0 as dealing in turn would."""
    sc, world = world_of(["a", "b"], [pipe()], requests=3)
    world = replace(world, workload=replace(world.workload, token_counts=(6, 2, 3)))
    made, _ = run(sc, world, groups=2)
    assert [made.seqs[r].group for r in range(3)] == [0, 1, 1]
    made3, _ = run(*world_of(["a", "b"], [pipe()], requests=3, max_batch=3), groups=2)
    assert [made3.seqs[r].group for r in range(3)] == [0, 1, 0]   # a tie: the lowest


def test_a_group_whose_sequences_ended_takes_the_next_to_join():
    """K = 2, max_batch 2, four requests at t=0 with 2, 9, 2 and 3 tokens: r0 -> group 0,
    r1 -> group 1. r0 ends after one step; r2 joins group 0 (0 against 1); r2 ends after
    one step; r3 joins group 0 again, whose sequences have all ended (0 against group
    1's 1), not group 1 as counting ended sequences would have it."""
    sc, world = world_of(["a", "b"], [pipe()], requests=4)
    world = replace(world, workload=replace(world.workload, token_counts=(2, 9, 2, 3)))
    made, _ = run(sc, world, groups=2)
    assert [made.seqs[r].group for r in range(4)] == [0, 1, 0, 0]


@pytest.mark.parametrize("k", [2, 3])
def test_real_tokens_of_decode_groups_equal_one_devices(k):
    """More groups than stages is allowed; the greedy tokens are one device's."""
    strategies = [{"name": "single", "device": "a"}, pipe()]
    sc, world = world_of(["a", "b"], strategies, timing_only=False, requests=4, max_batch=3,
                         tokens=5)
    outs = [[run(sc, world, i, False, groups)[0].seqs[r].out for r in range(4)]
            for i, groups in ((0, 1), (1, k))]
    assert outs[0] == outs[1] and all(len(o) == 5 for o in outs[0])


# -- the wire dtype -----------------------------------------------------------------


@pytest.mark.parametrize("wire,width", [("fp32", 4), ("fp16", 2), ("bf16", 2)])
def test_pipeline_hand_over_is_dim_values_in_the_wire_dtype_per_sequence(wire, width):
    """A decode step of 2 sequences hands 2 x dim values over, `width` bytes each; the
    prefill of one 4-token prompt 4 x dim."""
    sc, world = world_of(["a", "b"], [pipe()], REAL | {"wire": wire})
    _, ev = run(sc, world)
    acts = ev[(ev.kind == "transfer") & ev.label.str.startswith("act ")]
    by = dict(zip(acts.label, acts.nbytes))
    assert by["act prefill r0"] == 4 * 16 * width
    assert by["act step 1"] == 2 * 16 * width   # both sequences in the step


def test_handed_over_activations_are_rounded_through_the_wire_dtype_for_real():
    """One request prefilled on a -> b in fp16: the cache of b's first block is what
    that block makes of stage a's output rounded to fp16, bit for bit (and not of the
    unrounded output)."""
    sc, world = world_of(["a", "b"], [pipe()], REAL | {"wire": "fp16"},
                         timing_only=False, requests=1, tokens=1)
    made, _ = run(sc, world, timing_only=False)
    from simdl.rng import stream
    prompt = stream(sc.seed, "prompts").integers(0, 40, size=(1, 4))
    h = kv.prefill(world.chain, prompt, [kv.Sequence()], start=0, stop=2)
    for x, same in ((to_wire(h, "fp16"), True), (h, False)):
        ref = kv.Sequence()
        kv.prefill(world.chain, x, [ref], start=2, stop=3)
        got = made.seqs[0].state.caches[2][0].k
        assert np.array_equal(got, ref.caches[2][0].k) is same
    assert to_wire(h, "fp16").dtype == h.dtype
    assert np.array_equal(to_wire(h, "fp16"), h.astype(np.float16).astype(h.dtype))


def test_bf16_wire_keeps_the_top_16_bits_rounded_to_nearest_even():
    x = np.array([[1.0, 1 + 2**-8, 1 + 3 * 2**-8, -2.5 + 2**-10]], np.float32)
    assert to_wire(x, "bf16").tolist() == [[1.0, 1.0, 1 + 2**-6, -2.5]]


@pytest.mark.parametrize("model", [REAL, {"name": "llm", "preset": "llama3_2_1b"}])
def test_an_unknown_wire_dtype_is_refused_naming_the_field_and_the_choices(model):
    with pytest.raises(SimdlError, match=r"model\.wire: 'int4' .*fp32, fp16, bf16"):
        world_of(["a", "b"], [pipe()], model | {"wire": "int4"})


# -- memory over time -----------------------------------------------------------------


def test_memory_trace_of_one_request_on_one_device_by_hand():
    """Weights W placed at 0; at arrival (0.5) the prompt's 8 tokens of cache; a token
    more at each of the 2 decode steps; all freed at the end. k = 2 layers x 2 (k, v) x
    2 kv heads x 4 dims x 4 B a token."""
    sc, world = world_of(["a"], [{"name": "single", "device": "a"}], requests=1, prompt=8,
                         tokens=3, arrival={"kind": "trace", "times": [0.5]})
    made, ev = run(sc, world)
    w, k = world.chain.param_bytes(), 2 * 2 * 2 * 4 * 4
    step1 = ev[(ev.kind == "compute") & ev.label.str.endswith("step 1")].t_start.min()
    q = made.seqs[0]
    assert made.memory_trace == [(0.0, "a", "ram", w, 0.0), (0.5, "a", "ram", w, 8.0 * k),
                                 (q.first, "a", "ram", w, 9.0 * k),
                                 (step1, "a", "ram", w, 10.0 * k),
                                 (q.finish, "a", "ram", w, 0.0)]


@pytest.mark.parametrize("strategy", [pipe(), {"name": "tensor_parallel",
                                              "devices": ["a", "b", "c"]}])
def test_memory_trace_peaks_at_kv_peak_and_ends_empty(strategy):
    sc, world = world_of(["a", "b", "c"], [strategy], requests=4, max_batch=3,
                         arrival={"kind": "poisson", "rate": 300})
    made, _ = run(sc, world, groups=2)
    assert made.outcome == "completed"
    for m in made.memory:
        rows = [r for r in made.memory_trace if r[1] == m.device]
        assert max(r[4] for r in rows) == made.kv_peak[m.device] > 0
        assert rows[-1][4] == 0.0 and rows[0][:5] == (0.0, m.device, m.tier, m.resident, 0.0)
        assert [r[0] for r in rows] == sorted({r[0] for r in rows})  # one row per time


def test_memory_trace_records_a_vram_tier():
    """A discrete GPU's VRAM holds the weights and cache: recorded, not allocated in RAM."""
    sc = parse({"name": "g", "devices": [{"name": "pc", "type": "desktop_rtx4090"}],
                "network": {"kind": "home"}, "model": REAL,
                "workload": {"kind": "generation", "requests": 2, "source": "pc"},
                "strategies": [{"name": "single", "device": "pc"}]})
    made, ev = run(sc, build(sc, timing_only=True))
    tiers = {r[2] for r in made.memory_trace}
    assert tiers == {made.memory[0].tier} and made.memory[0].tier.startswith("vram:")
    assert max(r[4] for r in made.memory_trace) == made.kv_peak["pc"] > 0
    assert (ev.kind == "alloc").sum() == 0


def test_token_bytes_unchanged_by_the_wire():
    """Tokens are int64 whatever the wire: the prompt and sampled tokens stay 8 B each."""
    sc, world = world_of(["a", "b"], [pipe(devices=["b", "a"])], REAL | {"wire": "fp16"})
    _, ev = run(sc, world)
    prompt = ev[(ev.kind == "transfer") & ev.label.str.startswith("prompt ")]
    assert prompt.nbytes.tolist() == [4 * TOKEN_BYTES] * 2


def test_a_scenario_asks_for_decode_groups_with_microbatches():
    """`microbatches` on a generation pipeline is the number of decode groups (more than
    a request's batch of 1), bounded by max_batch; an inference plan keeps its bound."""
    pipe = {"name": "pipeline", "devices": ["a", "b"], "cuts": [2]}
    sc, world = world_of(["a", "b"], [pipe | {"microbatches": 2}])
    assert api.plan(world, sc.strategies[0], 0).microbatches == 2
    sc, world = world_of(["a", "b"], [pipe | {"microbatches": 3}])
    with pytest.raises(SimdlError, match=r"microbatches: 3 .*max_batch \(2\)"):
        generation_plan.check_plan(api.plan(world, sc.strategies[0], 0), world)
    inference = parse({"name": "i", "devices": [{"name": "a", "type": "laptop"},
                                                {"name": "b", "type": "laptop"}],
                       "network": {"kind": "home"}, "model": {"name": "mlp"},
                       "workload": {"kind": "inference", "requests": 1, "batch": 1,
                                    "source": "a"},
                       "strategies": [pipe | {"cuts": [1], "microbatches": 2}]})
    with pytest.raises(SimdlError, match="at most the batch size"):
        api.plan(build(inference, timing_only=True), inference.strategies[0], 0)
