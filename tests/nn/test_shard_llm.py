"""Tensor parallelism of the decoder layers: kv-head groups for grouped-query attention,
hidden units for SwiGLU, vocabulary rows for the tied head; the sharded program gives
the unsharded numbers with one all-reduce per attention and per MLP.

Tolerance: rtol = atol = 1e-5 in float32 (partial sums add in another order; see
test_shard.py).
"""
from __future__ import annotations

import numpy as np
import pytest

from simdl.errors import SimdlError
from simdl.nn.llm import GQAttention, SwiGLU, TiedHead
from simdl.nn.dense import Embedding
from simdl.nn.models import decoder_lm
from simdl.nn.shard import Compute, Gather, Reduce, shard, shard_chain
from simdl.nn.shard_rules import KVGroupShard
from simdl.rng import stream
from test_shard import leaves, randomize

RTOL = ATOL = 1e-5


def x_of(*shape: int) -> np.ndarray:
    return stream(0, "x").standard_normal(shape).astype(np.float32)


def gqa(h=8, kv=4, bias=True):
    layer = GQAttention(24, h, kv, 4, stream(0, "gqa"), bias=bias)
    rng = stream(2, "gqa.bias")
    for name in ("bq", "bk", "bv"):
        if name in layer.params:
            layer.params[name] = rng.standard_normal(layer.params[name].shape).astype(np.float32)
    return layer


@pytest.mark.parametrize("h, kv, k, q_heads, kv_heads", [
    (8, 4, 2, [4, 4], [2, 2]),          # two whole kv groups each
    (8, 4, 4, [2, 2, 2, 2], [1, 1, 1, 1]),
    (8, 4, 3, [4, 2, 2], [2, 1, 1]),    # uneven, whole groups
    (8, 2, 4, [2, 2, 2, 2], [1, 1, 1, 1]),  # more members than kv heads: kv heads repeated
    (6, 2, 4, [2, 2, 1, 1], [1, 2, 1, 1]),  # heads 0-1 | 2-3 (one of each group) | 4 | 5
    (8, 2, 3, [3, 3, 2], [1, 3, 1]),    # heads 3-5 read kv 0, 1, 1: a kv head per query head
])
def test_grouped_query_attention_splits_by_kv_heads_and_sums_to_the_layer(h, kv, k, q_heads,
                                                                          kv_heads):
    layer, x = gqa(h, kv), x_of(2, 5, 24)
    p = shard(layer, k)
    assert [type(op) for op in p.ops] == [Compute, Reduce]
    shards = p.ops[0].shards
    assert all(type(s) is KVGroupShard for s in shards)
    assert [s.h for s in shards] == q_heads and [s.kv for s in shards] == kv_heads
    assert [s.params["Wk"].shape[1] for s in shards] == [4 * n for n in kv_heads]
    np.testing.assert_allclose(p.run(x), layer.forward(x)[0], rtol=RTOL, atol=ATOL)


def test_whole_kv_groups_store_each_weight_once():
    layer = gqa(8, 4)
    assert sum(shard(layer, 4).param_bytes()) == layer.param_bytes()


def test_a_group_larger_than_the_query_heads_is_refused():
    with pytest.raises(SimdlError, match=r"k must be <= n_heads=4"):
        shard(gqa(4, 2), 5)


def test_decode_with_sharded_kv_caches_sums_to_the_whole_layers_decode():
    """Each member caches its own kv heads; token by token, the summands add up."""
    layer = gqa(8, 4)
    p = shard(layer, 2)
    whole_cache = [layer.new_cache()]
    member_caches = [[s.new_cache()] for s in p.ops[0].shards]
    xs = x_of(1, 6, 24)
    for t in range(6):
        x = xs[:, t:t + 1]
        want = layer.infer(x, whole_cache)
        got = sum(s.infer(x, c) for s, c in zip(p.ops[0].shards, member_caches))
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    assert [c[0].k.shape for c in member_caches] == [(2, 6, 4), (2, 6, 4)]


@pytest.mark.parametrize("k, widths", [(2, [5, 5]), (3, [4, 3, 3])])
def test_swiglu_splits_gate_and_up_by_columns_and_down_by_rows(k, widths):
    mlp, x = SwiGLU(12, 10, stream(0, "swiglu")), x_of(3, 2, 12)
    p = shard(mlp, k)
    assert [type(op) for op in p.ops] == [Compute, Reduce]
    shards = p.ops[0].shards
    assert [s.params["W1"].shape for s in shards] == [(12, w) for w in widths]
    assert [s.params["W3"].shape for s in shards] == [(12, w) for w in widths]
    assert [s.params["W2"].shape for s in shards] == [(w, 12) for w in widths]
    np.testing.assert_allclose(p.run(x), mlp.forward(x)[0], rtol=RTOL, atol=ATOL)


def test_the_tied_head_splits_the_vocabulary_and_gathers_the_logits():
    head, x = TiedHead(Embedding(11, 8, stream(0, "emb"))), x_of(2, 3, 8)
    p = shard(head, 3)
    assert [type(op) for op in p.ops] == [Compute, Gather] and p.ops[1].axis == -1
    assert [s.table.shape for s in p.ops[0].shards] == [(4, 8), (4, 8), (3, 8)]
    np.testing.assert_allclose(p.run(x), head.forward(x)[0], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("tied", [True, False])
def test_a_sharded_decoder_gives_the_decoders_logits_with_two_all_reduces_a_layer(k, tied):
    chain = decoder_lm(vocab=13, dim=32, n_layers=2, n_heads=8, n_kv_heads=4, ffn_hidden=20,
                       tied=tied, qkv_bias=True, seq_len=5)
    rng = stream(3, "gains")
    for block in chain:                   # norm gains and q/k/v biases away from 1 and 0
        for layer in leaves(block.layer):
            randomize(layer, rng)
    x = stream(0, "tokens").integers(0, 13, (2, 5))
    p = shard_chain(chain, 0, len(chain), k)
    np.testing.assert_allclose(p.run(x), chain.forward(x)[0], rtol=RTOL, atol=ATOL)
    for block in chain.blocks[1:-1]:       # the layers: attention and MLP, one all-reduce each
        ops = shard(block.layer, k, name=block.name).ops
        assert sum(isinstance(op, Reduce) for op in ops) == 2
        assert not any(isinstance(op, Gather) for op in ops)
    assert any(isinstance(op, Gather) for op in shard(chain.blocks[-1].layer, k).ops)
