"""Deterministic synthetic datasets the zoo models can really learn.

A dataset is one function (sizes and a `seed`; numbers from
`simdl.rng.stream(seed, "<dataset name>")`) plus one `DATASETS` entry, and
returns a frozen `Dataset` that splits, shards for data-parallel replicas and
yields shuffled batches. Knows arrays and labels; nothing of models, devices or time.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import gcd
from typing import Callable, Iterator

import numpy as np

from simdl.errors import SimdlError
from simdl.rng import stream


@dataclass(frozen=True)
class Dataset:
    """Samples `x` (first axis) with integer labels `y`; arrays are read-only.

    y is (N,) for classification and (N, T) (next tokens) for sequence tasks.
    """

    x: np.ndarray
    y: np.ndarray
    n_classes: int
    name: str = ""

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise SimdlError(f"dataset.{self.name}.y", len(self.y),
                             f"need one label row per sample: {len(self.x)}")
        self.x.setflags(write=False)
        self.y.setflags(write=False)

    def __len__(self) -> int:
        return len(self.x)

    def _take(self, lo: int, hi: int, name: str) -> Dataset:
        return Dataset(self.x[lo:hi], self.y[lo:hi], self.n_classes, name)

    def split(self, fraction: float) -> tuple[Dataset, Dataset]:
        """(first `fraction` of the samples, the rest); samples are already in random order."""
        if not 0.0 < fraction < 1.0:
            raise SimdlError(f"dataset.{self.name}.split", fraction, "must be in (0, 1)")
        k = int(round(len(self) * fraction))
        return self._take(0, k, f"{self.name}[train]"), self._take(k, len(self), f"{self.name}[test]")

    def shard(self, i: int, n: int) -> Dataset:
        """Replica i's contiguous share of n; shards are disjoint, cover the set, differ by <= 1 sample."""
        if not 0 <= i < n:
            raise SimdlError(f"dataset.{self.name}.shard", (i, n), "need 0 <= i < n")
        return self._take(i * len(self) // n, (i + 1) * len(self) // n, f"{self.name}[{i}/{n}]")

    def by_class(self, i: int, n: int) -> Dataset:
        """Owner i's share of n when data is not IID: samples sorted by label (the first
        label, for sequences), then dealt in contiguous shares, so each owner sees
        only a few classes (a label-skewed, federated-style split)."""
        if not 0 <= i < n:
            raise SimdlError(f"dataset.{self.name}.by_class", (i, n), "need 0 <= i < n")
        key = self.y if self.y.ndim == 1 else self.y[:, 0]
        order = np.argsort(key, kind="stable")[i * len(self) // n:(i + 1) * len(self) // n]
        return Dataset(self.x[order], self.y[order], self.n_classes, f"{self.name}[class {i}/{n}]")

    def restricted(self, classes: np.ndarray) -> Dataset:
        """The samples whose label (first label, for sequences) is one of `classes`."""
        key = self.y if self.y.ndim == 1 else self.y[:, 0]
        keep = np.isin(key, classes)
        return Dataset(self.x[keep], self.y[keep], self.n_classes, f"{self.name}[some classes]")

    def forever(self, batch_size: int,
                rng: np.random.Generator) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Batches epoch after epoch, each epoch reshuffled by `rng`, ragged ends dropped
        (a set smaller than one batch yields all of itself, reshuffled, every time)."""
        size = min(batch_size, len(self))
        while True:
            yield from self.batches(size, rng, drop_last=True)

    def batches(self, batch_size: int, rng: np.random.Generator,
                drop_last: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One epoch of (x, y) batches in an order shuffled by `rng`."""
        if batch_size < 1:
            raise SimdlError(f"dataset.{self.name}.batch_size", batch_size, "must be >= 1")
        order = rng.permutation(len(self))
        stop = len(self) - len(self) % batch_size if drop_last else len(self)
        for lo in range(0, stop, batch_size):
            idx = order[lo:lo + batch_size]
            yield self.x[idx], self.y[idx]


def _balanced_labels(rng: np.random.Generator, n: int, n_classes: int) -> np.ndarray:
    """n labels in random order, each class n // n_classes or one more times."""
    return rng.permutation(np.arange(n) % n_classes).astype(np.int64)


def gaussian_mixture(n: int = 2048, dim: int = 32, n_classes: int = 4, sep: float = 4.0,
                     seed: int = 0) -> Dataset:
    """Isotropic unit Gaussians around class means `sep` apart.

    The means are orthogonal random directions scaled to norm sep/sqrt(2), so
    any two are exactly `sep` apart (about `sep` when n_classes > dim); with
    sep=4 the pairwise Bayes error is Phi(-sep/2) = 2.3%.
    """
    rng = stream(seed, "gaussian_mixture")
    if n_classes <= dim:
        means = np.linalg.qr(rng.standard_normal((dim, n_classes)))[0].T
    else:
        means = rng.standard_normal((n_classes, dim))
        means /= np.linalg.norm(means, axis=1, keepdims=True)
    means *= sep / np.sqrt(2.0)
    y = _balanced_labels(rng, n, n_classes)
    x = (means[y] + rng.standard_normal((n, dim))).astype(np.float32)
    return Dataset(x, y, n_classes, "gaussian_mixture")


def _square(dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    return np.maximum(abs(dx), abs(dy)) <= r


def _disk(dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    return dx * dx + dy * dy <= r * r


def _cross(dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    arm = r / 3
    return ((abs(dx) <= arm) & (abs(dy) <= r)) | ((abs(dy) <= arm) & (abs(dx) <= r))


def _hbars(dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    band = np.floor((dy + r) / (2 * r / 5))  # five bands: bar, gap, bar, gap, bar
    return _square(dx, dy, r) & (band % 2 == 0)


def _ring(dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    return _disk(dx, dy, r) & ~_disk(dx, dy, 0.55 * r)


def _triangle(dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    return (abs(dy) <= r) & (abs(dx) <= (dy + r) / 2)


def _vbars(dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    return _hbars(dy, dx, r)


def _diagonals(dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    return _square(dx, dy, r) & ((abs(dx - dy) <= r / 3) | (abs(dx + dy) <= r / 3))


SHAPES = (_square, _disk, _cross, _hbars, _ring, _triangle, _vbars, _diagonals)


def shapes(n: int = 2048, size: int = 32, channels: int = 3, n_classes: int = 4,
           seed: int = 0) -> Dataset:
    """Small images of one filled shape each: square, disk, cross, horizontal bars (then ring,
    triangle, vertical bars, diagonal cross for n_classes up to 8).

    Random position, scale (half-size 0.2-0.35 of the image) and colours (shape
    brighter than the background in every channel), plus Gaussian noise of 0.1;
    standardised per channel. x: (n, channels, size, size) float32.
    """
    if not 1 <= n_classes <= len(SHAPES):
        raise SimdlError("dataset.shapes.n_classes", n_classes, f"must be in 1..{len(SHAPES)}")
    if size < 8:
        raise SimdlError("dataset.shapes.size", size, "must be at least 8 pixels")
    rng = stream(seed, "shapes")
    y = _balanced_labels(rng, n, n_classes)
    r = rng.uniform(0.2, 0.35, n) * size
    cx, cy = (rng.uniform(r, size - 1 - r) for _ in range(2))
    fg = rng.uniform(0.6, 1.0, (n, channels)).astype(np.float32)
    bg = rng.uniform(0.0, 0.4, (n, channels)).astype(np.float32)
    noise = rng.normal(0.0, 0.1, (n, channels, size, size)).astype(np.float32)
    grid = np.arange(size, dtype=np.float32)
    mask = np.zeros((n, size, size), dtype=bool)
    for c in range(n_classes):
        i = np.flatnonzero(y == c)
        dx = grid[None, None, :] - cx[i, None, None]
        dy = grid[None, :, None] - cy[i, None, None]
        mask[i] = SHAPES[c](dx, dy, r[i, None, None])
    m = mask[:, None].astype(np.float32)
    x = bg[:, :, None, None] * (1 - m) + fg[:, :, None, None] * m + noise
    x -= x.mean(axis=(0, 2, 3), keepdims=True)
    x /= x.std(axis=(0, 2, 3), keepdims=True)
    return Dataset(x.astype(np.float32), y, n_classes, "shapes")


def tokens(n: int = 2048, seq_len: int = 16, vocab: int = 32, n_rules: int = 4,
           seed: int = 0) -> Dataset:
    """Next-token prediction on sequences x[t+1] = (a*x[t] + b) mod vocab.

    Each sequence follows one of `n_rules` fixed (a, b) rules (a a unit mod
    vocab, so every rule is a permutation) from a random first token. The
    previous token alone narrows the answer to n_rules candidates (loss ln
    n_rules); looking one more token back identifies the rule. x, y: (n,
    seq_len) int64, y[:, t] = x[:, t+1] of the generated sequence.
    """
    units = [a for a in range(1, vocab) if gcd(a, vocab) == 1]
    if n_rules < 1 or n_rules > len(units) * (vocab - 1):
        raise SimdlError("dataset.tokens.n_rules", n_rules,
                         f"must be in 1..{len(units) * (vocab - 1)} for vocab {vocab}")
    rng = stream(seed, "tokens")
    pairs = [(a, b) for a in units for b in range(1, vocab)]
    chosen = rng.choice(len(pairs), size=n_rules, replace=False)
    a, b = np.array([pairs[i] for i in chosen], dtype=np.int64).T
    rule = _balanced_labels(rng, n, n_rules)
    seq = np.empty((n, seq_len + 1), dtype=np.int64)
    seq[:, 0] = rng.integers(0, vocab, n)
    for t in range(seq_len):
        seq[:, t + 1] = (a[rule] * seq[:, t] + b[rule]) % vocab
    return Dataset(seq[:, :-1].copy(), seq[:, 1:].copy(), vocab, "tokens")


DATASETS: dict[str, Callable[..., Dataset]] = {
    "gaussian_mixture": gaussian_mixture,
    "shapes": shapes,
    "tokens": tokens,
}
