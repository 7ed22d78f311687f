"""The decoder kernels against central differences (and torch: test_llm_torch.py), and generation with a KV
cache against recomputing the whole sequence."""
from __future__ import annotations

import numpy as np
import pytest

from simdl.nn import llm
from simdl.nn.attention import SelfAttention
from simdl.nn.dense import Embedding
from simdl.nn.kv import Sequence, decode, prefill
from simdl.nn.layers import astype
from simdl.nn.llm import GQAttention, KVCache, RMSNorm, SwiGLU, TiedHead, rope_angles, rotate
from simdl.nn.llm_shapes import LMShape
from simdl.nn.models import decoder_lm, decoder_lm_from
from test_layers import RTOL, numeric_grad, rel_err

EMB = Embedding(7, 8, np.random.default_rng(0))
LAYERS = {
    "rmsnorm": lambda r: RMSNorm(6),
    "gqa_4q_2kv": lambda r: GQAttention(8, 4, 2, 6, r, theta=100.0),
    "gqa_mha": lambda r: GQAttention(8, 2, 2, 4, r),
    "gqa_one_kv_bias": lambda r: GQAttention(8, 4, 1, 2, r, bias=True),
    "swiglu": lambda r: SwiGLU(6, 5, r),
    "tied_head": lambda r: TiedHead(Embedding(7, 8, r)),
}
WIDTH = {"rmsnorm": 6, "swiglu": 6}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_gradients_match_central_differences_in_float64(name):
    """f = sum(y * R); df/dx and df/dparam (a tied head's table: in the embedding's grads)."""
    rng = np.random.default_rng(1)
    layer = LAYERS[name](rng)
    owner = layer.embedding if isinstance(layer, TiedHead) else layer
    astype(owner, np.float64)
    for p in owner.params.values():
        p += 0.3 * rng.standard_normal(p.shape)
    x = rng.standard_normal((2, 5, WIDTH.get(name, 8)))
    y, cache = layer.forward(x, True)
    r = rng.standard_normal(y.shape)
    owner.zero_grad()
    dx = layer.backward(r, cache)

    def f() -> float:
        return float(np.sum(layer.forward(x, True)[0] * r))

    assert y.dtype == dx.dtype == np.float64
    assert rel_err(dx, numeric_grad(f, x)) < RTOL
    for pname, p in owner.params.items():
        assert rel_err(owner.grads[pname], numeric_grad(f, p)) < RTOL, pname


def test_with_as_many_kv_heads_as_heads_it_is_simdls_multi_head_attention(monkeypatch):
    """Rotation switched off (cos 1, sin 0), kv == h: the same numbers as SelfAttention
    (causal, zero biases) holding the same four matrices."""
    rng = np.random.default_rng(3)
    gqa = astype(GQAttention(8, 4, 4, 2, rng), np.float64)
    mha = astype(SelfAttention(8, 4, rng, causal=True), np.float64)
    for w in ("Wq", "Wk", "Wv", "Wo"):
        mha.params[w][...] = gqa.params[w]
    monkeypatch.setattr(llm, "rope_angles", lambda pos, dh, theta: (np.ones((len(pos), dh)),
                                                                    np.zeros((len(pos), dh))))
    x = rng.standard_normal((3, 5, 8))
    np.testing.assert_allclose(gqa.forward(x)[0], mha.forward(x)[0], rtol=1e-13, atol=1e-13)


def test_grouped_query_attention_is_multi_head_attention_with_repeated_kv_heads():
    """kv heads shared by g query heads == h kv heads where each is repeated g times."""
    rng = np.random.default_rng(4)
    gqa = GQAttention(8, 6, 2, 4, rng)
    mha = GQAttention(8, 6, 6, 4, rng)
    for w in ("Wq", "Wo"):
        mha.params[w][...] = gqa.params[w]
    for w in ("Wk", "Wv"):
        cols = gqa.params[w].reshape(8, 2, 1, 4)
        mha.params[w][...] = np.broadcast_to(cols, (8, 2, 3, 4)).reshape(8, 24)
    x = rng.standard_normal((2, 5, 8)).astype(np.float32)
    np.testing.assert_allclose(gqa.forward(x)[0], mha.forward(x)[0], rtol=1e-6, atol=1e-6)


def test_rope_scores_depend_only_on_the_distance():
    """q at m and k at n score q R(m)^T R(n) k: shifting both positions by 5 changes nothing;
    position 0 is no rotation; the inverse undoes it."""
    rng = np.random.default_rng(5)
    q, k = rng.standard_normal((1, 8)), rng.standard_normal((1, 8))

    def score(m: int, n: int) -> float:
        cm, sm = rope_angles(np.array([m]), 8, 10000.0)
        cn, sn = rope_angles(np.array([n]), 8, 10000.0)
        return float((rotate(q, cm, sm) @ rotate(k, cn, sn).T)[0, 0])

    assert score(7, 3) == pytest.approx(score(12, 8), rel=1e-12)
    assert score(7, 3) != pytest.approx(score(7, 4), rel=1e-3)
    c0, s0 = rope_angles(np.array([0]), 8, 10000.0)
    np.testing.assert_array_equal(rotate(q, c0, s0), q)
    c, s = rope_angles(np.array([9]), 8, 10000.0)
    np.testing.assert_allclose(rotate(rotate(q, c, s), c, s, inverse=True), q, rtol=1e-14)


