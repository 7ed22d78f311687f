"""Tensor parallelism: sharded programs give the unsharded numbers, with the collectives
Megatron's pairing predicts, real parameter slices and the payloads of the closed forms.

Tolerance: rtol = atol = 1e-5 in float32. A row split (and a head split, and a
channel split of a conv's input) sums partial products in another order than
the whole GEMM, and a GEMM on a column slice may block differently in BLAS;
each reordering moves a float32 sum by a few ulps (~1e-7 relative) per term.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

from published_sizes import TINY

from simdl.errors import SimdlError
from simdl.nn.compose import Composite
from simdl.nn.layers import (GELU, BatchNorm, Conv2d, Flatten, Layer, LayerNorm, Linear,
                             MaxPool, ReLU, ReLU6, Residual, SelfAttention, Sequential)
from simdl.nn.models import MODELS, build
from simdl.nn.shard import (AddSaved, Compute, Gather, HeadShard, Reduce, Save, Swap, apply,
                            shard, shard_chain)
from simdl.rng import stream

RTOL = ATOL = 1e-5
# Small zoo instances with uneven widths: 10 hidden units, 3/6/12 channels, 4 heads of 3.
SIZES = {
    "mlp": dict(in_dim=6, hidden=10, depth=2, n_classes=3),
    "lenet": dict(in_ch=1, size=12, n_classes=5),
    "resnet_small": dict(in_ch=2, size=8, width=3, n_classes=4),
    "mobilenet_small": dict(in_ch=2, size=8, width=3, n_classes=4),
    "tiny_transformer": dict(vocab=7, d_model=12, n_heads=4, n_layers=1, seq_len=5),
    **TINY,
}


def randomize(layer: Layer, rng: np.random.Generator) -> Layer:
    """Non-trivial biases, norm scales/shifts and running stats (zeros and ones hide bias bugs)."""
    for table in (layer.params, layer.buffers):
        for name in list(table):
            v = table[name]
            if name.endswith("var"):
                table[name] = rng.uniform(0.5, 1.5, v.shape).astype(v.dtype)
            elif v.ndim == 1:
                base = 1.0 if name.endswith("gamma") else 0.0
                table[name] = (base + 0.2 * rng.standard_normal(v.shape)).astype(v.dtype)
    return layer


def leaves(layer: Layer) -> list[Layer]:
    if isinstance(layer, Composite):
        return [x for child in layer.children.values() for x in leaves(child)]
    return [layer]


def x_of(*shape: int, seed: str = "x") -> np.ndarray:
    return stream(0, seed).standard_normal(shape).astype(np.float32)


def kinds(program) -> list[type]:
    return [type(op) for op in program.ops]


def check_costs_follow_tensors(program, x: np.ndarray) -> None:
    """costs() predicts every member's shape after every op, and collective payloads are full."""
    costs = program.costs(x.shape)
    xs, stacks = [x] * program.k, [[] for _ in range(program.k)]
    for op, c in zip(program.ops, costs):
        apply(op, xs, stacks)
        assert c.shape == xs[0].shape, op
        if isinstance(op, Compute):
            assert [m.out_shape for m in c.members] == [y.shape for y in xs]
        if isinstance(op, (Gather, Reduce)):
            assert c.nbytes == xs[0].size * 4


@pytest.mark.parametrize("mode", ["auto", "column", "row"])
@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_zoo_block_sharded_gives_the_blocks_output(name, k, mode):
    chain = build(name, **SIZES.get(name, {}))
    rng = stream(0, f"test_shard.{name}")
    for block in chain:
        randomize(block.layer, rng)
    heads = [x.n_heads for b in chain for x in leaves(b.layer) if isinstance(x, SelfAttention)]
    if heads and k > min(heads):
        pytest.skip(f"{min(heads)} heads cannot be cut over {k} members")
    shape = (3, *chain.in_shape)
    x = (rng.integers(0, chain.n_classes, shape) if chain.in_dtype.kind == "i"
         else rng.standard_normal(shape).astype(np.float32))
    for block in chain:
        want = block.layer.forward(x, train=False)[0]
        program = shard(block.layer, k, mode, name=block.name)
        got = program.run_all(x)
        for member in got:
            np.testing.assert_allclose(member, want, rtol=RTOL, atol=ATOL, err_msg=block.name)
        check_costs_follow_tensors(program, x)
        assert all(op.name.startswith(block.name) for op in program.ops if isinstance(op, Compute))
        x = want


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_chain_range_is_the_block_programs_in_a_row(name):
    chain = build(name, **SIZES.get(name, {}))
    shape = (2, *chain.in_shape)
    rng = stream(0, "test_shard.chain")
    x = (rng.integers(0, chain.n_classes, shape) if chain.in_dtype.kind == "i"
         else rng.standard_normal(shape).astype(np.float32))
    whole = shard_chain(chain, 0, len(chain), 2)
    np.testing.assert_allclose(whole.run(x), chain.forward(x)[0], rtol=RTOL, atol=ATOL)
    blocks = sum((shard(b.layer, 2, name=b.name).ops for b in chain), ())
    assert [str(op) if not isinstance(op, Compute) else op.name for op in whole.ops] == [
        str(op) if not isinstance(op, Compute) else op.name for op in blocks]
    tail = shard_chain(chain, 1, len(chain), 2)
    mid = chain.forward(x, stop=1)[0]
    np.testing.assert_allclose(tail.run(mid), chain.forward(mid, start=1)[0],
                               rtol=RTOL, atol=ATOL)
    with pytest.raises(SimdlError, match="shard_chain.range"):
        shard_chain(chain, 2, 1, 2)


