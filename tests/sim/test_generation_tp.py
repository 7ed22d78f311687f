"""Tensor-parallel stages in generation: what each member charges (from the shape,
checked against the real shard layers' own costs) and a decode step's time on k devices
over dedicated links by the closed form: per-member kernels + 2 all-reduces a layer."""
import pytest

from simdl import api
from simdl.hw.devices import best_unit, kernel_time
from simdl.nn import kv, shard as tp
from simdl.nn.models import decoder_lm
from simdl.nn import llm_shapes
from simdl.nn.llm_shapes import TOKEN_BYTES, preset
from simdl.plan.lm_group import GroupCosts, attention, head, members, mlp, shape_of
from simdl.scenario import parse
from simdl.sim import generation
from simdl.sim.engine import Simulator
from simdl.world import build


def shard_costs(chain, k, n, past, prefill=False):
    """Per block, the shard program's ops with each Compute's per-member infer costs."""
    shape, out = ((n, past) if prefill else (n, 1)), []
    costs = kv.prefill_costs(chain, n, past) if prefill else kv.decode_costs(chain, n, past)
    for b, block in enumerate(chain.blocks):
        if prefill and b == len(chain) - 1:
            shape = (n, 1, shape[2])
        program = tp.shard(block.layer, k, name=block.name)
        ops = []
        for op, c in zip(program.ops, program.costs(shape)):
            if isinstance(op, tp.Compute):
                ops.append(("compute", [kv.infer_cost(s, shape if not ops else c0, 0 if prefill
                                                      else past) for s in op.shards]))
            elif isinstance(op, tp.Reduce):
                ops.append(("all_reduce", float(c.nbytes)))
            elif isinstance(op, tp.Gather):
                ops.append(("all_gather", float(c.nbytes)))
            c0 = c.shape
        out.append(ops)
        shape = costs[b].out_shape
    return out


@pytest.mark.parametrize("k,kvh", [(2, 2), (3, 2), (4, 2), (2, 4), (4, 4)])
@pytest.mark.parametrize("tied", [True, False])
def test_member_costs_equal_the_shard_layers_own(k, kvh, tied):
    chain = decoder_lm(vocab=41, dim=16, n_layers=2, n_heads=4, n_kv_heads=kvh,
                       ffn_hidden=25, tied=tied)
    group = GroupCosts(shape_of(chain), "fp32", k)
    for ours, theirs in ((group.decode(3, 3 * 5), shard_costs(chain, k, 3, 5)),
                         (group.prefill(6), shard_costs(chain, k, 1, 6, prefill=True))):
        assert [[kind for kind, _ in b] for b in ours] == [[kind for kind, _ in b]
                                                            for b in theirs]
        for a, b in zip(ours, theirs):
            for (kind, x), (_, y) in zip(a, b):
                if kind == "compute":
                    assert [(c.fwd_flops, c.fwd_bytes) for c in x] == \
                        [(c.fwd_flops, c.fwd_bytes) for c in y]
                else:
                    assert x == y


def test_member_weights_equal_the_shard_programs():
    from simdl.plan.plan import Stage, shard_stage, shard_weights
    chain = decoder_lm(vocab=41, dim=16, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=25)
    for k in (2, 3):
        stage = Stage(tuple(f"d{i}" for i in range(k)), 1, 4)
        group = GroupCosts(shape_of(chain), "fp32", k)
        assert group.weight_bytes(1, 4) == [float(b) for b in
                                            shard_weights(shard_stage(chain, stage), k)]


def test_members_split_kv_heads_or_repeat_them():
    s = shape_of(decoder_lm(n_heads=8, n_kv_heads=2, dim=16, ffn_hidden=10, vocab=7))
    assert [(m.heads, m.kv_heads, m.hidden, m.vocab) for m in members(s, 2)] == \
        [(4, 1, 5, 4), (4, 1, 5, 3)]
    assert [(m.heads, m.kv_heads) for m in members(s, 4)] == [(2, 1)] * 4
    assert [(m.heads, m.kv_heads) for m in members(s, 3)] == [(3, 1), (3, 3), (2, 1)]


LLM = {"name": "llm", "preset": "llama3_2_1b", "weights": "q4_0"}


def tp_run(collective, k, model=LLM, tokens=2, timing_only=True, wire="fp32", memory=None):
    """One request on k laptops (of `memory` each when given), every pair on its own
    full-duplex link (100 MB/s, 0.1 ms, no per-message overhead): alpha + S/B =
    latency + S / bandwidth."""
    names = [f"pc{i}" for i in range(k)]
    mesh = [{"a": a, "b": b, "bandwidth": 1e8, "latency": 1e-4}
            for i, a in enumerate(names) for b in names[i + 1:]]
    laptop = {"name": "pc", "type": "laptop", "count": k} | ({"memory": memory} if memory else {})
    sc = parse({"name": "g", "devices": [laptop],
                "network": {"kind": "links", "links": mesh, "overhead": 0},
                "model": model | {"wire": wire},
                "workload": {"kind": "generation", "requests": 1, "source": "pc0",
                             "prompt": 8, "tokens": tokens},
                "strategies": [{"name": "tensor_parallel", "devices": names,
                                "collective": collective}]})
    world = build(sc, timing_only=timing_only)
    p = api.plan(world, sc.strategies[0], 0)
    sim = Simulator(world.devices, world.network, timing_only=timing_only)
    made = generation.execute(p, world, sim)
    return world, made, sim.log.frame()


def alpha_beta(nbytes):
    return 1e-4 + nbytes / 1e8


