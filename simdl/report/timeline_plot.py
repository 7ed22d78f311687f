"""The timeline (Gantt) of a run: one row per device unit and per link, kernels and
transfers as bars, lost work hatched red, departures and returns as lines across the
device's rows.

Large runs stay legible and cheap: all bars of one style are one collection; past
MAX_ROWS lanes, neighbouring lanes are drawn as one row (their mean), and past
MAX_BARS bars the timeline shows each lane's busy share per time bin instead of
one bar per event. The figure says what it grouped.
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from simdl.report import frame
from simdl.report.plots import COLOURS, MAX_HEIGHT_IN, MAX_ROWS, grouped
from simdl.report.columns import clean

#: Up to this many bars, the timeline writes each bar's label inside it.
LABELLED_BARS = 60
#: Beyond this many src>dst pairs, the timeline draws one row per sender instead.
MAX_LINK_ROWS = 16
#: Beyond this many bars, the timeline draws busy shares per time bin: thinner bars
#: than a pixel would only merge, and drawing each costs time.
MAX_BARS = 20_000
#: Time bins of a busy-share timeline (about two pixels each).
BINS = 400
#: The lightest shade of a busy-share timeline, for a bin barely used; below IDLE, white.
TINT = {"compute": "#DCE3EF", "transfer": "#F7E0D0"}
IDLE = 1e-12




def _time_scale(end: float) -> tuple[float, str]:
    """Seconds, or milliseconds for runs shorter than a second."""
    return (1e3, "ms") if 0 < end < 1 else (1.0, "s")


def natural(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that puts pc2 before pc10: digit runs compare as numbers."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", name) if p)


def _natural_key(key: tuple[str, ...]) -> tuple[tuple[tuple[int, int | str], ...], ...]:
    return tuple(natural(part) for part in key)


def busy_share(lane: np.ndarray, start: np.ndarray, end: np.ndarray, lanes: int,
               edges: np.ndarray) -> np.ndarray:
    """(lanes, bins): the share of each time bin (between consecutive `edges`) in which
    each lane had at least one span [start, end) running; overlapping spans count once."""
    bins = len(edges) - 1
    order = np.lexsort((start, lane))
    lane, start, end = lane[order], start[order], end[order]
    # The union per lane as disjoint pieces: each span from where the lane's reach was.
    reach = pd.Series(end).groupby(lane).cummax().to_numpy()
    before = pd.Series(reach).groupby(lane).shift(1, fill_value=-np.inf).to_numpy()
    a = np.maximum(start, before)
    b = np.maximum(end, a)
    first = np.clip(np.searchsorted(edges, a, side="right") - 1, 0, bins - 1)
    last = np.clip(np.searchsorted(edges, b, side="right") - 1, 0, bins - 1)
    # A piece within one bin adds its length; otherwise its ends' parts, and the whole
    # width of every bin between them.
    head = np.where(first == last, b - a, edges[first + 1] - a)
    tail = np.where(first == last, 0.0, b - edges[last])
    flat = lanes * bins
    busy = np.bincount(lane * bins + first, weights=head, minlength=flat)
    busy += np.bincount(lane * bins + last, weights=tail, minlength=flat)
    steps = lanes * (bins + 1)  # +1 where whole bins start, -1 where they stop
    covered = np.bincount(lane * (bins + 1) + np.minimum(first + 1, last), minlength=steps)
    covered -= np.bincount(lane * (bins + 1) + last, minlength=steps)
    full = np.cumsum(covered.reshape(lanes, bins + 1), axis=1)[:, :bins]
    widths = np.diff(edges)
    return (busy.reshape(lanes, bins) + full * widths) / widths


def _lanes(table: pd.DataFrame, columns: Sequence[str]) -> tuple[list[tuple[str, ...]],
                                                                  np.ndarray]:
    """The distinct values of `columns` in `table`, in natural order (the lanes), and
    each row's lane: found through codes, never by walking the rows in Python."""
    key = np.zeros(len(table), dtype=np.int64)
    parts = []
    for c in columns:
        codes, values = pd.factorize(table[c])
        key = key * (len(values) + 1) + codes
        parts.append((codes, list(values)))
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    lanes = [tuple(values[codes[i]] for codes, values in parts) for i in first]
    order = sorted(range(len(lanes)), key=lambda i: _natural_key(lanes[i]))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return [lanes[i] for i in order], rank[inverse.reshape(-1)]


def _row_of(rows: list[tuple[str, slice]]) -> np.ndarray:
    """The row each lane is drawn in."""
    out = np.zeros(rows[-1][1].stop if rows else 0, dtype=np.int64)
    for r, (_, part) in enumerate(rows):
        out[part] = r
    return out


