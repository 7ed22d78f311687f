"""What a training run measures per step, for training.csv and its plots.

One row per optimizer step (or round): simulated time, training loss, the step's
time split into compute, communication and waiting, bytes each worker sent;
rows where the held-out set was evaluated add its loss and accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

COLUMNS = ("step", "t", "loss", "eval_loss", "accuracy", "compute_s", "comm_s", "wait_s",
           "bytes_per_worker", "staleness")


@dataclass
class TrainingMetrics:
    """Rows keyed by COLUMNS; a missing value is NaN (e.g. accuracy between evaluations)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # run-level figures (e.g. per-device accuracy)

    def add(self, **row: Any) -> None:
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise KeyError(f"unknown training columns {sorted(unknown)}; known: {COLUMNS}")
        self.rows.append(row)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=list(COLUMNS))
