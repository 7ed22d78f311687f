"""Prompt and output lengths of a generation workload: a fixed count, or drawn once per
request (uniform or lognormal) from the seed's own stream, reproducible and bounded."""
import numpy as np
import pytest

from simdl import api
from simdl.budget import BudgetError
from simdl.errors import ScenarioError
from simdl.rng import stream
from simdl.scenario import dump, parse
from simdl.sim import generation
from simdl.sim.engine import Simulator
from simdl.world import build, lengths

LLM = {"name": "llm", "preset": "llama3_2_1b", "weights": "q4_0"}
UNIFORM = {"dist": "uniform", "low": 2, "high": 5}
LOGNORMAL = {"dist": "lognormal", "median": 6, "sigma": 1.5, "max": 9}


def scenario(seed=0, **load):
    return parse({"name": "g", "seed": seed,
                  "devices": [{"name": "phone", "type": "phone_flagship"}],
                  "network": {"kind": "home"}, "model": LLM,
                  "workload": {"kind": "generation", "requests": 40, "source": "phone",
                               "max_batch": 4} | load,
                  "strategies": [{"name": "single", "device": "phone"}]})


def test_uniform_draws_are_the_seeds_stream_inclusive_and_reproducible():
    load = scenario(seed=3, tokens=UNIFORM).workload
    drawn = lengths(load.tokens, 400, 3, "tokens")
    by_hand = stream(3, "tokens").integers(2, 6, size=400)  # [2, 6) is [2, 5]
    assert drawn == tuple(int(v) for v in by_hand)
    assert set(drawn) == {2, 3, 4, 5}  # both ends drawn, nothing outside
    assert lengths(load.tokens, 400, 3, "tokens") == drawn
    assert lengths(load.tokens, 400, 4, "tokens") != drawn


def test_lognormal_draws_are_rounded_and_kept_within_1_and_max():
    load = scenario(prompt=LOGNORMAL).workload
    drawn = lengths(load.prompt, 2000, 7, "prompt")
    raw = stream(7, "prompt").lognormal(np.log(6), 1.5, size=2000)
    assert drawn == tuple(int(v) for v in np.clip(np.rint(raw), 1, 9))
    assert min(drawn) == 1 and max(drawn) == 9  # sigma 1.5 reaches both ends
    assert set(drawn) == set(range(1, 10))


def test_a_fixed_count_is_every_requests_count():
    assert lengths(scenario(tokens=7).workload.tokens, 5, 0, "tokens") == (7,) * 5


def test_the_world_draws_prompt_and_tokens_from_their_own_streams():
    world = build(scenario(seed=2, prompt=UNIFORM, tokens=UNIFORM), timing_only=True)
    load = world.workload
    assert load.prompt_lengths == tuple(int(v) for v in
                                        stream(2, "prompt").integers(2, 5, size=40, endpoint=True))
    assert load.token_counts == tuple(int(v) for v in
                                      stream(2, "tokens").integers(2, 5, size=40, endpoint=True))
    assert load.prompt_lengths != load.token_counts
    assert (load.prompt, load.tokens) == (max(load.prompt_lengths), max(load.token_counts))


def run(sc):
    world = build(sc, timing_only=True)
    p = api.plan(world, sc.strategies[0], 0)
    sim = Simulator(world.devices, world.network, timing_only=True)
    return world, generation.execute(p, world, sim), sim.log.frame()


def test_each_request_emits_exactly_its_drawn_count_and_prefills_its_drawn_prompt():
    world, made, ev = run(scenario(prompt=UNIFORM, tokens=UNIFORM))
    load = world.workload
    assert made.outcome == "completed"
    assert [made.seqs[r].emitted for r in range(40)] == list(load.token_counts)
    sent = ev[(ev.kind == "transfer") & ev.label.str.startswith("prompt r")]
    assert sent.empty  # the source runs the model: its prompt moves nowhere
    for r in (0, 1, 2):  # the prefill's cost is its own prompt's length
        pre = ev[(ev.kind == "compute") & ev.label.str.endswith(f"prefill r{r}")]
        alone = run(scenario(prompt=load.prompt_lengths[r], tokens=1, requests=1))[2]
        by_itself = alone[(alone.kind == "compute") & alone.label.str.endswith("prefill r0")]
        assert (pre.t_end - pre.t_start).sum() == pytest.approx(
            (by_itself.t_end - by_itself.t_start).sum(), rel=1e-12)


