"""The one event log every table, plot and trace is derived from.

Rows are plain tuples appended to a list (cheap on the hot path); `frame` turns
them into columns once, at the end, a column at a time rather than a row at a
time. Columns are fixed and named once, here. `Columns` is that frame as numpy
arrays for the tables, with `by_key` and `total` adding and comparing as pandas
does, so the tables keep their bits without pandas per small step.
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


def clean(events: pd.DataFrame) -> pd.DataFrame:
    """The log with its fixed columns and dtypes (also for a log read back from CSV)."""
    missing = [c for c in COLUMNS if c not in events.columns]
    if missing:
        raise ValueError(f"event log lacks columns {missing}; expected {list(COLUMNS)}")
    out = events if list(events.columns) == list(COLUMNS) else events.loc[:, list(COLUMNS)]
    fixes: dict[str, pd.Series] = {}
    for c, dtype in NUMBERS.items():
        if out[c].dtype != dtype:
            fixes[c] = out[c].astype(dtype)
    for c in TEXT:
        if not pd.api.types.is_string_dtype(out[c]) or _has_missing(out[c]):
            fixes[c] = out[c].fillna("").astype(str)
    # A log that is already clean is returned as is (the tables never modify it).
    return out.assign(**fixes) if fixes else out


def _has_missing(text: pd.Series) -> bool:
    """Whether a text column holds a missing value; pandas' own text type (whose only
    missing value is NaN) is checked by NaN != NaN, twice as fast as `isna`."""
    if text.dtype == "str":
        values = text.to_numpy(dtype=object)
        return bool(np.not_equal(values, values).any())
    return bool(text.isna().any())


class Coded:
    """A text column as codes into its distinct values, sorted (as text sorts)."""

    __slots__ = ("_code", "_text", "codes", "names")

    def __init__(self, values: np.ndarray):
        self.codes, names = pd.factorize(values, sort=True)
        self.names: list[str] = [str(n) for n in names]
        self._code = {n: i for i, n in enumerate(self.names)}
        self._text = np.array(self.names, dtype=object)

    def code(self, name: str) -> int:
        """`name`'s code; -1 (no row's) when no row has it."""
        return self._code.get(name, -1)

    def of(self, rows: np.ndarray) -> np.ndarray:
        """The values of `rows` (indices), as an object array of text."""
        return self._text[self.codes[rows]] if len(self.names) else np.empty(len(rows), object)


class Columns:
    """A clean log as numpy arrays, which the tables select from and add up: each text
    column but the label coded once (on first use), each kind's rows found once."""

    def __init__(self, events: pd.DataFrame):
        events = clean(events)
        self.events = events
        self.size = len(events)
        self.t_start, self.t_end, self.flops, self.nbytes, self.request, self.step = (
            events[c].to_numpy() for c in NUMBERS)
        self.label = events["label"].to_numpy(dtype=object)
        self._coded: dict[str, Coded] = {}
        self._rows: dict[tuple[str, ...], np.ndarray] = {}

    @classmethod
    def of(cls, events: pd.DataFrame | Columns) -> Columns:
        """`events` as Columns (the same object when it is already)."""
        return events if isinstance(events, Columns) else cls(events)

    def coded(self, column: str) -> Coded:
        """A text column (kind, device or resource) as codes."""
        if column not in self._coded:
            self._coded[column] = Coded(self.events[column].to_numpy(dtype=object))
        return self._coded[column]

    def rows(self, *kinds: str) -> np.ndarray:
        """Indices of the rows of any of these kinds, in log order."""
        if kinds not in self._rows:
            kind = self.coded("kind")
            codes = [kind.code(k) for k in kinds if kind.code(k) >= 0]
            self._rows[kinds] = (np.flatnonzero(kind.codes == codes[0]) if len(codes) == 1
                                 else np.flatnonzero(np.isin(kind.codes, codes)))
        return self._rows[kinds]


#: The log as the tables take it: a DataFrame of COLUMNS, or Columns made of one.
Log = pd.DataFrame | Columns


def by_key(how: str, keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct keys (sorted) and each one's "sum", "min" or "max" of its values, as
    pandas' group-by gives them: NaN skipped, sums compensated (Kahan) in the given order,
    so that a table's figures keep their bits."""
    if len(keys) == 0:
        return keys, values.astype("float64")
    got = pd.Series(values, copy=False).groupby(keys, sort=True).agg(how)
    return got.index.to_numpy(), got.to_numpy()


def lookup(keys: np.ndarray, values: np.ndarray, wanted: np.ndarray, missing: Any) -> np.ndarray:
    """values[i] for each of `wanted` equal to keys[i] (`keys` sorted, distinct), `missing`
    for one not among them."""
    if len(keys) == 0:
        out = np.empty(len(wanted), dtype=values.dtype)
        out[:] = missing
        return out
    at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    return np.where(keys[at] == wanted, values[at], missing)


def total(values: np.ndarray) -> float:
    """The sum pandas' Series.sum gives: NaN skipped, added in numpy's (pairwise) order."""
    nan = np.isnan(values)
    return float(np.where(nan, 0.0, values).sum() if nan.any() else values.sum())
