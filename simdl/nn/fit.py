"""Pretraining before deployment: a small deterministic training loop, evaluation, prediction.

`fit` trains a chain in place (train-mode forward, softmax cross-entropy,
backward, one optimizer step per batch) so that the models a scenario deploys,
ensembles or compresses are trained and their accuracy changes mean something.
Same chain, data and seed -> the same losses, bit for bit.
Knows chains, datasets and optimizers; knows nothing of devices or time.
"""
from __future__ import annotations

import numpy as np

from simdl.errors import SimdlError
from simdl.nn.chain import Chain
from simdl.nn.data import Dataset
from simdl.nn.dense import SoftmaxCrossEntropy
from simdl.nn.optim import OPTIMIZERS
from simdl.rng import stream

__all__ = ["fit", "evaluate", "predict", "scores"]


def _check(chain: Chain, data: Dataset, where: str, **sizes: int) -> None:
    for field, value in sizes.items():
        low = 0 if field == "steps" else 1
        if int(value) != value or value < low:
            raise SimdlError(f"{where}.{field}", value, f"must be an integer >= {low}")
    if chain.n_classes is not None and chain.n_classes < data.n_classes:
        raise SimdlError(f"{where}.data", data.name or "dataset",
                         f"has {data.n_classes} classes; chain {chain.name!r} predicts "
                         f"only {chain.n_classes}")


def fit(chain: Chain, data: Dataset, steps: int, batch: int = 32, optimizer: str = "adam",
        lr: float = 1e-3, seed: int = 0) -> list[float]:
    """Train `chain` in place for `steps` optimizer steps; returns each step's batch loss.

    Batches come from `data.batches(batch, rng)` with one generator
    `stream(seed, "fit")` for the whole run, so epoch k's order is the k-th
    permutation it draws; epochs repeat until `steps` are done. A ragged last
    batch is dropped when the data holds at least one full batch (a 3-sample
    step would be noisier than the others). Gradients are zeroed before every
    step; the optimizer is `OPTIMIZERS[optimizer](lr=lr)` with its defaults.
    """
    _check(chain, data, "fit", steps=steps, batch=batch)
    if optimizer not in OPTIMIZERS:
        raise SimdlError("fit.optimizer", optimizer, f"choose one of: {', '.join(sorted(OPTIMIZERS))}")
    opt = OPTIMIZERS[optimizer](lr=lr)
    sce, rng = SoftmaxCrossEntropy(), stream(seed, "fit")
    params, grads = chain.params(), chain.grads()
    losses: list[float] = []
    for _, (x, y) in zip(range(steps), data.forever(batch, rng)):
        chain.zero_grad()
        logits, caches = chain.forward(x, train=True)
        loss, cache = sce.forward(logits, y)
        chain.backward(sce.backward(cache), caches, need_dx=False)
        opt.step(params, grads)
        losses.append(loss)
    return losses


def predict(chain: Chain, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """Logits of `chain` on `x` in inference mode, `batch` samples at a time, in order.

    (N, *in_shape) -> (N, n_classes) or (N, T, vocab). Inference-mode kernels
    treat samples independently, so `batch` only bounds the memory of one call.
    """
    if int(batch) != batch or batch < 1:
        raise SimdlError("predict.batch", batch, "must be an integer >= 1")
    if len(x) == 0:
        raise SimdlError("predict.x", x.shape, "need at least one sample")
    parts = [chain.forward(x[lo:lo + batch])[0] for lo in range(0, len(x), batch)]
    return np.concatenate(parts, axis=0)


def scores(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over the labelled positions (labels >= 0).

    Accuracy compares argmax over the last axis with the label; token data
    counts every labelled position.
    """
    loss, _ = SoftmaxCrossEntropy().forward(logits, labels)
    mask = np.asarray(labels) >= 0
    hits = (logits.argmax(axis=-1) == labels) & mask
    return loss, float(hits.sum() / max(int(mask.sum()), 1))


def evaluate(chain: Chain, data: Dataset, batch: int = 256) -> tuple[float, float]:
    """(mean loss, accuracy) of `chain` on all of `data` in inference mode."""
    _check(chain, data, "evaluate", batch=batch)
    return scores(predict(chain, data.x, batch), data.y)
