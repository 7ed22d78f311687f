"""The one event log every table, plot and trace is derived from.

Rows are plain tuples appended to a list (cheap on the hot path); pandas turns
them into a DataFrame at the end. Columns are fixed and named once, here.
"""
from __future__ import annotations

from typing import Any

import pandas as pd

COLUMNS = ("t_start", "t_end", "kind", "device", "resource", "label",
           "flops", "nbytes", "request", "step")

#: What a row's `kind` says happened.
KINDS = {
    "compute": "a kernel ran on a device's unit",
    "transfer": "a flow moved bytes from `device` to `resource` (the destination)",
    "alloc": "memory held on a device (nbytes > 0) or given back (nbytes < 0)",
    "leave": "a device left the pool (label says why)",
    "lost": "work in flight on a device that left; it did not complete",
    "request": "an inference request served: arrival to answer (label: the device path)",
    "dropped": "an inference request that could not be served (label: why)",
    "step": "one worker's (or stage's) training step (resource: the sync kind)",
    "apply": "a parameter server applied one worker's gradient (asynchronous modes)",
    "memwait": "a request's micro-batch waited for memory on its path (device: the first "
               "that was short; nbytes: what it wanted there)",
}


class EventLog:
    """An append-only list of rows with the fixed COLUMNS."""

    __slots__ = ("rows",)

    def __init__(self) -> None:
        self.rows: list[tuple[Any, ...]] = []

    def add(self, t_start: float, t_end: float, kind: str, device: str, resource: str = "",
            label: str = "", flops: float = 0.0, nbytes: float = 0.0,
            request: int = -1, step: int = -1) -> None:
        self.rows.append((t_start, t_end, kind, device, resource, label,
                          flops, nbytes, request, step))

    def __len__(self) -> int:
        return len(self.rows)

    def frame(self) -> pd.DataFrame:
        """The log as a DataFrame, in the order things were recorded."""
        return pd.DataFrame.from_records(self.rows, columns=list(COLUMNS))
