"""The generation workload: prefill then decode with a KV cache, continuous batching,
memory tiers and out-of-memory outcomes, timed by the roofline (closed forms by hand)."""
import numpy as np
import pytest

from simdl import api
from simdl.hw.devices import best_unit, kernel_time
from simdl.nn import llm_shapes
from simdl.nn.llm_shapes import TOKEN_BYTES, preset
from simdl.plan.estimate import transfer_time
from simdl.scenario import parse
from simdl.sim import generation
from simdl.sim.engine import Simulator
from simdl.world import build

S = preset("llama3_2_1b")


def scenario(model, strategies, devices=None, **load):
    devices = devices or [{"name": "phone", "type": "phone_flagship"},
                          {"name": "laptop", "type": "laptop"}]
    return parse({"name": "g", "devices": devices, "network": {"kind": "home"}, "model": model,
                  "workload": {"kind": "generation", "requests": 1, "source": "phone",
                               "prompt": 8, "tokens": 3} | load,
                  "strategies": strategies})


def simulate(sc, timing_only=True, k=0):
    world = build(sc, timing_only=timing_only)
    p = api.plan(world, sc.strategies[k], k)
    sim = Simulator(world.devices, world.network, timing_only=timing_only)
    made = generation.execute(p, world, sim)
    return world, sim, made, sim.log.frame()


def kernels(events, tag):
    k = events[(events.kind == "compute") & events.label.str.endswith(tag)]
    return k


def block_time(world, device, cost_flops, cost_bytes):
    spec = world.devices[device]
    return kernel_time(spec, best_unit(spec), cost_flops, cost_bytes)


LLM = {"name": "llm", "preset": "llama3_2_1b", "weights": "q4_0"}


def test_a_decode_step_is_the_roofline_by_hand_and_memory_bound():
    """Each block of the one decode step (the prompt's 8 tokens cached; the prefill's
    token is its input) takes max(FLOPs / rate, bytes / mem_bw) + overhead over the
    free share; the layers are memory-bound: their weights and cache over mem_bw."""
    world, sim, made, ev = simulate(scenario(LLM, [{"name": "single", "device": "phone"}],
                                             tokens=2))
    step = kernels(ev, "step 0").reset_index(drop=True)
    costs = llm_shapes.decode_costs(S, 1, 8, "q4_0")
    assert len(step) == len(costs)
    spec = world.devices["phone"]
    unit = spec.units[best_unit(spec)]
    for row, c in zip(step.itertuples(), costs):
        by_hand = ((max(c.fwd_flops / (unit.peak["fp32"] * unit.efficiency),
                        c.fwd_bytes / spec.mem_bw) + unit.overhead) / (1 - spec.background))
        assert row.t_end - row.t_start == pytest.approx(by_hand, rel=1e-12)
    layer = costs[1]
    weights = llm_shapes.weight_bytes("q4_0", S.attention_weights() + 3 * S.dim * S.ffn_hidden)
    cache = 9 * 2 * S.n_kv_heads * S.head_dim * 4          # read 8, append 1
    assert layer.fwd_bytes - weights - cache - 2 * S.dim * 4 < 20 * S.dim * 4  # + activations
    assert layer.fwd_flops / (unit.peak["fp32"] * unit.efficiency) < layer.fwd_bytes / spec.mem_bw


def test_ttft_and_tpot_on_one_device_by_hand():
    """One request alone on the source: TTFT = its prefill's kernels; TPOT = the mean of
    its two decode steps (contexts 8 and 9)."""
    world, sim, made, ev = simulate(scenario(LLM, [{"name": "single", "device": "phone"}]))
    pre = llm_shapes.prefill_costs(S, 1, 8, "q4_0")
    ttft = sum(block_time(world, "phone", c.fwd_flops, c.fwd_bytes) for c in pre)
    steps = [sum(block_time(world, "phone", c.fwd_flops, c.fwd_bytes)
                 for c in llm_shapes.decode_costs(S, 1, ctx, "q4_0")) for ctx in (8, 9)]
    q = made.seqs[0]
    assert q.first - q.arrival == pytest.approx(ttft, rel=1e-12)
    assert (q.finish - q.first) / 2 == pytest.approx(sum(steps) / 2, rel=1e-12)
    assert made.outcome == "completed"


