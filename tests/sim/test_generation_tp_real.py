"""Tensor-parallel generation computed for real (issue 17): every member of a group runs
its own shard (its heads, hidden units, vocabulary rows, its kv heads' caches), the
partial sums added when the all-reduce's transfers end, the logits gathered."""
import numpy as np
import pytest

from simdl import api
from simdl.nn import kv
from simdl.nn import shard as tp
from simdl.nn.shard_rules import even
from simdl.plan.lm_group import combine, member_steps, members, shape_of
from simdl.plan.lm_model import to_wire
from simdl.scenario import parse
from simdl.sim import generation
from simdl.sim.engine import Simulator
from simdl.world import build

REAL = {"name": "decoder_lm", "vocab": 40, "dim": 16, "n_layers": 2, "n_heads": 4,
        "n_kv_heads": 2, "ffn_hidden": 24}


def runs(strategies, n=4, model=REAL):
    """Each strategy's greedy tokens and Generated, n requests sharing steps."""
    sc = parse({"name": "g", "devices": [{"name": "pc", "type": "laptop", "count": 4}],
                "network": {"kind": "home"}, "model": model,
                "workload": {"kind": "generation", "requests": n, "source": "pc0",
                             "prompt": {"dist": "uniform", "low": 3, "high": 7}, "tokens": 5,
                             "max_batch": 3, "arrival": {"kind": "poisson", "rate": 100}},
                "strategies": strategies})
    world = build(sc)
    out = []
    for i in range(len(strategies)):
        sim = Simulator(world.devices, world.network)
        made = generation.execute(api.plan(world, sc.strategies[i], i), world, sim)
        out.append(([made.seqs[r].out for r in range(n)], made))
    return world, out


SINGLE = {"name": "single", "device": "pc0"}


def kv_heads_read(k, heads=4, kv_heads=2):
    """The kv heads member i of k caches (`plan.lm_group.members`): its whole kv heads
    (k <= kv_heads); else those its query heads even(heads, k)[i] read, once each when
    they read them alike, else once per query head."""
    if k <= kv_heads:
        b = even(kv_heads, k)
        return [list(range(b[i], b[i + 1])) for i in range(k)]
    b, r, out = even(heads, k), heads // kv_heads, []
    for i in range(k):
        reads = [j // r for j in range(b[i], b[i + 1])]
        uniq = sorted(set(reads))
        out.append(uniq if all(reads.count(u) == reads.count(uniq[0]) for u in uniq)
                   else reads)
    return out


@pytest.mark.parametrize("strategy", [
    {"name": "tensor_parallel", "devices": ["pc0", "pc1"], "collective": "star"},
    {"name": "tensor_parallel", "devices": ["pc0", "pc1", "pc2"]},
    {"name": "hybrid", "pipelines": [[["pc0"], ["pc1", "pc2", "pc3"]]], "cuts": [2]}])
def test_a_groups_tokens_equal_one_devices_and_each_member_caches_its_own_heads(strategy):
    """Greedy tokens equal; member m's cache of a layer holds its kv heads only
    (`members`), and those are the single device's cache of the same heads to 1e-5."""
    world, ((alone, one), (split, made)) = runs([SINGLE, strategy])
    assert split == alone and all(len(o) == 5 for o in alone)
    group = made.memory[-1].stage
    k = len([m for m in made.memory if m.stage == group])
    shares = members(shape_of(world.chain), k)
    layer = 2                                     # block layer2, on the group in all three
    for r, q in made.seqs.items():
        whole = one.seqs[r].state.caches[layer][0].k
        got = [q.parts[m].caches[layer][0].k for m in range(k)]
        assert [g.shape for g in got] == [(m.kv_heads, *whole.shape[1:]) for m in shares]
        for g, kv_heads in zip(got, kv_heads_read(k)):
            np.testing.assert_allclose(g, whole[kv_heads], atol=1e-5)
        assert layer not in q.state.caches        # the group's layers are in the parts


@pytest.mark.parametrize("k", [2, 3])
def test_the_members_partial_sums_add_up_to_the_whole_block(k):
    """A decode step of layer1 after a 5-token prefill: the members' attention and MLP
    outputs (each its heads' or hidden units' share of Wo x or W2 x) summed, with the
    residuals, equal the whole block's output to 1e-5; no member's part is the whole."""
    world, _ = runs([SINGLE], n=1)
    chain = world.chain
    rng = np.random.default_rng(0)
    prompt, nxt = rng.normal(size=(2, 5, 16)).astype(np.float32), \
        rng.normal(size=(2, 1, 16)).astype(np.float32)
    whole = [kv.Sequence(), kv.Sequence()]
    kv.prefill(chain, prompt, whole, start=1, stop=2)
    want = kv.decode(chain, nxt, whole, start=1, stop=2)
    parts = [[kv.Sequence(), kv.Sequence()] for _ in range(k)]
    steps, tail = member_steps(chain.blocks[1].layer, k)
    for x in (prompt, nxt):
        xs, stacks = [x] * k, [[] for _ in range(k)]
        for step in steps:
            for op in step.free:
                tp.apply(op, xs, stacks)
            if isinstance(step.op, tp.Compute):
                xs = [kv.run_layer(step.op.shards[m], xs[m], parts[m], 1) for m in range(k)]
            else:
                assert isinstance(step.op, tp.Reduce)
                assert all(np.abs(p - combine(step.op, xs, lambda v: v)).max() > 1e-3
                           for p in xs)
                xs = [combine(step.op, xs, lambda v: v)] * k
        for op in tail:
            tp.apply(op, xs, stacks)
    np.testing.assert_allclose(xs[0], want, atol=1e-5)
    assert [type(s.op).__name__ for s in steps] == ["Compute", "Reduce"] * 2


def test_an_all_reduce_sends_each_part_and_the_sum_in_the_wire_dtype():
    """Two parts of 1 + 2^-12: in fp16 each arrives as 1 (half has 10 fraction bits), the
    sum is 2; in fp32 it is 2 + 2^-11. A gather rounds each slice once."""
    parts = [np.full((1, 1, 2), 1 + 2**-12, np.float32)] * 2
    half = lambda v: to_wire(v, "fp16")
    assert combine(tp.Reduce(), parts, half).tolist() == [[[2.0, 2.0]]]
    assert combine(tp.Reduce(), parts, lambda v: v).tolist() == [[[2 + 2**-11] * 2]]
    assert combine(tp.Gather(-1), parts, half).tolist() == [[[1.0] * 4]]
