"""The event log as the tables read it: its dtypes fixed (`clean`), its text columns
coded once and each kind's rows found once (`Columns`), and the sums, minima and
lookups the tables need, adding as pandas adds (`by_key`, `total`) so that every
figure keeps its bits without pandas per small step.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from simdl.sim.recorder import COLUMNS, NUMBERS, TEXT


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
