"""Figures of a run: the timeline (Gantt), utilisation per device, strategies compared.

Owns the drawing only; every number comes from the event log or the tables.
Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend,
nothing at import time) and writes PNGs through the store's atomic write.

Large runs stay legible and cheap: all bars of one style are one collection; past
MAX_ROWS lanes, neighbouring lanes are drawn as one row (their mean), and past
MAX_BARS bars the timeline shows each lane's busy share per time bin instead of
one bar per event. Every figure says what it grouped.
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
from matplotlib.collections import PolyCollection
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from simdl.report.store import write_png
from simdl.report.tables import clean

COLOURS = {"compute": "#4C72B0", "transfer": "#DD8452", "lost": "#C44E52", "join": "#55A868"}
#: Taller figures stop helping beyond this; rows then get thinner.
MAX_HEIGHT_IN = 24.0
#: Up to this many bars, the timeline writes each bar's label inside it.
LABELLED_BARS = 60
#: Beyond this many src>dst pairs, the timeline draws one row per sender instead.
MAX_LINK_ROWS = 16
#: Beyond this many lanes (or devices), neighbours share a row: legible tick labels.
MAX_ROWS = 40
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


def grouped(names: Sequence[str], size: int) -> list[tuple[str, slice]]:
    """Consecutive names in groups of `size` (the last may be smaller): (row label,
    the names' slice). A group's label names its first and last and counts them;
    a shared tail ("pc0 gpu" ... "pc6 gpu") is written once: "pc0 … pc6 gpu (7)"."""
    rows = []
    for i in range(0, len(names), size):
        part = names[i:i + size]
        label = part[0]
        if len(part) > 1:
            (head, _, tail), (last, _, other) = part[0].partition(" "), part[-1].partition(" ")
            label = (f"{head} … {last} {tail} ({len(part)})" if tail and tail == other
                     else f"{part[0]} … {part[-1]} ({len(part)})")
        rows.append((label, slice(i, i + len(part))))
    return rows


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


def _lanes(frame: pd.DataFrame, columns: Sequence[str]) -> tuple[list[tuple[str, ...]],
                                                                  np.ndarray]:
    """The distinct values of `columns` in `frame`, in natural order (the lanes), and
    each row's lane: found through codes, never by walking the rows in Python."""
    key = np.zeros(len(frame), dtype=np.int64)
    parts = []
    for c in columns:
        codes, values = pd.factorize(frame[c])
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
    return write_png(timeline_figure(events, title), path)


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
    fig = Figure(figsize=(11, height), layout="constrained")
    ax = fig.add_subplot()
    if binned:
        note = _binned(ax, worked, unit_lane, unit_rows, transfers, link_lane, link_rows,
                       end, scale)
    else:
        _bars(ax, worked, unit_lane, transfers, link_lane, len(units), end, scale)
        note = ""
    # Departures: a red line across the leaving device's rows.
    row_of_unit = _row_of(unit_rows)
    for device, when in sorted(set(zip(leaves["device"], leaves["t_start"]))):
        own = [row_of_unit[i] for i, (d, _) in enumerate(units) if d == device]
        low, high = (min(own) - 0.5, max(own) + 0.5) if own else (-0.5, len(labels) - 0.5)
        ax.vlines(when * scale, low, high, colors=COLOURS["lost"], linewidth=1.6)
        ax.annotate(f"{device} left", (when * scale, high), xytext=(3, -10),
                    textcoords="offset points", color=COLOURS["lost"], fontsize=8)
    # Returns: a green line, and a pale band back to the departure before it.
    for device, when in sorted(set(zip(joins["device"], joins["t_start"]))):
        own = [row_of_unit[i] for i, (d, _) in enumerate(units) if d == device]
        low, high = (min(own) - 0.5, max(own) + 0.5) if own else (-0.5, len(labels) - 0.5)
        left = leaves.loc[(leaves["device"] == device) & (leaves["t_start"] <= when), "t_start"]
        if len(left):
            ax.fill_betweenx([low, high], float(left.max()) * scale, when * scale,
                             color=COLOURS["lost"], alpha=0.12, linewidth=0)
        ax.vlines(when * scale, low, high, colors=COLOURS["join"], linewidth=1.6)
        ax.annotate(f"{device} joined", (when * scale, high), xytext=(3, -10),
                    textcoords="offset points", color=COLOURS["join"], fontsize=8)

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
    return fig


def _rectangles(lane: np.ndarray, start: np.ndarray, end: np.ndarray,
                scale: float) -> np.ndarray:
    """(n, 4, 2) corners of one bar per span, 0.76 of a row high."""
    x0, x1 = start * scale, end * scale
    y0, y1 = lane - 0.38, lane + 0.38
    return np.stack([np.stack([x0, y0], -1), np.stack([x0, y1], -1),
                     np.stack([x1, y1], -1), np.stack([x1, y0], -1)], axis=1)


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
    for frame, lane, ink, style in styles:
        if not len(frame):
            continue
        start, stop = frame["t_start"].to_numpy(), frame["t_end"].to_numpy()
        ax.add_collection(PolyCollection(_rectangles(lane, start, stop, scale), **style),
                          autolim=False)
        if few:
            for label, row, s, e in zip(frame["label"], lane, start, stop):
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
    for frame, lane, rows, style, top in sections:
        if not rows:
            continue
        lanes = rows[-1][1].stop
        share = busy_share(lane, frame["t_start"].to_numpy(), frame["t_end"].to_numpy(),
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


def _busy_columns(devices_df: pd.DataFrame) -> list[str]:
    return [c for c in devices_df.columns if c.startswith("busy_") and c.endswith("_s")]


def utilisation(devices_df: pd.DataFrame, path: str | os.PathLike[str], title: str = "") -> Path:
    """Write `utilisation_figure` as a PNG."""
    return write_png(utilisation_figure(devices_df, title), path)


def _percent(v: float) -> str:
    return f"{v:.{2 if v < 1 else 1 if v < 10 else 0}f}"


def utilisation_figure(devices_df: pd.DataFrame, title: str = "") -> Figure:
    """Left: the busiest unit's share of the run per device. Right: busy seconds per unit.
    Past MAX_ROWS devices, neighbours share a row: their mean, whiskers from min to max."""
    names = [str(d) for d in devices_df["device"]]
    rows = grouped(names, math.ceil(len(names) / MAX_ROWS) or 1)
    fig = Figure(figsize=(11, min(MAX_HEIGHT_IN, 1.8 + 0.4 * max(len(rows), 1))),
                 layout="constrained")
    left, right = fig.subplots(1, 2, sharey=True)
    pos = list(range(len(rows)))
    share = devices_df["utilisation"].fillna(0.0).to_numpy() * 100.0
    gone = (devices_df["left_at"].to_numpy() if "left_at" in devices_df
            else np.full(len(names), np.nan))
    mean = np.array([share[part].mean() for _, part in rows])
    low = np.array([share[part].min() for _, part in rows])
    high = np.array([share[part].max() for _, part in rows])
    many = len(rows) < len(names)
    left.barh(pos, mean, color=COLOURS["compute"], height=0.6,
              xerr=np.stack([mean - low, high - mean]).clip(min=0.0) if many else None,
              error_kw={"ecolor": "0.35", "elinewidth": 0.8, "capsize": 2})
    for i, (_, part) in enumerate(rows):
        left_at = gone[part][~np.isnan(gone[part])]
        note = f"{_percent(mean[i])}%"
        if many and high[i] > low[i]:
            note += f" ({_percent(low[i])}-{_percent(high[i])})"
        if len(left_at):
            note += (f"  (left at {left_at[0]:.3g} s)" if part.stop - part.start == 1
                     else f"  ({len(left_at)} left)")
        left.annotate(note, (high[i] if many else mean[i], i), xytext=(3, 0),
                      textcoords="offset points", va="center", fontsize=8)
    # Scale to the data (low shares stay visible), never past 100% plus room for notes.
    left.set_xlim(0, min(115.0, max(float(high.max()) if len(high) else 0.0, 1.0) * 1.35))
    size = max(part.stop - part.start for _, part in rows) if rows else 1
    note = f"\nrows: mean of up to {size} devices, whiskers min to max" if many else ""
    left.set_xlabel("busiest unit busy / run duration (%)" + note)
    left.set_title("Utilisation")

    columns = _busy_columns(devices_df)
    width = 0.8 / max(len(columns), 1)
    palette = ["#4C72B0", "#55A868", "#8172B2", "#CCB974", "#64B5CD"]
    for k, column in enumerate(columns):
        seconds = devices_df[column].fillna(0.0).to_numpy()
        offsets = [i - 0.4 + width * (k + 0.5) for i in pos]
        right.barh(offsets, [seconds[part].mean() for _, part in rows], height=width,
                   color=palette[k % len(palette)], label=column[5:-2])
    right.set_xlabel("busy time (s)" + ("\n(mean per row)" if many else ""))
    right.set_title("Busy time per unit")
    if columns:
        right.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    left.set_yticks(pos, [label for label, _ in rows])
    left.set_ylim(len(rows) - 0.5, -0.5)
    for ax in (left, right):
        ax.grid(axis="x", color="0.9", linewidth=0.6)
        ax.set_axisbelow(True)
    if title:
        fig.suptitle(title)
    return fig


#: (summary column, panel title, divisor to the shown unit, higher is better)
COMPARED = (("throughput_rps", "Throughput (requests/s), higher is better", 1.0, True),
            ("latency_p95_ms", "p95 latency (ms), lower is better", 1.0, False),
            ("network_bytes", "Network traffic (MB), lower is better", 1e6, False),
            ("energy_J", "Energy (J), lower is better", 1.0, False))
TRAINING_COMPARED = (("final_accuracy", "Final held-out accuracy, higher is better", 1.0, True),
                     ("step_time_s", "Time per step (s), lower is better", 1.0, False),
                     ("bytes_per_worker_step", "Sent per worker per step (MB), lower is better",
                      1e6, False),
                     ("energy_J", "Energy (J), lower is better", 1.0, False))
#: The colour of the best strategy's bar in each panel.
BEST = "#55A868"


def _run_labels(compare_df: pd.DataFrame) -> list[str]:
    if "strategy" not in compare_df.columns:
        return [str(i) for i in compare_df.index]
    labels = [str(s) for s in compare_df["strategy"]]
    if "scenario" in compare_df.columns and compare_df["scenario"].nunique() > 1:
        labels = [f"{sc} / {st}" for sc, st in zip(compare_df["scenario"], labels)]
    return labels


def _panel(ax: Axes, labels: list[str], values: pd.Series | None, title: str,
           higher_is_better: bool) -> None:
    pos = list(range(len(labels)))
    ax.set_title(title, fontsize=10)
    if values is None or values.isna().all():
        ax.text(0.5, 0.5, "not measured", ha="center", va="center",
                transform=ax.transAxes, color="0.4")
    else:
        shown = values.fillna(0.0)
        best = values.max() if higher_is_better else values.min()
        colours = [BEST if v == best else COLOURS["compute"] for v in values]
        ax.barh(pos, shown, color=colours, height=0.6)
        top = float(shown.max()) or 1.0
        ax.set_xlim(0, top * 1.25)
        for i, v in enumerate(values):
            ax.annotate("-" if pd.isna(v) else f"{v:.4g}", (0 if pd.isna(v) else v, i),
                        xytext=(3, 0), textcoords="offset points", va="center", fontsize=8,
                        fontweight="bold" if v == best else "normal")
    ax.set_yticks(pos, labels)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.grid(axis="x", color="0.9", linewidth=0.6)
    ax.set_axisbelow(True)


def comparison(compare_df: pd.DataFrame, path: str | os.PathLike[str], title: str = "") -> Path:
    """Strategies side by side on throughput, p95 latency, network bytes and energy;
    the best bar of each panel is green."""
    labels = _run_labels(compare_df)
    fig = Figure(figsize=(11, min(MAX_HEIGHT_IN, 2.6 + 0.7 * max(len(labels), 1))),
                 layout="constrained")
    axes = fig.subplots(2, 2)
    panels = TRAINING_COMPARED if "final_loss" in compare_df.columns else COMPARED
    for ax, (column, name, divisor, higher) in zip(axes.flat, panels):
        values = compare_df[column] / divisor if column in compare_df.columns else None
        _panel(ax, labels, values, name, higher)
    scenarios = compare_df["scenario"].unique() if "scenario" in compare_df.columns else []
    fig.suptitle(title or ("Strategies compared" +
                           (f": {scenarios[0]}" if len(scenarios) == 1 else "")))
    return write_png(fig, path)


def training(frames: dict[str, pd.DataFrame], path: str | os.PathLike[str], title: str = "") -> Path:
    """Training loss and held-out accuracy against simulated time, one line per strategy."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    for label, df in frames.items():
        loss_ax.plot(df["t"], df["loss"], label=label, linewidth=1.2)
        evaluated = df.dropna(subset=["accuracy"])
        acc_ax.plot(evaluated["t"], evaluated["accuracy"] * 100.0, marker="o", markersize=3,
                    label=label, linewidth=1.2)
    loss_ax.set(xlabel="simulated time (s)", ylabel="training loss", title="Loss")
    acc_ax.set(xlabel="simulated time (s)", ylabel="held-out accuracy (%)", title="Accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(color="0.9", linewidth=0.6)
    acc_ax.legend(fontsize=8, frameon=False, loc="lower right")
    fig.suptitle(title or "Training over simulated time")
    return write_png(fig, path)
