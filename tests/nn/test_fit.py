"""fit trains deterministically and really learns; evaluate and predict give the right shapes and numbers."""
from __future__ import annotations

import math

import numpy as np
import pytest

from simdl.errors import SimdlError
from simdl.nn.data import gaussian_mixture, tokens
from simdl.nn.dense import SoftmaxCrossEntropy
from simdl.nn.fit import evaluate, fit, predict, scores
from simdl.nn.models import mlp, tiny_transformer


def small_mlp(seed: int = 0):
    return mlp(in_dim=16, hidden=32, n_classes=4, seed=seed)


def test_same_seed_same_losses_and_the_loss_goes_down():
    """Two runs from the same weights and seed give the identical list; the mean of the
    last 20 losses is under a third of chance (ln 4 = 1.386); another seed shuffles differently."""
    data = gaussian_mixture(n=600, dim=16, n_classes=4)
    a = fit(small_mlp(), data, steps=120, batch=32, lr=1e-2, seed=3)
    b = fit(small_mlp(), data, steps=120, batch=32, lr=1e-2, seed=3)
    c = fit(small_mlp(), data, steps=120, batch=32, lr=1e-2, seed=4)
    assert a == b
    assert a != c
    assert len(a) == 120 and all(isinstance(v, float) for v in a)
    assert np.mean(a[-20:]) < math.log(4) / 3 < a[0]


def test_epochs_cycle_and_a_ragged_last_batch_is_dropped():
    """100 samples, batch 32: 3 full batches an epoch (4 samples dropped), so 7 steps span
    3 epochs. With fewer samples than a batch, the one short batch is used."""
    data = gaussian_mixture(n=100, dim=16, n_classes=4)
    assert len(fit(small_mlp(), data, steps=7, batch=32)) == 7
    tiny = gaussian_mixture(n=10, dim=16, n_classes=4)
    assert len(fit(small_mlp(), tiny, steps=3, batch=32)) == 3
    assert fit(small_mlp(), data, steps=0) == []


def test_sgd_trains_too_and_the_chain_changes_in_place():
    data = gaussian_mixture(n=400, dim=16, n_classes=4)
    chain = small_mlp()
    before = chain.params()["head.0.W"].copy()
    losses = fit(chain, data, steps=60, optimizer="sgd", lr=0.05)
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    assert not np.array_equal(before, chain.params()["head.0.W"])


def test_evaluate_matches_a_hand_computation_on_a_trained_mlp():
    """Loss is SoftmaxCrossEntropy over the whole set; accuracy is argmax == label;
    the batch size only bounds memory (BLAS may round a row differently per batch size)."""
    train, test = gaussian_mixture(n=1000, dim=16, n_classes=4).split(0.8)
    chain = small_mlp()
    fit(chain, train, steps=150, lr=1e-2)
    loss, acc = evaluate(chain, test, batch=64)
    logits = chain.forward(test.x)[0]
    assert loss == pytest.approx(SoftmaxCrossEntropy().forward(logits, test.y)[0], rel=1e-6)
    assert acc == np.mean(logits.argmax(-1) == test.y)
    assert acc > 0.85                                   # chance is 0.25
    assert predict(chain, test.x, batch=7).shape == (200, 4)
    assert np.allclose(predict(chain, test.x, batch=7), logits, rtol=1e-5, atol=1e-6)


def test_token_data_is_scored_per_position():
    """tiny_transformer on tokens: logits (N, T, vocab); accuracy counts N*T positions."""
    data = tokens(n=40, seq_len=8, vocab=16)
    chain = tiny_transformer(vocab=16, d_model=16, n_heads=2, n_layers=1, seq_len=8)
    logits = predict(chain, data.x, batch=16)
    assert logits.shape == (40, 8, 16)
    loss, acc = evaluate(chain, data)
    assert acc == np.sum(logits.argmax(-1) == data.y) / (40 * 8)
    assert loss == pytest.approx(SoftmaxCrossEntropy().forward(logits, data.y)[0], rel=1e-5)


def test_unlabelled_positions_do_not_count():
    """Positions: argmax 0 vs label 0 (hit), argmax 1 vs label 0 (miss), label -1 (skipped)
    -> accuracy 1/2."""
    logits = np.array([[[2.0, 0.0], [0.0, 1.0], [5.0, 0.0]]], np.float32)
    _, acc = scores(logits, np.array([[0, 0, -1]]))
    assert acc == 0.5


def test_bad_arguments_name_the_field():
    data = gaussian_mixture(n=64, dim=16, n_classes=4)
    with pytest.raises(SimdlError, match="fit.optimizer"):
        fit(small_mlp(), data, steps=1, optimizer="lion")
    with pytest.raises(SimdlError, match="fit.steps"):
        fit(small_mlp(), data, steps=-1)
    with pytest.raises(SimdlError, match="fit.batch"):
        fit(small_mlp(), data, steps=1, batch=0)
    with pytest.raises(SimdlError, match="evaluate.data"):
        evaluate(mlp(in_dim=16, n_classes=2), data)
