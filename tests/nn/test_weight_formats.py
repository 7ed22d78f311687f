"""LLM weight formats: bits per weight, llama.cpp's block layouts, real encode/decode in a
deployed decoder and what it costs in accuracy on a shipped text."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from simdl.errors import SimdlError
from simdl.nn.compress import deploy, quantize
from simdl.nn.fit import fit
from simdl.nn.formats import BITS_PER_WEIGHT, BLOCK, decode, encode, stored_bytes
from simdl.nn.kv import Sequence, decode as decode_step, prefill
from simdl.nn.lm_eval import byte_windows, format_accuracy
from simdl.nn.models import decoder_lm

TEXT = Path(__file__).parent / "data" / "pool_notes.txt"


def test_bits_per_weight_are_the_closed_forms():
    """Q8_0: 32 int8 + an fp16 scale = 8.5; Q4_0: 32 nibbles + fp16 = 4.5; Q4_K: 256 nibbles
    + fp16 d and dmin + 12 bytes of 6-bit scales and mins = 4.5; bf16 16."""
    assert BITS_PER_WEIGHT["q8_0"] == (32 * 8 + 16) / 32 == 8.5
    assert BITS_PER_WEIGHT["q4_0"] == (32 * 4 + 16) / 32 == 4.5
    assert BITS_PER_WEIGHT["q4_k"] == (256 * 4 + 2 * 16 + 12 * 8) / 256 == 4.5
    assert BITS_PER_WEIGHT["bf16"] == 16
    rows = np.random.default_rng(0).standard_normal((3, 512)).astype(np.float32)
    for fmt in BLOCK:
        assert encode(fmt, rows).nbytes * 8 == BITS_PER_WEIGHT[fmt] * rows.size
    assert encode("q4_k", rows[:, :40]).shape == (3, 144)       # a short row: one padded block
    assert stored_bytes("q4_k", "unstructured", 3 * 40, 3 * 40, rows=3) == 3 * 144
    assert stored_bytes("q8_0", "unstructured", 3 * 512, 3 * 512) == 3 * 512 * 8.5 / 8


def test_values_on_the_grid_come_back_exactly():
    """Q4_0: d = (value of largest |x|) / -8, so multiples -8d..7d of d = 2^-6 are exact;
    Q8_0: d = max|x| / 127, multiples of it are exact."""
    d = 2.0 ** -6
    x = (np.arange(-8, 8) * d).repeat(2)[None, :].astype(np.float32)
    np.testing.assert_array_equal(decode("q4_0", encode("q4_0", x), 32), x)
    y = (np.arange(-127, 128, 8)[None, :] * 2.0 ** -7).astype(np.float32)
    np.testing.assert_array_equal(decode("q8_0", encode("q8_0", y), 32), y)


def test_bf16_rounds_to_nearest_even():
    x = np.array([[1 + 2 ** -8, 1 + 3 * 2 ** -8, -2.5, 1e-3]], np.float32)
    got = decode("bf16", encode("bf16", x), 4)
    assert got[0, :3].tolist() == [1.0, 1 + 2 ** -6, -2.5]
    assert abs(got[0, 3] - 1e-3) <= 2 ** -9 * 1e-3


def q4_k_by_the_book(block: np.ndarray) -> np.ndarray:
    """One block_q4_K (144 bytes) decoded weight by weight as llama.cpp's ggml-quants.c
    describes: d, dmin, 12 scale bytes (get_scale_min_k4), then per 64 weights 32 bytes
    whose low nibbles are the first 32 weights and high nibbles the next 32."""
    d, dmin = (float(np.frombuffer(block[i:i + 2].tobytes(), "<f2")[0]) for i in (0, 2))
    q = block[4:16]

    def scale_min(j: int) -> tuple[int, int]:
        if j < 4:
            return q[j] & 63, q[j + 4] & 63
        return (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4)

    out, qs = [], block[16:]
    for chunk in range(4):
        for half, shift in ((0, 0), (1, 4)):
            sc, m = scale_min(2 * chunk + half)
            for l in range(32):
                out.append(d * sc * ((qs[32 * chunk + l] >> shift) & 0xF) - dmin * m)
    return np.array(out)


def test_q4_k_layout_is_llama_cpps():
    x = np.random.default_rng(1).standard_normal((2, 512)).astype(np.float32)
    packed = encode("q4_k", x)
    ours = decode("q4_k", packed, 512)
    for r in range(2):
        for b in range(2):
            book = q4_k_by_the_book(packed[r, 144 * b:144 * (b + 1)])
            np.testing.assert_allclose(ours[r, 256 * b:256 * (b + 1)], book, rtol=1e-6, atol=1e-7)


def test_error_shrinks_with_the_bits():
    """Relative RMS error of Gaussian weights: Q8_0 well under a tenth of Q4_0's; Q8_0 stays
    within half a step (its fp16 d) of every weight."""
    x = np.random.default_rng(2).standard_normal((16, 1024)).astype(np.float32)
    err = {f: float(np.sqrt(np.mean((decode(f, encode(f, x), 1024) - x) ** 2))) for f in BLOCK}
    assert err["bf16"] < err["q8_0"] < err["q4_0"] / 10
    assert err["q4_k"] < 1.5 * err["q4_0"] and err["q4_0"] < 0.15
    d = np.abs(x.reshape(16, 32, 32)).max(axis=-1, keepdims=True) / 127
    back = decode("q8_0", encode("q8_0", x), 1024).reshape(16, 32, 32)
    assert np.all(np.abs(back - x.reshape(16, 32, 32)) <= 0.5 * d * (1 + 2 ** -10) + 1e-12)


def small_lm():
    return decoder_lm(vocab=256, dim=32, n_layers=1, n_heads=4, n_kv_heads=2, ffn_hidden=64,
                      seq_len=16)


def test_a_deployed_decoder_stores_and_computes_the_blocks():
    chain = small_lm()
    dep = deploy(chain, "q4_0")
    assert (dep.dtype, dep.weights) == ("fp32", "q4_0")
    attn = dep["layer1"].layer.layers[0].body.layers[1]
    assert attn.params["Wq"].dtype == np.uint8 and attn.params["Wq"].nbytes == 32 * 32 * 4.5 / 8
    w = chain["layer1"].layer.layers[0].body.layers[1].params["Wq"]
    want = decode("q4_0", encode("q4_0", w.T), 32).T           # blocks along the input axis
    np.testing.assert_array_equal(attn.weight("Wq"), want)
    layer_bytes = dep.costs(1)[1].param_bytes
    matrices = 32 * (32 + 16 + 16 + 32) + 3 * 32 * 64        # q, k, v (2 kv heads of 8), o; MLP
    assert layer_bytes == matrices * 4.5 / 8 + 2 * 32 * 4     # norm gains stay fp32
    tokens = np.arange(12)[None, :] % 256
    seqs = [Sequence()]
    prefill(dep, tokens[:, :11], seqs)
    np.testing.assert_allclose(decode_step(dep, tokens[:, 11], seqs)[:, 0],
                               dep.forward(tokens)[0][:, -1], rtol=1e-5, atol=1e-5)
    with pytest.raises(SimdlError, match="prune"):
        deploy(chain, "q4_0", prune=0.5)
    with pytest.raises(SimdlError, match="choose one of"):
        quantize(chain, "q3_k")


def test_accuracy_cost_on_the_shipped_text():
    """The reduced decoder trained briefly on tests/nn/data/pool_notes.txt (bytes): Q8_0's
    logits move far less than Q4's, agreement with fp32 is at least theirs, fp16 ~ exact."""
    data = byte_windows(TEXT.read_text(), 16)
    chain = small_lm()
    losses = fit(chain, data, 40, batch=16, lr=1e-2)
    assert losses[-1] < losses[0] - 2
    rows = {r["format"]: r for r in format_accuracy(chain, data, ("fp16", "q8_0", "q4_k", "q4_0"))}
    assert rows["q8_0"]["mean_abs_logit_diff"] < rows["q4_0"]["mean_abs_logit_diff"] / 4
    assert rows["q8_0"]["mean_abs_logit_diff"] < rows["q4_k"]["mean_abs_logit_diff"] / 4
    assert rows["fp16"]["mean_abs_logit_diff"] < rows["q8_0"]["mean_abs_logit_diff"]
    assert rows["q8_0"]["agreement"] >= max(rows["q4_0"]["agreement"], rows["q4_k"]["agreement"])
    assert all(r["fp32_perplexity"] == rows["fp16"]["fp32_perplexity"] for r in rows.values())