def timeline(events: pd.DataFrame, path: str | os.PathLike[str], title: str = "") -> Path:
    """Write `timeline_figure` as a PNG."""
    return frame.png(timeline_figure(events, title), path)


def timeline_figure(events: pd.DataFrame, title: str = "") -> Figure:
    """Gantt chart: one row per device unit and per src>dst pair (per sender when there
    are many pairs); lost work red, a departure a red line across its rows, a return a
    green one, and the time between them a pale red band. Past
    MAX_ROWS lanes neighbours share a row; past MAX_BARS bars (or with shared rows)
    each row shows its busy share per time bin instead of bars."""
    events = clean(events)
    codes, kinds = pd.factorize(events["kind"])  # compare small codes, not text, per row
    kind = pd.Series(pd.Categorical.from_codes(codes, kinds), index=events.index)
    worked = events.loc[kind.isin(("compute", "lost")), ["kind", "device", "resource", "label",
                                                         "t_start", "t_end"]]
    transfers = events.loc[kind == "transfer", ["device", "resource", "label", "t_start",
                                                "t_end"]]
    leaves = events.loc[kind == "leave", ["device", "t_start"]]
    joins = events.loc[kind == "join", ["device", "t_start"]]
    units, unit_lane = _lanes(worked, ["device", "resource"])
    links, link_lane = _lanes(transfers, ["device", "resource"])
    # Past a screenful of pairs, one row per sender keeps the figure readable.
    per_sender = len(links) > MAX_LINK_ROWS
    if per_sender:
        links, link_lane = _lanes(transfers, ["device"])
    unit_names = [f"{d} {u}" for d, u in units]
    link_names = [f"{s[0]} → *" if per_sender else f"{s[0]} → {s[1]}" for s in links]

    end = max([float(worked["t_end"].max()) if len(worked) else 0.0,
               float(transfers["t_end"].max()) if len(transfers) else 0.0,
               float(leaves["t_start"].max()) if len(leaves) else 0.0,
               float(joins["t_start"].max()) if len(joins) else 0.0])
    scale, unit = _time_scale(end)
    size = math.ceil((len(units) + len(links)) / MAX_ROWS) or 1
    binned = size > 1 or len(worked) + len(transfers) > MAX_BARS
    unit_rows, link_rows = grouped(unit_names, size), grouped(link_names, size)
    labels = [name for name, _ in unit_rows + link_rows]

    height = min(MAX_HEIGHT_IN, 1.6 + 0.32 * max(len(labels), 1))
    fig, axes = frame.new(11, height)
    ax = axes[0, 0]
    if binned:
        note = _binned(ax, worked, unit_lane, unit_rows, transfers, link_lane, link_rows,
                       end, scale)
    else:
        _bars(ax, worked, unit_lane, transfers, link_lane, len(units), end, scale)
        note = ""
    # Departures red and returns green: one line collection each, across the device's
    # rows, each named; a pale band from a return back to the departure before it.
    row_of_unit = _row_of(unit_rows)

    def rows_of(device: str) -> tuple[float, float]:
        own = [row_of_unit[i] for i, (d, _) in enumerate(units) if d == device]
        return (min(own) - 0.5, max(own) + 0.5) if own else (-0.5, len(labels) - 0.5)

    bands = []
    for marked, style, word in ((leaves, "lost", "left"), (joins, "join", "joined")):
        marks = sorted(set(zip(marked["device"], marked["t_start"])))
        spans = [rows_of(device) for device, _ in marks]
        if marks:
            ax.vlines([when * scale for _, when in marks], [low for low, _ in spans],
                      [high for _, high in spans], colors=COLOURS[style], linewidth=1.6)
        for (device, when), (low, high) in zip(marks, spans):
            ax.annotate(f"{device} {word}", (when * scale, high), xytext=(3, -10),
                        textcoords="offset points", color=COLOURS[style], fontsize=8)
            if style != "join":
                continue
            left = leaves.loc[(leaves["device"] == device) & (leaves["t_start"] <= when),
                              "t_start"]
            if len(left):
                bands.append((low, high, float(left.max()) * scale, when * scale))
    if bands:
        low, high, start, stop = (np.array(column) for column in zip(*bands))
        frame.hbars(ax, (low + high) / 2, start, stop, high - low, color=COLOURS["lost"],
                    alpha=0.12)

    if labels:
        ax.set_yticks(range(len(labels)), labels, fontsize=8 if len(labels) > 30 else 9)
        ax.set_ylim(len(labels) - 0.5, -0.5)
        if unit_rows and link_rows:
            ax.axhline(len(unit_rows) - 0.5, color="0.6", linewidth=0.8)
    else:
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no compute or transfer in the log", ha="center", va="center",
                transform=ax.transAxes, color="0.4")
    ax.set_xlim(0, end * scale * 1.02 if end > 0 else 1)
    ax.set_xlabel(f"simulated time ({unit})" + (f"; {note}" if note else ""))
    if not binned:  # grid lines would cross the shaded bins
        ax.grid(axis="x", color="0.9", linewidth=0.6)
        ax.set_axisbelow(True)
    ax.set_title(title or "Timeline: kernels per unit, transfers per link")
    lost = (Line2D([], [], color=COLOURS["lost"], marker="x", linestyle="", label="lost work")
            if binned else
            Patch(facecolor="none", edgecolor=COLOURS["lost"], hatch="///", label="lost work"))
    handles = [Patch(facecolor=COLOURS["compute"], label="compute"),
               Patch(facecolor=COLOURS["transfer"], label="transfer"), lost]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8,
              frameon=False)
    frame.value_ticks(ax.xaxis)
    frame.fit(fig, axes)
    return fig


