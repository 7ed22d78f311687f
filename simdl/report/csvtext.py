"""The CSV text of a table, built column by column: each distinct value formatted once,
text quoted as the csv module's QUOTE_MINIMAL does; byte for byte what pandas' `to_csv`
writes with simdl's settings, at a fraction of its cost on long event logs.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

#: Fixed float format for CSV: enough digits for the results, the same bytes every run.
FLOAT_FORMAT = "%.9g"


def csv_text(df: pd.DataFrame) -> str:
    """`df.to_csv(index=False, float_format=FLOAT_FORMAT, lineterminator="\\n")`, the
    same text (`csv_lines` joined)."""
    lines = csv_lines(df)
    return lines if isinstance(lines, str) else "\n".join(lines) + "\n"


def csv_lines(df: pd.DataFrame) -> list[str] | str:
    """The lines (without their "\\n") `df.to_csv(index=False, float_format=FLOAT_FORMAT,
    lineterminator="\\n")` writes, built column by column: each distinct value is
    formatted once, text quoted as `csv.QUOTE_MINIMAL` does. Columns of other kinds
    than numbers, booleans and text (and names other than unique text) are left to
    pandas, whose whole text is returned then."""
    names = list(df.columns)
    plain = names and len(set(names)) == len(names) and all(type(c) is str for c in names)
    cells = [_csv_cells(df[c]) for c in names] if plain else [None]
    if any(c is None for c in cells):
        return df.to_csv(index=False, float_format=FLOAT_FORMAT, lineterminator="\n")
    if len(cells) == 1:  # a lone empty field is written "" so the line is not blank
        cells = [[f or '""' for f in cells[0]]]
    header = ",".join(_quoted(c) or '""' * (len(names) == 1) for c in names)
    return [header, *map(",".join, zip(*cells))]


def _quoted(text: str) -> str:
    """A CSV field as `csv.QUOTE_MINIMAL` writes it: quoted, its quotes doubled, when it
    holds the delimiter, the quote character or the line terminator."""
    if "," in text or '"' in text or "\n" in text:
        return '"' + text.replace('"', '""') + '"'
    return text


def _csv_cells(column: pd.Series) -> list[str] | None:
    """One column's CSV fields as pandas writes them ("" for missing), or None when
    pandas must decide (a kind of column this does not cover)."""
    dtype = column.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        names = column.cat.categories.tolist()
        if not all(type(x) is str for x in names):
            return None
        return _spread([_quoted(x) for x in names], column.cat.codes.to_numpy())
    if dtype == "float64":
        codes, values = pd.factorize(column.to_numpy().view("int64"))  # -0.0 apart from 0.0
        text = [FLOAT_FORMAT % v if not math.isnan(v) else "" for v in
                values.view("float64").tolist()]
        return _spread(text, codes)
    if dtype.kind in "iu" and isinstance(dtype, np.dtype):
        codes, values = pd.factorize(column.to_numpy())
        return _spread([str(v) for v in values.tolist()], codes)
    if dtype == "bool":
        return ["True" if v else "False" for v in column.tolist()]
    if pd.api.types.is_string_dtype(dtype):
        values = column.tolist()
        if dtype != object:  # pandas' own text type: text, or a missing value
            return [_quoted(v) if isinstance(v, str) else "" for v in values]
        if all(type(v) is str for v in values):
            return [_quoted(v) for v in values]
    return None


def _spread(text: list[str], codes: np.ndarray) -> list[str]:
    """Each row's text by its code into `text`; code -1 (missing) is ""."""
    return np.array(text + [""], dtype=object)[codes].tolist()
