"""Knowledge distillation (Hinton, Vinyals & Dean 2015): a student learns a teacher's soft labels.

`DistillationLoss` is the loss kernel (forward returns its cache, backward the
gradient w.r.t. the student's logits); `distill` trains a student chain in place
from a teacher chain run in inference mode, with `fit`'s batches and optimizers.
Knows chains, datasets and optimizers; knows nothing of devices or time.
"""
from __future__ import annotations

import math

import numpy as np

from simdl.errors import SimdlError
from simdl.nn.chain import Chain
from simdl.nn.core import Cache, Cost, Shape, nbytes
from simdl.nn.data import Dataset
from simdl.nn.dense import SoftmaxCrossEntropy, kernel_cost, numel
from simdl.nn.fit import _check
from simdl.nn.optim import OPTIMIZERS
from simdl.rng import stream

__all__ = ["DistillationLoss", "distill"]


def log_softmax(z: np.ndarray) -> np.ndarray:
    """log softmax over the last axis, max-shifted: no overflow, finite where softmax underflows."""
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


class DistillationLoss:
    """alpha T^2 KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) CE(student, labels).

    Logits (N, C) with labels (N,), or (N, T, C) with labels (N, T). The soft term
    is the mean KL over all N (or N*T) positions; the hard term is
    SoftmaxCrossEntropy, so labels < 0 drop out of it only (the teacher still
    teaches there: a transfer set needs no labels, Hinton et al. sec. 2). With
    alpha = 1, `labels` may be None.

    Gradient w.r.t. the student logits s, with q = softmax(s/T), p = softmax(t/T)
    over M positions: alpha * T * (q - p) / M + (1 - alpha) * dCE/ds. The soft
    term's raw gradient is (q - p) / (T M), which shrinks like 1/T^2 at high T
    ((q - p) ~ (s - t) / (T C)); the T^2 factor keeps its weight against the hard
    term roughly independent of T (Hinton et al. sec. 2.1).
    """

    def __init__(self, temperature: float = 4.0, alpha: float = 0.7):
        if not (isinstance(temperature, (int, float, np.floating)) and 0 < temperature < math.inf):
            raise SimdlError("distill.temperature", temperature, "a positive number")
        if not (isinstance(alpha, (int, float, np.floating)) and 0.0 <= alpha <= 1.0):
            raise SimdlError("distill.alpha", alpha, "a weight in [0, 1]")
        self.temperature, self.alpha = float(temperature), float(alpha)
        self._ce = SoftmaxCrossEntropy()

    def forward(self, student_logits: np.ndarray, teacher_logits: np.ndarray,
                labels: np.ndarray | None) -> tuple[float, Cache]:
        """(mean loss, cache). A term whose weight is 0 is not computed (alpha = 0 is plain CE)."""
        s, t = student_logits, np.asarray(teacher_logits, student_logits.dtype)
        if t.shape != s.shape:
            raise SimdlError("distill.teacher_logits", t.shape,
                             f"need the student logits' shape {s.shape}")
        a, temp = self.alpha, self.temperature
        soft = hard = 0.0
        q = p = ce_cache = None
        if a > 0:
            c = s.shape[-1]
            log_q = log_softmax(s.reshape(-1, c) / temp)      # (M, C) student at temperature T
            log_p = log_softmax(t.reshape(-1, c) / temp)      # (M, C) teacher at temperature T
            p, q = np.exp(log_p), np.exp(log_q)
            soft = float(np.sum(p * (log_p - log_q)) / log_q.shape[0])
        if a < 1:
            if labels is None:
                raise SimdlError("distill.labels", None, "labels are needed when alpha < 1")
            hard, ce_cache = self._ce.forward(s, labels)
        loss = a * temp * temp * soft + (1.0 - a) * hard
        return loss, (q, p, ce_cache, s.shape)

    def cost(self, in_shape: Shape) -> Cost:
        """Per logit, forward: two temperature log-softmaxes (4 FLOPs each: shift, exp,
        sum, subtract the log), the KL sum (3) and the hard cross-entropy (5); backward:
        the soft gradient (3) and the hard one (2). Both probability arrays are kept."""
        n = numel(in_shape)
        return kernel_cost(in_shape, (), 16 * n, 5 * n, saved_bytes=2 * nbytes(in_shape))

    def backward(self, cache: Cache) -> np.ndarray:
        """d loss / d student_logits, the logits' shape and dtype."""
        q, p, ce_cache, shape = cache
        d = self._ce.backward(ce_cache) * (1.0 - self.alpha) if ce_cache is not None else None
        if q is not None:
            soft = ((self.alpha * self.temperature / q.shape[0]) * (q - p)).reshape(shape)
            d = soft if d is None else d + soft
        return d


def distill(student: Chain, teacher: Chain, data: Dataset, steps: int, batch: int = 32,
            temperature: float = 4.0, alpha: float = 0.7, optimizer: str = "adam",
            lr: float = 1e-3, seed: int = 0) -> list[float]:
    """Train `student` in place from `teacher`'s soft labels; returns each step's batch loss.

    The teacher runs in inference mode and is never changed. Batches, optimizer and
    the ragged-batch rule are `fit`'s, from the same stream `stream(seed, "fit")`:
    distill and fit with one seed see the same batches (a fair comparison), and
    alpha = 0 reproduces `fit` bit for bit. Same inputs -> the same losses.
    """
    _check(student, data, "distill", steps=steps, batch=batch)
    if teacher.n_classes != student.n_classes:
        raise SimdlError("distill.teacher", teacher.name or "teacher",
                         f"predicts {teacher.n_classes} classes; the student "
                         f"{student.name!r} predicts {student.n_classes}")
    if optimizer not in OPTIMIZERS:
        raise SimdlError("distill.optimizer", optimizer,
                         f"choose one of: {', '.join(sorted(OPTIMIZERS))}")
    loss_fn = DistillationLoss(temperature, alpha)
    opt = OPTIMIZERS[optimizer](lr=lr)
    rng = stream(seed, "fit")
    params, grads = student.params(), student.grads()
    losses: list[float] = []
    for _, (x, y) in zip(range(steps), data.forever(batch, rng)):
        soft_targets = teacher.forward(x)[0]          # inference mode: no caches kept
        student.zero_grad()
        logits, caches = student.forward(x, train=True)
        loss, cache = loss_fn.forward(logits, soft_targets, y)
        student.backward(loss_fn.backward(cache), caches)
        opt.step(params, grads)
        losses.append(loss)
    return losses