def test_ttft_and_tpot_on_a_two_stage_pipeline_by_hand():
    """phone (blocks 0..8) then laptop (9..17): prefill on the phone, its 8 hidden states
    to the laptop, the rest there, the token back; each step likewise with one state."""
    sc = scenario(LLM, [{"name": "pipeline", "devices": ["phone", "laptop"], "cuts": [9]}])
    world, sim, made, ev = simulate(sc)

    def stage_time(costs, flops, nbytes):
        return (sum(block_time(world, "phone", flops[b], nbytes[b]) for b in range(9))
                + sum(block_time(world, "laptop", flops[b], nbytes[b]) for b in range(9, 18)))

    pre = llm_shapes.prefill_costs(S, 1, 8, "q4_0")
    act = 4 * S.dim
    ttft = (stage_time(pre, [c.fwd_flops for c in pre], [c.fwd_bytes for c in pre])
            + transfer_time(world, "phone", "laptop", 8 * act)
            + transfer_time(world, "laptop", "phone", TOKEN_BYTES))
    tpot = 0.0
    for ctx in (8, 9):
        dc = llm_shapes.decode_costs(S, 1, ctx, "q4_0")
        tpot += (stage_time(dc, [c.fwd_flops for c in dc], [c.fwd_bytes for c in dc])
                 + transfer_time(world, "phone", "laptop", act)
                 + transfer_time(world, "laptop", "phone", TOKEN_BYTES))
    q = made.seqs[0]
    assert q.first - q.arrival == pytest.approx(ttft, rel=1e-9)
    assert (q.finish - q.first) / 2 == pytest.approx(tpot / 2, rel=1e-9)
    sent = ev[ev.kind == "transfer"].nbytes.sum()
    assert sent == 8 * act + TOKEN_BYTES + 2 * (act + TOKEN_BYTES)


def test_two_sequences_decoded_together_take_one_steps_time_not_two():
    """Two requests at t=0, max_batch 2: after the first step (the second still in its
    prefill) they share every step; a shared step's layer reads the weights once, so it
    takes the roofline of decode(batch 2, both contexts), not twice decode(batch 1)."""
    sc = scenario(LLM, [{"name": "single", "device": "phone"}], requests=2, tokens=4,
                  max_batch=2, arrival={"kind": "trace", "times": [0.0, 0.0]})
    world, sim, made, ev = simulate(sc)
    steps = ev[(ev.kind == "compute") & ev.label.str.contains("step")]
    assert steps.label.str.split(" step ").str[1].nunique() == 4  # 1 + 2 shared + 1, not 6
    shared = kernels(ev, "step 1").reset_index(drop=True)
    # step 1: seq 0 caches its prompt and the token fed at step 0, seq 1 its prompt
    from simdl.plan.lm_model import StepCosts
    flops, nbytes, _ = StepCosts(world.chain).decode(2, 9 + 8)
    for row, f, b in zip(shared.itertuples(), flops, nbytes):
        assert row.t_end - row.t_start == pytest.approx(block_time(world, "phone", f, b),
                                                        rel=1e-12)
    alone = llm_shapes.decode_costs(S, 1, 9, "q4_0")[1]
    one = block_time(world, "phone", alone.fwd_flops, alone.fwd_bytes)
    layer = shared.iloc[1].t_end - shared.iloc[1].t_start
    assert one < layer < 1.01 * one
    single = simulate(scenario(LLM, [{"name": "single", "device": "phone"}], requests=2,
                               tokens=4, arrival={"kind": "trace", "times": [0.0, 0.0]}))[3]
    alone_steps = single[(single.kind == "compute") & single.label.str.contains("step")]
    assert alone_steps.label.str.split(" step ").str[1].nunique() == 6


def test_decode_costs_are_affine_in_each_sequences_context():
    """What makes charging a batch of different contexts by their sum exact."""
    from simdl.plan.lm_model import ShapeModel, StepCosts
    costs = StepCosts(ShapeModel(S, "q4_0"))
    flops, nbytes, _ = costs.decode(3, 3 * 40)
    direct = llm_shapes.decode_costs(S, 3, 40, "q4_0")
    for f, b, c in zip(flops, nbytes, direct):
        assert f == pytest.approx(c.fwd_flops, rel=1e-12)
        assert b == pytest.approx(c.fwd_bytes, rel=1e-12)


def test_a_plan_that_cannot_hold_the_kv_cache_is_an_out_of_memory_outcome():
    """64 sequences of 1024 tokens at 2 kv x 8 heads x 64 x 4 B x 16 layers a token:
    4 GiB of cache on a phone with 3 GiB: every request fails `out_of_memory`, and the
    outcome names the phone and the 1 GiB missing."""
    sc = scenario(LLM, [{"name": "single", "device": "phone"}], requests=3, prompt=1000,
                  tokens=24, max_batch=64)
    world, sim, made, ev = simulate(sc)
    need = 64 * 1024 * 16 * 2 * 8 * 64 * 4
    short = need - world.devices["phone"].memory
    assert short == 2**30
    assert made.outcome == f"out_of_memory: phone short {short:.0f} B (ram)"
    failed = ev[ev.kind == "failed"]
    assert failed.label.tolist() == ["out_of_memory"] * 3
    result = api.run(sc, timing_only=True).results[0]
    s = result.summary.iloc[0]
    assert (s.requests_failed, s.failed_out_of_memory, s.outcome) == (3, 3, made.outcome)


