"""Synthetic datasets: deterministic, well-formed, balanced; shards and batches partition them."""
from __future__ import annotations

import numpy as np
import pytest

from simdl.errors import SimdlError
from simdl.nn.data import DATASETS, Dataset, gaussian_mixture, shapes, tokens
from simdl.rng import stream

SMALL = {
    "gaussian_mixture": dict(n=300, dim=8, n_classes=3),
    "shapes": dict(n=200, size=12, channels=2, n_classes=4),
    "tokens": dict(n=200, seq_len=6, vocab=10),
}


def make(name: str, seed: int = 0) -> Dataset:
    return DATASETS[name](**SMALL.get(name, {}), seed=seed)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_same_seed_gives_identical_arrays_and_another_seed_differs(name):
    a, b, c = make(name), make(name), make(name, seed=1)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    assert a.x.dtype == b.x.dtype and a.y.dtype == b.y.dtype
    assert not np.array_equal(a.x, c.x)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_shards_are_disjoint_cover_the_set_and_differ_by_at_most_one(name):
    """7 replicas over n samples: concatenated in order they give back exactly x and y."""
    d = make(name)
    parts = [d.shard(i, 7) for i in range(7)]
    assert np.array_equal(np.concatenate([p.x for p in parts]), d.x)
    assert np.array_equal(np.concatenate([p.y for p in parts]), d.y)
    sizes = [len(p) for p in parts]
    assert sum(sizes) == len(d) and max(sizes) - min(sizes) <= 1
    assert [d.shard(i, 7).x.tobytes() for i in range(7)] == [p.x.tobytes() for p in parts]


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_batches_visit_every_sample_once_in_an_order_fixed_by_the_generator(name):
    d = make(name)
    seen = [x for x, _ in d.batches(32, stream(3, "batches"))]
    again = [x for x, _ in d.batches(32, stream(3, "batches"))]
    assert all(np.array_equal(a, b) for a, b in zip(seen, again))
    assert [len(x) for x in seen] == [32] * (len(d) // 32) + [len(d) % 32]
    flat = np.concatenate(seen).reshape(len(d), -1)
    ref = d.x.reshape(len(d), -1)
    assert np.array_equal(np.unique(flat, axis=0), np.unique(ref, axis=0))
    assert not np.array_equal(flat, ref)  # shuffled
    assert all(len(x) == 32 for x, _ in d.batches(32, stream(3, "batches"), drop_last=True))


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_split_keeps_order_and_sizes(name):
    d = make(name)
    train, test = d.split(0.75)
    assert len(train) == round(0.75 * len(d)) and len(train) + len(test) == len(d)
    assert np.array_equal(np.concatenate([train.x, test.x]), d.x)
    with pytest.raises(SimdlError, match="split"):
        d.split(1.0)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_classes_are_roughly_balanced_and_arrays_read_only(name):
    d = make(name)
    counts = np.bincount(d.y.ravel(), minlength=d.n_classes)
    assert counts.min() >= 0.6 * counts.mean() and counts.max() <= 1.4 * counts.mean()
    assert d.y.min() >= 0 and d.y.max() < d.n_classes
    with pytest.raises(ValueError):
        d.x[0] = 0


def test_shapes_and_dtypes():
    g = gaussian_mixture(n=100, dim=5, n_classes=3)
    assert (g.x.shape, g.x.dtype, g.y.shape, g.y.dtype) == ((100, 5), np.float32, (100,), np.int64)
    s = shapes(n=40, size=16, channels=3, n_classes=6)
    assert (s.x.shape, s.x.dtype, s.y.shape, s.n_classes) == ((40, 3, 16, 16), np.float32, (40,), 6)
    # standardised per channel
    assert np.allclose(s.x.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    assert np.allclose(s.x.std(axis=(0, 2, 3)), 1, atol=1e-4)
    t = tokens(n=50, seq_len=7, vocab=11)
    assert (t.x.shape, t.x.dtype, t.y.shape, t.y.dtype, t.n_classes) == (
        (50, 7), np.int64, (50, 7), np.int64, 11)


def test_token_labels_are_the_next_tokens_of_one_affine_rule_per_sequence():
    """y[:, t] == x[:, t+1], and each sequence has one (a, b) with x[t+1] = a*x[t] + b mod V."""
    t = tokens(n=64, seq_len=8, vocab=13, n_rules=3)
    assert np.array_equal(t.y[:, :-1], t.x[:, 1:])
    fits = [{(a, b) for a in range(13) for b in range(13) if np.array_equal((a * x + b) % 13, y)}
            for x, y in zip(t.x, t.y)]
    rules = set().union(*(f for f in fits if len(f) == 1))  # a fixed point fits many rules
    assert len(rules) == 3
    assert all(f & rules for f in fits)


def test_gaussian_mixture_means_are_sep_apart():
    """Orthogonal means: estimated pairwise distances are sep=5 up to sampling noise (~0.05)."""
    g = gaussian_mixture(n=4000, dim=16, n_classes=4, sep=5.0)
    mu = np.stack([g.x[g.y == c].mean(axis=0) for c in range(4)])
    dist = np.linalg.norm(mu[:, None] - mu[None], axis=-1)[np.triu_indices(4, 1)]
    assert np.all(abs(dist - 5.0) < 0.3)


def test_bad_arguments_name_the_field():
    with pytest.raises(SimdlError, match="shapes.n_classes"):
        shapes(n_classes=9)
    with pytest.raises(SimdlError, match="shard"):
        gaussian_mixture(n=10).shard(3, 3)
