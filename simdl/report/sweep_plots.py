"""Figures of a sweep table (one row per swept point and strategy, a column per swept
field and per figure of the summary): a heat map of one value over two swept fields,
and one value against one field with a line per strategy.

Owns the drawing only; the table comes from whoever ran the sweep (`simdl.api` or a
notebook's loop). Same conventions as `report.plots`: matplotlib's object API on the
Agg canvas, a Figure returned, a PNG written by `report.frame` when a `path` is given
(the line plot placed by its measured margins; the heat map, with its colour bar,
by matplotlib's constrained layout).
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from simdl.errors import SimdlError
from simdl.report import frame


def _check(table: pd.DataFrame, columns: Sequence[tuple[str, str]], key: Sequence[str]) -> None:
    """Each (argument, column) names a column of `table`, and no two rows share `key`
    (one value per cell or point: a sweep table with another swept field left free
    would otherwise be drawn as whichever row came last)."""
    for argument, column in columns:
        if column not in table.columns:
            raise SimdlError(argument, column,
                             f"a column of the table: {', '.join(map(str, table.columns))}")
    repeated = table[table.duplicated(list(key), keep=False)]
    if len(repeated):
        first = tuple(v.item() if isinstance(v, np.generic) else v
                      for v in repeated[list(key)].iloc[0])
        raise SimdlError(", ".join(key), first,
                         "one row per point: filter the table on its other swept fields first")


def _label(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, (float, np.floating)) else str(value)


def heatmap(table: pd.DataFrame, x: str, y: str, value: str, *,
            path: str | os.PathLike[str] | None = None, title: str = "",
            log_colour: bool = False) -> Figure:
    """`value` over the grid of `x` (columns) and `y` (rows), each cell coloured and
    written; a cell no row gives stays blank. Axis values in sorted order.
    `log_colour`: colours by log10 of the value (values spanning decades)."""
    _check(table, (("x", x), ("y", y), ("value", value)), (x, y))
    grid = table.pivot(index=y, columns=x, values=value)  # rows and columns sorted
    cells = grid.to_numpy(dtype=float)
    shown = np.log10(cells) if log_colour else cells
    fig = Figure(figsize=(1.6 + 0.9 * max(grid.shape[1], 4), 1.4 + 0.5 * max(grid.shape[0], 3)),
                 dpi=frame.DPI, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(shown), aspect="auto", cmap="viridis",
                      origin="lower")
    fig.colorbar(image, ax=ax, label=f"log10 {value}" if log_colour else value)
    finite = shown[np.isfinite(shown)]
    middle = (finite.min() + finite.max()) / 2 if len(finite) else 0.0
    for (i, j), v in np.ndenumerate(cells):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=7,
                    color="white" if shown[i, j] < middle else "black")
    ax.set_xticks(range(grid.shape[1]), [_label(v) for v in grid.columns])
    ax.set_yticks(range(grid.shape[0]), [_label(v) for v in grid.index])
    ax.set(xlabel=x, ylabel=y, title=title or f"{value} over {x} and {y}")
    if path is not None:
        frame.png(fig, path)
    return fig


def lines(table: pd.DataFrame, x: str, value: str, *, by: str = "strategy",
          path: str | os.PathLike[str] | None = None, title: str = "",
          log_x: bool = False, log_y: bool = False) -> Figure:
    """`value` against `x`, one line (with markers) per value of `by`, points in order
    of `x`; lines in order of first appearance in the table."""
    _check(table, (("x", x), ("value", value), ("by", by)), (by, x))
    fig, axes = frame.new(8, 4.5)
    ax = axes[0, 0]
    for name, rows in table.groupby(by, sort=False):
        rows = rows.sort_values(x)
        ax.plot(rows[x], rows[value], marker="o", markersize=4, linewidth=1.3, label=str(name))
    if log_x:
        ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    ax.set(xlabel=x, ylabel=value, title=title or f"{value} against {x}")
    ax.grid(color="0.9", linewidth=0.6)
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    frame.fit(fig, axes)
    if path is not None:
        frame.png(fig, path)
    return fig