@pytest.mark.parametrize("k, widths", [(2, [5, 5]), (3, [4, 3, 3]), (4, [3, 3, 2, 2])])
@pytest.mark.parametrize("mode", ["auto", "column"])
def test_a_linear_split_by_columns_gathers_once_and_never_reduces(mode, k, widths):
    lin = randomize(Linear(7, 10, stream(0, "lin")), stream(1, "lin"))
    x = x_of(5, 7)
    p = shard(lin, k, mode)
    assert kinds(p) == [Compute, Gather] and p.ops[1].axis == -1
    assert [s.params["W"].shape for s in p.ops[0].shards] == [(7, w) for w in widths]
    assert [s.params["b"].shape for s in p.ops[0].shards] == [(w,) for w in widths]
    np.testing.assert_allclose(p.run(x), lin.forward(x)[0], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("k, rows", [(2, [4, 3]), (3, [3, 2, 2])])
def test_a_linear_split_by_rows_slices_its_input_and_reduces_once(k, rows):
    lin = randomize(Linear(7, 10, stream(0, "lin")), stream(1, "lin"))
    x = x_of(5, 7)
    p = shard(lin, k, "row")
    assert kinds(p) == [Compute, Reduce]
    members = [s.layers for s in p.ops[0].shards]        # (Slice, Linear rows) per member
    assert [m[1].params["W"].shape for m in members] == [(r, 10) for r in rows]
    assert ["b" in m[1].params for m in members] == [True] + [False] * (k - 1)  # bias added once
    assert [m[0].cost((5, 7)).fwd_flops for m in members] == [0] * k
    np.testing.assert_allclose(p.run(x), lin.forward(x)[0], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_an_mlp_column_then_row_needs_exactly_one_reduce(k):
    r = stream(0, "mlp")
    mlp = randomize(Sequential([Linear(8, 13, r), GELU(), Linear(13, 8, r)]), r)
    x = x_of(2, 3, 8)
    p = shard(mlp, k)
    assert p.count(Reduce) == 1 and p.count(Gather) == 0 and kinds(p) == [Compute, Reduce]
    np.testing.assert_allclose(p.run(x), mlp.forward(x)[0], rtol=RTOL, atol=ATOL)
    col = shard(mlp, k, "column")
    assert col.count(Reduce) == 0 and col.count(Gather) == 2
    np.testing.assert_allclose(col.run(x), mlp.forward(x)[0], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("k, per_member", [(2, [2, 2]), (3, [2, 1, 1]), (4, [1, 1, 1, 1])])
def test_attention_splits_by_whole_heads_and_reduces_once(k, per_member):
    att = randomize(SelfAttention(12, 4, stream(0, "att"), causal=True), stream(1, "att"))
    x = x_of(2, 5, 12)
    p = shard(att, k)
    assert kinds(p) == [Compute, Reduce]
    shards = p.ops[0].shards
    assert [s.n_heads for s in shards] == per_member
    assert [s.params["Wo"].shape for s in shards] == [(3 * h, 12) for h in per_member]
    assert ["bo" in s.params for s in shards] == [True] + [False] * (k - 1)
    np.testing.assert_allclose(p.run(x), att.forward(x)[0], rtol=RTOL, atol=ATOL)


def test_attention_with_more_members_than_heads_is_refused_naming_the_layer():
    block = Sequential([LayerNorm(8), SelfAttention(8, 2, stream(0, "att"))])
    with pytest.raises(SimdlError, match=r"layer1\.1 \(attention\)\.k: 3 .*n_heads=2"):
        shard(block, 3, name="layer1")


def test_convs_gather_channels_only_where_needed():
    r = stream(0, "conv")
    x = x_of(2, 3, 6, 6)
    cases = [  # (block, k, ops expected)
        (Sequential([Conv2d(3, 5, 3, r, padding=1), BatchNorm(5), ReLU(), MaxPool(2)]), 3,
         [Compute, Gather]),                                  # split channels until the end
        (Sequential([Conv2d(3, 5, 3, r, padding=1), ReLU(), Conv2d(5, 4, 1, r)]), 3,
         [Compute, Reduce]),                                  # out-channels, then in-channels
        (Sequential([Conv2d(3, 3, 3, r, padding=1, groups=3), BatchNorm(3), ReLU6()]), 3,
         [Compute, Gather]),                                  # depthwise on a full input
        (Sequential([Conv2d(3, 8, 1, r), Conv2d(8, 8, 3, r, padding=1, groups=8)]), 3,
         [Compute, Gather]),                                  # depthwise on channel slices
        (Sequential([Conv2d(3, 8, 1, r), Conv2d(8, 8, 3, r, padding=1, groups=4)]), 2,
         [Compute, Gather]),                                  # slices 0-3 | 4-7 hold whole groups
        (Sequential([Conv2d(3, 8, 1, r), Conv2d(8, 8, 3, r, padding=1, groups=4)]), 3,
         [Compute, Gather, Compute, Gather]),                 # 0-2 | 3-5 | 6-7 cut a group
    ]
    for block, k, expected in cases:
        randomize(block, r)
        p = shard(block, k)
        assert kinds(p) == expected, p
        assert all(op.axis == 1 for op in p.ops if isinstance(op, Gather))
        np.testing.assert_allclose(p.run(x), block.forward(x)[0], rtol=RTOL, atol=ATOL)


def test_flatten_of_channel_slices_feeds_a_row_split_linear():
    r = stream(0, "flat")
    block = randomize(Sequential([Conv2d(2, 5, 3, r, padding=1), ReLU(), Flatten(),
                                  Linear(5 * 4 * 4, 3, r)]), r)
    x = x_of(3, 2, 4, 4)
    p = shard(block, 3)                                       # channels 2 | 2 | 1
    assert kinds(p) == [Compute, Reduce]
    rows = [s.layers[-1].params["W"].shape[0] for s in p.ops[0].shards]
    assert rows == [2 * 16, 2 * 16, 16]
    np.testing.assert_allclose(p.run(x), block.forward(x)[0], rtol=RTOL, atol=ATOL)


def test_a_residual_adds_where_both_branches_agree():
    r = stream(0, "res")
    x = x_of(2, 2, 5, 5)
    same = randomize(Residual(Sequential([Conv2d(2, 4, 3, r, padding=1), BatchNorm(4)]),
                              Sequential([Conv2d(2, 4, 1, r), BatchNorm(4)]), ReLU()), r)
    p = shard(same, 2)            # both branches end in the same channel slices: add there
    assert kinds(p) == [Save, Compute, Swap, Compute, AddSaved, Compute, Gather]
    np.testing.assert_allclose(p.run(x), same.forward(x)[0], rtol=RTOL, atol=ATOL)
    pre_ln = randomize(Residual(Sequential([LayerNorm(8), SelfAttention(8, 4, r)])), r)
    t = x_of(2, 3, 8)
    p = shard(pre_ln, 2)          # identity shortcut is full: the heads are summed first
    assert kinds(p) == [Save, Compute, Reduce, AddSaved]
    np.testing.assert_allclose(p.run(t), pre_ln.forward(t)[0], rtol=RTOL, atol=ATOL)


def test_shard_parameters_are_real_slices_that_add_up_to_the_layer():
    r = stream(0, "bytes")
    layers = {
        "column": (Linear(7, 10, r), "auto"),
        "row": (Linear(7, 10, r), "row"),
        "attention": (SelfAttention(12, 4, r), "auto"),
        "conv+bn": (Sequential([Conv2d(3, 5, 3, r), BatchNorm(5)]), "auto"),
        "depthwise": (Conv2d(6, 6, 3, r, groups=6), "auto"),
    }
    for what, (layer, mode) in layers.items():
        p = shard(layer, 3, mode)
        assert sum(p.param_bytes()) == layer.param_bytes(), what
        for op in p.ops:
            if isinstance(op, Compute):
                arrays = [a for s in op.shards for a in list(s.params.values())
                          + list(s.buffers.values())]
                assert all(a.base is None for a in arrays), what      # owned, not views
    ln = LayerNorm(6)                                  # replicated: every member stores it all
    assert shard(ln, 3).param_bytes() == (ln.param_bytes(),) * 3


def test_collective_payloads_and_member_flops_follow_the_closed_forms():
    n, d_in, d_out, k = 5, 6, 10, 3
    lin = Linear(d_in, d_out, stream(0, "pay"))
    whole = lin.cost((n, d_in))
    for mode, collective in (("column", Gather), ("row", Reduce)):
        costs = shard(lin, k, mode).costs((n, d_in))
        assert isinstance(costs[1].op, collective)
        assert costs[1].shape == (n, d_out) and costs[1].nbytes == n * d_out * 4
        assert sum(c.fwd_flops for c in costs[0].members) == whole.fwd_flops
    att = SelfAttention(12, 4, stream(0, "pay"))
    costs = shard(att, 3).costs((2, 5, 12))
    assert sum(c.fwd_flops for c in costs[0].members) == att.cost((2, 5, 12)).fwd_flops
    assert sum(c.bwd_flops for c in costs[0].members) == att.cost((2, 5, 12)).bwd_flops
    assert costs[1].nbytes == 2 * 5 * 12 * 4
    ln = LayerNorm(12)                                 # replicated compute shows in the costs
    assert shard(ln, 3).costs((2, 5, 12))[0].members == (ln.cost((2, 5, 12)),) * 3


def test_one_member_runs_the_layer_itself():
    lin = Linear(4, 3, stream(0, "one"))
    p = shard(lin, 1, name="fc")
    assert p.ops == (Compute((lin,), "fc"),)


def test_bad_member_counts_and_modes_are_refused():
    lin = Linear(4, 3, stream(0, "bad"))
    for k in (0, -1, 2.0, True):
        with pytest.raises(SimdlError, match="shard.k"):
            shard(lin, k)
    with pytest.raises(SimdlError, match="shard.mode.*auto, column, row"):
        shard(lin, 2, "diagonal")


def test_batchnorm_on_channel_slices_trains_like_the_whole():
    """Each member sees every sample of its channels, so batch statistics are exact too."""
    r = stream(0, "bn")
    block = randomize(Sequential([Conv2d(3, 5, 3, r), BatchNorm(5), ReLU()]), r)
    ref = copy.deepcopy(block)
    x = x_of(4, 3, 5, 5)
    p = shard(block, 3)
    np.testing.assert_allclose(p.run(x, train=True), ref.forward(x, train=True)[0],
                               rtol=RTOL, atol=ATOL)
    bns = [s.layers[1] for s in p.ops[0].shards]
    for stat in ("mean", "var"):
        got = np.concatenate([bn.buffers[stat] for bn in bns])
        np.testing.assert_allclose(got, ref.layers[1].buffers[stat], rtol=RTOL, atol=ATOL)


def test_head_shard_backward_gives_summands_of_dx_and_slices_of_the_grads():
    att = SelfAttention(8, 4, stream(0, "bwd"), causal=True)
    randomize(att, stream(1, "bwd"))
    rng = stream(2, "bwd")
    x, dy = rng.standard_normal((2, 3, 8)), rng.standard_normal((2, 3, 8))
    for table in (att.params, att.grads):
        for name in table:
            table[name] = table[name].astype(np.float64)
    shards = shard(att, 2).ops[0].shards
    assert all(isinstance(s, HeadShard) for s in shards)
    y, cache = att.forward(x)
    dx = att.backward(dy, cache)
    parts = [s.backward(dy, s.forward(x)[1]) for s in shards]
    np.testing.assert_allclose(sum(parts), dx, rtol=1e-10, atol=1e-12)
    for name in ("Wq", "bv", "Wo"):
        glued = np.concatenate([s.grads[name] for s in shards], axis=0 if name == "Wo" else -1)
        np.testing.assert_allclose(glued, att.grads[name], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(shards[0].grads["bo"], att.grads["bo"], rtol=1e-10)


def test_a_program_prints_one_line_per_op():
    r = stream(0, "str")
    p = shard(Sequential([Linear(4, 6, r), ReLU(), Linear(6, 4, r)]), 2, name="fc")
    text = str(p).splitlines()
    assert text[0] == "Program over 2 members, 2 ops:"
    assert "fc.0 (linear, cols 0-2 | 3-5)" in text[1] and "fc.2 (linear, rows 0-2 | 3-5)" in text[1]
    assert text[2].split() == ["1", "reduce"]