def test_the_kv_cache_peak_is_the_drawn_lengths_not_the_most():
    """One sequence at a time: the peak is the largest prompt + tokens - 1 of any request
    as drawn, which is below the bound when no request draws both maxima."""
    world, made, _ = run(scenario(seed=1, prompt=UNIFORM, tokens=UNIFORM, max_batch=1))
    load = world.workload
    held = max(p + t - 1 for p, t in zip(load.prompt_lengths, load.token_counts))
    assert held < load.prompt + load.tokens - 1  # seed 1: no request draws 5 and 5
    mem = made.memory[0]
    assert made.kv_peak["phone"] == pytest.approx(held * mem.kv_token, rel=1e-12)


@pytest.mark.parametrize("tokens, where, allowed", [
    ({"dist": "normal"}, "workload.tokens.dist", "choose one of: 'uniform', 'lognormal'"),
    ({"dist": "uniform", "low": 5, "high": 2}, "workload.tokens.high", "at least low (5)"),
    ({"dist": "uniform", "low": 0, "high": 2}, "workload.tokens.low", "greater than 0"),
    ({"dist": "lognormal", "median": 30, "sigma": 0.5, "max": 10}, "workload.tokens.max",
     "at least median (30.0)"),
    ({"dist": "lognormal", "median": 3, "sigma": -1, "max": 10}, "workload.tokens.sigma",
     "greater than or equal to 0"),
    ({"dist": "uniform", "low": 1, "high": 2, "mean": 3}, "workload.tokens.mean",
     "allowed keys: dist, low, high"),
    (2.5, "workload.tokens", "a valid integer"),
])
def test_a_bad_length_names_its_field_value_and_what_is_allowed(tokens, where, allowed):
    with pytest.raises(ScenarioError) as err:
        scenario(tokens=tokens)
    assert err.value.where == where and allowed in err.value.allowed


def test_the_bound_on_requests_x_tokens_uses_the_most_a_request_can_draw():
    big = {"dist": "uniform", "low": 1, "high": 1_000_000}
    with pytest.raises(BudgetError) as err:
        build(scenario(tokens=big, requests=21), timing_only=True)
    assert err.value.where == "workload.tokens x requests"
    assert err.value.value == 21_000_000
    build(scenario(tokens={"dist": "uniform", "low": 1, "high": 3}, requests=21),
          timing_only=True)


def test_tokens_csv_shows_each_requests_own_drawn_counts():
    """tokens.csv: each request's drawn prompt and output tokens, and its time per output
    token over its own count."""
    sc = scenario(seed=2, prompt=UNIFORM, tokens=UNIFORM)
    run = api.run(sc, timing_only=True)
    load = build(sc, timing_only=True).workload
    table = run.results[0].extra["tokens"]
    assert table["prompt"].tolist() == list(load.prompt_lengths)
    assert table["tokens"].tolist() == list(load.token_counts)
    assert len(set(load.token_counts)) > 1
    many = table[table["tokens"] > 1]
    expected = (many["finish"] - many["first_token"]) / (many["tokens"] - 1)
    np.testing.assert_allclose(many["tpot"], expected, rtol=1e-12)


def test_a_drawn_length_survives_the_resolved_scenario():
    """The run folder's scenario.resolved.yaml reads back to the same distributions."""
    sc = scenario(prompt=UNIFORM, tokens=LOGNORMAL)
    again = parse(dump(sc))
    assert again.workload == sc.workload