def _bars(ax: Axes, worked: pd.DataFrame, unit_lane: np.ndarray, transfers: pd.DataFrame,
          link_lane: np.ndarray, units: int, end: float, scale: float) -> None:
    """One bar per kernel, transfer and lost kernel, one collection per style."""
    few = len(worked) + len(transfers) <= LABELLED_BARS
    # White edges separate back-to-back kernels; with many bars they would hide thin ones.
    edge = {"edgecolors": "white", "linewidths": 0.8} if few else {"linewidths": 0.4}
    done = (worked["kind"] == "compute").to_numpy()
    styles = [
        (worked[done], unit_lane[done], "white",
         {"facecolors": COLOURS["compute"], "edgecolors": COLOURS["compute"]} | edge),
        (transfers, link_lane + units, "white",
         {"facecolors": COLOURS["transfer"], "alpha": 0.8, "edgecolors": COLOURS["transfer"]}
         | edge),
        (worked[~done], unit_lane[~done], COLOURS["lost"],
         {"facecolors": "none", "edgecolors": COLOURS["lost"], "hatch": "///",
          "linewidths": 0.8}),
    ]
    for table, lane, ink, style in styles:
        if not len(table):
            continue
        start, stop = table["t_start"].to_numpy(), table["t_end"].to_numpy()
        frame.hbars(ax, lane, start * scale, stop * scale, 0.76, **style)
        if few:
            for label, row, s, e in zip(table["label"], lane, start, stop):
                if label and (e - s) >= 0.06 * end:
                    ax.text((s + e) / 2 * scale, row, label, ha="center", va="center",
                            fontsize=7, color=ink, clip_on=True)


def _binned(ax: Axes, worked: pd.DataFrame, unit_lane: np.ndarray,
            unit_rows: list[tuple[str, slice]], transfers: pd.DataFrame,
            link_lane: np.ndarray, link_rows: list[tuple[str, slice]], end: float,
            scale: float) -> str:
    """Each row's busy share per time bin (the mean of its lanes), compute rows in blue
    and link rows in orange, lost kernels as red marks. Returns what the axis says."""
    edges = np.linspace(0.0, end if end > 0 else 1.0, BINS + 1)
    sections = ((worked, unit_lane, unit_rows, "compute", 0),
                (transfers, link_lane, link_rows, "transfer", len(unit_rows)))
    for table, lane, rows, style, top in sections:
        if not rows:
            continue
        lanes = rows[-1][1].stop
        share = busy_share(lane, table["t_start"].to_numpy(), table["t_end"].to_numpy(),
                           lanes, edges)
        shown = np.stack([share[part].mean(axis=0) for _, part in rows])
        # Any work at all shows as a tint; white is an idle bin.
        colours = LinearSegmentedColormap.from_list(
            style, [TINT[style], COLOURS[style]]).with_extremes(under="white")
        ax.imshow(shown, cmap=colours, vmin=IDLE, vmax=1.0, aspect="auto",
                  interpolation="nearest", origin="upper",
                  extent=(0.0, edges[-1] * scale, top + len(rows) - 0.5, top - 0.5))
    lost = (worked["kind"] == "lost").to_numpy()
    if lost.any():
        ax.scatter(worked.loc[lost, "t_end"].to_numpy() * scale,
                   _row_of(unit_rows)[unit_lane[lost]],
                   marker="x", color=COLOURS["lost"], s=18, linewidths=1.0, zorder=3)
    size = max([r[1].stop - r[1].start for r in unit_rows + link_rows], default=1)
    width = edges[1] - edges[0]
    note = ("shade: busy share of each " + (f"{width * 1e3:.3g} ms" if width < 1 else
                                            f"{width:.3g} s") + " bin")
    return note + (f", rows of up to {size} lanes averaged" if size > 1 else "")
