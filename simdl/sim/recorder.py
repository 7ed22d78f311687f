"""The one event log every table, plot and trace is derived from.

Rows are plain tuples appended to a list (cheap on the hot path); `frame` turns
them into columns once, at the end, a column at a time rather than a row at a
time. Columns are fixed and named once, here.
"""
from __future__ import annotations

from operator import itemgetter
from typing import Any

import numpy as np
import pandas as pd

COLUMNS = ("t_start", "t_end", "kind", "device", "resource", "label",
           "flops", "nbytes", "request", "step")
#: Columns of text: few distinct kinds, devices and resources; a label per event.
TEXT = ("kind", "device", "resource", "label")
#: The numbers' dtypes (text columns are pandas' text type).
NUMBERS = {"t_start": "float64", "t_end": "float64", "flops": "float64", "nbytes": "float64",
           "request": "int64", "step": "int64"}

#: What a row's `kind` says happened.
KINDS = {
    "compute": "a kernel ran on a device's unit",
    "transfer": "a flow moved bytes from `device` to `resource` (the destination)",
    "alloc": "memory held on a device (nbytes > 0) or given back (nbytes < 0)",
    "leave": "a device left the pool (label says why)",
    "join": "a device that had left joined the pool again (label says why)",
    "speed": "a unit's rate times a factor from now on (resource: the unit; label: x<factor>)",
    "link": "a link's bandwidth factor or loss from now on (resource: the link; label: what)",
    "lost": "work in flight on a device that left; it did not complete",
    "request": "an inference request completed: arrival to answer (label: the device path)",
    "failed": "an inference request that ended unserved: arrival to its end (label: the cause)",
    "retry": "an attempt of a request abandoned, to be retried (label: why)",
    "late": "an abandoned attempt's answer that came after all; not used",
    "planwait": "a request waited while weights moved to a new plan",
    "replan": "the serving plan changed (label: its path; nbytes: the weights moved)",
    "step": "one worker's (or stage's) training step (resource: the sync kind)",
    "apply": "a parameter server applied one worker's gradient (asynchronous modes)",
    "memwait": "a request's micro-batch waited for memory on its path (device: the first "
               "that was short; nbytes: what it wanted there)",
}


class EventLog:
    """An append-only list of rows with the fixed COLUMNS."""

    __slots__ = ("_frame", "rows")

    def __init__(self) -> None:
        self.rows: list[tuple[Any, ...]] = []
        self._frame: tuple[int, pd.DataFrame] | None = None

    def add(self, t_start: float, t_end: float, kind: str, device: str, resource: str = "",
            label: str = "", flops: float = 0.0, nbytes: float = 0.0,
            request: int = -1, step: int = -1) -> None:
        self.rows.append((t_start, t_end, kind, device, resource, label,
                          flops, nbytes, request, step))

    def __len__(self) -> int:
        return len(self.rows)

    def frame(self) -> pd.DataFrame:
        """The log as a DataFrame, in the order things were recorded. Built once per
        length of the log (rows are only ever appended); each call gets its own copy."""
        if self._frame is None or self._frame[0] != len(self.rows):
            self._frame = (len(self.rows), columns(self.rows))
        return self._frame[1].copy(deep=False)


def columns(rows: list[tuple[Any, ...]]) -> pd.DataFrame:
    """Rows (tuples in COLUMNS order) as one DataFrame: float64 times and sizes, int64
    request and step, text columns as pandas' text type; the table
    `pd.DataFrame.from_records` makes of them. Each column is read out of the rows on its
    own (`np.fromiter` over an item getter): the fastest of the ways measured
    (bench/README.md, "Engine after issue 14")."""
    n = len(rows)
    data: dict[str, Any] = {}
    for i, c in enumerate(COLUMNS):
        got = np.fromiter(map(itemgetter(i), rows), dtype=NUMBERS.get(c, object), count=n)
        data[c] = pd.array(got, dtype="str") if c in TEXT else got
    return pd.DataFrame(data, columns=list(COLUMNS), copy=False)  # the arrays are its own