def test_rmsnorm_equals_its_definition():
    x = np.array([[3.0, 4.0]])                  # mean square 12.5
    y, _ = RMSNorm(2, eps=0.0).forward(x)
    np.testing.assert_allclose(y, x / np.sqrt(12.5), rtol=1e-15)


def test_tied_head_trains_the_one_table():
    chain = decoder_lm(tied=True)
    assert "head.1.E" not in chain.params() and chain["head"].layer.layers[1].table is \
        chain["embed"].layer.params["E"]
    untied = decoder_lm(tied=False)
    assert untied.n_params() == chain.n_params() + 32 * 16


# -- generation with a cache ---------------------------------------------------------------
SHAPE = LMShape(vocab=29, dim=24, n_layers=3, n_heads=6, n_kv_heads=2, ffn_hidden=40,
                rope_theta=1000.0, context=32, qkv_bias=True)


def randomized(chain):
    rng = np.random.default_rng(6)
    for p in chain.params().values():
        if p.ndim == 1:
            p += 0.3 * rng.standard_normal(p.shape).astype(p.dtype)
    return chain


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("tied", [True, False])
def test_decode_with_the_cache_gives_the_logits_of_recomputing_everything(dtype, tol, tied):
    """3 sequences, prompt 5, then 6 decode steps: each step's logits equal chain.forward
    on the whole sequence so far at its last position (max |diff| <= tol)."""
    from dataclasses import replace
    chain = randomized(decoder_lm_from(replace(SHAPE, tied=tied), 16)).astype(dtype)
    rng = np.random.default_rng(7)
    tokens = rng.integers(0, 29, (3, 5))
    seqs = [Sequence() for _ in range(3)]
    logits = prefill(chain, tokens, seqs)
    for step in range(6):
        full = chain.forward(tokens)[0][:, -1:]
        assert logits.shape == (3, 1, 29)
        np.testing.assert_allclose(logits, full, rtol=0, atol=tol * np.abs(full).max())
        nxt = logits[:, 0].argmax(axis=-1)
        tokens = np.concatenate([tokens, nxt[:, None]], axis=1)
        logits = decode(chain, nxt, seqs)
    assert [s.length() for s in seqs] == [11, 11, 11]


def test_sequences_of_different_lengths_decode_together():
    """Continuous batching: prompts of 2, 5 and 9 tokens prefilled apart, then decoded
    in one batch, give each sequence's own full recomputation."""
    chain = randomized(decoder_lm_from(SHAPE, 16)).astype(np.float64)
    rng = np.random.default_rng(8)
    prompts = [rng.integers(0, 29, (1, n)) for n in (2, 5, 9)]
    seqs = [Sequence() for _ in prompts]
    for p, s in zip(prompts, seqs):
        prefill(chain, p, [s])
    nxt = np.array([3, 17, 28])
    got = decode(chain, nxt, seqs)
    for i, p in enumerate(prompts):
        want = chain.forward(np.concatenate([p, [[nxt[i]]]], axis=1))[0][:, -1]
        np.testing.assert_allclose(got[i], want, rtol=0, atol=1e-12 * np.abs(want).max())


def test_a_pipeline_of_block_ranges_is_the_whole_chain():
    """Stages [0, 2) and [2, 5) with their own caches give the whole chain's logits, and
    each stage's sequences hold caches of its own attention blocks only."""
    chain = randomized(decoder_lm_from(SHAPE, 16)).astype(np.float64)
    tokens = np.random.default_rng(9).integers(0, 29, (2, 4))
    whole = [Sequence(), Sequence()]
    first, second = [Sequence(), Sequence()], [Sequence(), Sequence()]
    want = prefill(chain, tokens, whole)
    got = prefill(chain, prefill(chain, tokens, first, 0, 2), second, 2)
    np.testing.assert_array_equal(got, want)
    assert set(first[0].caches) == {1} and set(second[0].caches) == {2, 3}
    want = decode(chain, np.array([1, 2]), whole)
    got = decode(chain, decode(chain, np.array([1, 2]), first, 0, 2), second, 2)
    np.testing.assert_array_equal(got, want)


def test_the_cache_grows_by_two_kv_head_vectors_per_token_per_layer():
    chain = decoder_lm_from(SHAPE, 16)
    seqs = [Sequence()]
    prefill(chain, np.zeros((1, 4), np.int64), seqs)
    assert seqs[0].nbytes() == 3 * 4 * 2 * 2 * 4 * 4     # layers, tokens, k+v, kv, dh, float32
    decode(chain, np.zeros(1, np.int64), seqs)
    assert seqs[0].nbytes() == 3 * 5 * 2 * 2 * 4 * 4
    with pytest.raises(Exception, match="one token per sequence"):
        decode(chain, np.zeros((1, 2), np.int64), seqs)


def test_kv_cache_appends_along_the_sequence():
    c = KVCache(2, 3)
    c.append(np.ones((2, 4, 3)), np.zeros((2, 4, 3)))
    k, v = c.append(2 * np.ones((2, 1, 3)), np.ones((2, 1, 3)))
    assert c.length == 5 and k[:, 4].tolist() == [[2.0] * 3] * 2 and c.nbytes == 2 * 2 * 5 * 3 * 4