def test_weights_that_do_not_fit_are_paged_from_storage_every_step():
    """Llama 3 8B in fp16 (16 GB) on a laptop with 8 GiB: what does not fit beside the
    cache is read at storage_bw each pass, charged in each block's kernel as bytes
    x mem_bw / storage_bw (the read adds paged / storage_bw to the memory term)."""
    model = {"name": "llm", "preset": "llama3_8b", "weights": "fp16"}
    sc = scenario(model, [{"name": "single", "device": "laptop"}], tokens=2)
    world, sim, made, ev = simulate(sc)
    spec = world.devices["laptop"]
    s8 = preset("llama3_8b")
    weights = world.chain.param_bytes()
    kv_peak = 10 * 2 * s8.n_kv_heads * s8.head_dim * 4 * s8.n_layers
    paged = weights - (spec.memory - kv_peak)
    (m,) = made.memory
    assert m.paged == pytest.approx(paged, rel=1e-12) and m.tier == "ram"
    step = kernels(ev, "step 0").reset_index(drop=True)
    costs = llm_shapes.decode_costs(s8, 1, 8, "fp16")
    layer = costs[1]
    share = paged / weights * layer.param_bytes
    unit = spec.units[best_unit(spec)]
    by_hand = ((layer.fwd_bytes / spec.mem_bw + share / spec.storage_bw + unit.overhead)
               / (1 - spec.background))
    assert step.iloc[1].t_end - step.iloc[1].t_start == pytest.approx(by_hand, rel=1e-9)
    result = api.run(sc, timing_only=True).results[0]
    assert result.summary.weights_paged.iloc[0].startswith("laptop: ")
    held = ev[(ev.kind == "alloc") & ev.label.str.startswith("weights")].nbytes.sum()
    assert held == pytest.approx(weights - paged, rel=1e-12)


REAL = {"name": "decoder_lm", "vocab": 40, "dim": 16, "n_layers": 3, "n_heads": 4,
        "n_kv_heads": 2, "ffn_hidden": 24}


def test_real_tokens_of_a_pipeline_equal_the_single_device_and_recomputing():
    """Greedy tokens: pipeline (3 stages) = single device = argmax of the whole sequence
    recomputed by `chain.forward` at every step (no cache)."""
    strategies = [{"name": "single", "device": "phone"},
                  {"name": "pipeline", "devices": ["phone", "laptop", "tv"], "cuts": [2, 4]}]
    devices = [{"name": "phone", "type": "phone_flagship"}, {"name": "laptop", "type": "laptop"},
               {"name": "tv", "type": "smart_tv"}]
    sc = scenario(REAL, strategies, devices, requests=3, prompt=5, tokens=6, max_batch=2,
                  arrival={"kind": "trace", "times": [0.0, 0.0, 0.0001]})
    outs = []
    for k in (0, 1):
        world, sim, made, ev = simulate(sc, timing_only=False, k=k)
        outs.append([made.seqs[r].out for r in range(3)])
    assert outs[0] == outs[1]
    from simdl.rng import stream
    prompts = stream(sc.seed, "prompts").integers(0, 40, size=(3, 5))
    for r in range(3):
        seq = list(prompts[r])
        for _ in range(6):
            logits = world.chain.forward(np.array([seq]))[0]
            seq.append(int(logits[0, -1].argmax()))
        assert outs[0][r] == seq[5:]


def test_real_and_timing_only_give_one_timeline_and_runs_repeat():
    sc = scenario(REAL, [{"name": "pipeline", "devices": ["phone", "laptop"], "cuts": [2]}],
                  requests=4, max_batch=2, arrival={"kind": "poisson", "rate": 50})
    a = api.run(sc).results[0]
    b = api.run(sc, timing_only=True).results[0]
    c = api.run(sc, timing_only=True).results[0]
    assert a.events.equals(b.events) and b.events.equals(c.events)
    assert b.extra["tokens"].equals(c.extra["tokens"])
    assert (a.extra["tokens"].status == "completed").all()


def test_a_full_size_preset_never_runs_real_numerics():
    """Through `api.run` it runs its numbers only and says so; the executor refuses it."""
    sc = scenario(LLM, [{"name": "single", "device": "phone"}])
    result = api.run(sc).results[0]
    assert result.summary.numerics.iloc[0] == "none: full-size preset, shapes only"
    world = build(sc)
    p = api.plan(world, sc.strategies[0], 0)
    with pytest.raises(Exception, match="timing-only"):
        generation.execute(p, world, Simulator(world.devices, world.network))