def all_reduce(collective, k, nbytes):
    """Ring: 2(k-1)(alpha + S/(kB)); star: 2(alpha + S/B) (Thakur et al. 2005)."""
    if collective == "ring":
        return 2 * (k - 1) * alpha_beta(nbytes / k)
    return 2 * alpha_beta(nbytes)


def all_gather(collective, k, nbytes):
    """Ring: (k-1)(alpha + S/(kB)); star: the parts to the root, the rest back."""
    if collective == "ring":
        return (k - 1) * alpha_beta(nbytes / k)
    return alpha_beta(nbytes / k) + alpha_beta(nbytes * (k - 1) / k)


@pytest.mark.parametrize("collective", ["ring", "star"])
@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("wire,width", [("fp32", 4), ("fp16", 2)])
def test_a_decode_step_on_k_devices_is_member_kernels_plus_two_all_reduces_a_layer(
        collective, k, wire, width):
    """TPOT of a 2-token request = its one decode step (context 8): the embedding on
    every member, then per layer the slowest member's attention kernel, an all-reduce of
    dim values of `width` bytes (`model.wire`), its MLP kernel, an all-reduce; the head's
    kernel and an all-gather of the vocab logits, `width` bytes each. Kernels by the
    roofline on the member's own share."""
    world, made, ev = tp_run(collective, k, wire=wire)
    spec = world.devices["pc0"]
    unit = spec.units[best_unit(spec)]
    s = preset("llama3_2_1b")

    def kt(c):
        return kernel_time(spec, best_unit(spec), c.fwd_flops, c.fwd_bytes)

    ms = members(s, k)
    step = kt(llm_shapes.decode_costs(s, 1, 0, "q4_0")[0])
    per_layer = (max(kt(attention(s, m, 1, 9, 9, "q4_0")) for m in ms)
                 + max(kt(mlp(s, m, 1, "q4_0")) for m in ms)
                 + 2 * all_reduce(collective, k, s.dim * width))
    step += s.n_layers * per_layer
    step += (max(kt(head(s, m, 1, "q4_0")) for m in ms)
             + all_gather(collective, k, s.vocab * width))
    step += alpha_beta(TOKEN_BYTES)   # the sampled token to the other members, at once
    q = made.seqs[0]
    assert q.finish - q.first == pytest.approx(step, rel=1e-9)
    assert unit.overhead >= 0
    sent = ev[(ev.kind == "transfer") & ev.label.str.startswith("layer1 step 0")].nbytes.sum()
    per_sync = (2 * (k - 1) * s.dim * width if collective == "star"
                else k * 2 * (k - 1) / k * s.dim * width)
    assert sent == pytest.approx(2 * per_sync, rel=1e-12)


REAL = {"name": "decoder_lm", "vocab": 40, "dim": 16, "n_layers": 2, "n_heads": 4,
        "n_kv_heads": 2, "ffn_hidden": 24}


def test_real_tokens_on_a_group_equal_one_device_and_memory_is_per_member():
    """Real mode: the group's greedy tokens are one device's; each member holds its own
    weights (its shards) and its kv heads' share of the cache."""
    world, made, ev = tp_run("star", 2, REAL, tokens=4, timing_only=False)
    assert [m.kv_token for m in made.memory] == [2 * 1 * 4 * 4 * 2] * 2  # 2 layers, 1 kv head
    sc = parse({"name": "g", "devices": [{"name": "pc0", "type": "laptop"}],
                "network": {"kind": "home"}, "model": REAL,
                "workload": {"kind": "generation", "requests": 1, "source": "pc0",
                             "prompt": 8, "tokens": 4},
                "strategies": [{"name": "single", "device": "pc0"}]})
    w1 = build(sc)
    sim = Simulator(w1.devices, w1.network)
    alone = generation.execute(api.plan(w1, sc.strategies[0], 0), w1, sim)
    assert made.seqs[0].out == alone.seqs[0].out and len(alone.seqs[0].out) == 4


def test_a_group_larger_than_the_heads_is_refused():
    with pytest.raises(Exception, match=r"devices: 5 .*at most n_heads=4"):
        tp_run("ring", 5, REAL)


def test_a_group_split_other_than_auto_is_refused():
    sc = parse({"name": "g", "devices": [{"name": "pc", "type": "laptop", "count": 2}],
                "network": {"kind": "home"}, "model": REAL,
                "workload": {"kind": "generation", "requests": 1, "source": "pc0"},
                "strategies": [{"name": "tensor_parallel", "devices": ["pc0", "pc1"],
                                "split": "column"}]})
    with pytest.raises(Exception, match=r"split: 'column'.*auto"):
        api.plan(build(sc), sc.strategies[0], 0)


def test_a_members_paged_weights_are_charged_in_its_kernels_once_a_pass():
    """Llama 3 8B in fp16 over two laptops of 6 GiB: each member pages part of its half.
    A decode step reads every weight once, so each member's kernels of the step are
    charged paged_extra x its weights' bytes more than on laptops where it all fits."""
    big = {"name": "llm", "preset": "llama3_8b", "weights": "fp16"}
    world, made, ev = tp_run("ring", 2, model=big, memory="6GiB")
    _, roomy, ev_roomy = tp_run("ring", 2, model=big, memory="64GiB")
    assert all(m.paged > 0 for m in made.memory) and all(m.paged == 0 for m in roomy.memory)
    weights = GroupCosts(shape_of(world.chain), "fp16", 2).weight_bytes(0, len(world.chain))

    def charged(log):
        step = log[(log.kind == "compute") & log.label.str.endswith("step 0")]
        return step.groupby("device").nbytes.sum()

    extra = charged(ev) - charged(ev_roomy)
    for m, held in zip(made.memory, weights):
        assert extra[m.device] == pytest.approx(m.paged_extra * held, rel=1e-9)
