"""Summary figures of a run: utilisation per device, strategies compared, training curves.

Owns the drawing only; every number comes from the event log or the tables.
Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend,
nothing at import time); `report.frame` places the axes by their texts' measured
extents (no layout engine), draws bars as one collection and writes the PNGs. Also
holds what every figure shares (colours, size limits, row grouping); the timeline
(Gantt) is `timeline_plot`. Past MAX_ROWS devices, neighbours share a row, and the
figure says so.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from simdl.errors import SimdlError
from simdl.report import frame

COLOURS = {"compute": "#4C72B0", "transfer": "#DD8452", "lost": "#C44E52", "join": "#55A868"}
#: Taller figures stop helping beyond this; rows then get thinner.
MAX_HEIGHT_IN = 24.0
#: Beyond this many lanes (or devices), neighbours share a row: legible tick labels.
MAX_ROWS = 40


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


def _busy_columns(devices_df: pd.DataFrame) -> list[str]:
    return [c for c in devices_df.columns if c.startswith("busy_") and c.endswith("_s")]


def utilisation(devices_df: pd.DataFrame, path: str | os.PathLike[str], title: str = "") -> Path:
    """Write `utilisation_figure` as a PNG."""
    return frame.png(utilisation_figure(devices_df, title), path)


def _percent(v: float) -> str:
    return f"{v:.{2 if v < 1 else 1 if v < 10 else 0}f}"


def utilisation_figure(devices_df: pd.DataFrame, title: str = "") -> Figure:
    """Left: the busiest unit's share of the run per device. Right: busy seconds per unit.
    Past MAX_ROWS devices, neighbours share a row: their mean, whiskers from min to max."""
    names = [str(d) for d in devices_df["device"]]
    rows = grouped(names, math.ceil(len(names) / MAX_ROWS) or 1)
    fig, axes = frame.new(11, min(MAX_HEIGHT_IN, 1.8 + 0.4 * max(len(rows), 1)), 1, 2)
    left, right = axes.flat
    pos = list(range(len(rows)))
    share = devices_df["utilisation"].fillna(0.0).to_numpy() * 100.0
    gone = (devices_df["left_at"].to_numpy() if "left_at" in devices_df
            else np.full(len(names), np.nan))
    mean = np.array([share[part].mean() for _, part in rows])
    low = np.array([share[part].min() for _, part in rows])
    high = np.array([share[part].max() for _, part in rows])
    many = len(rows) < len(names)
    frame.hbars(left, pos, 0.0, mean, 0.6, color=COLOURS["compute"])
    if many:
        left.errorbar(mean, pos, xerr=np.stack([mean - low, high - mean]).clip(min=0.0),
                      fmt="none", ecolor="0.35", elinewidth=0.8, capsize=2)
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
    longest = 0.0
    for k, column in enumerate(columns):
        seconds = devices_df[column].fillna(0.0).to_numpy()
        busy = [seconds[part].mean() for _, part in rows]
        longest = max(longest, *busy)
        frame.hbars(right, [i - 0.4 + width * (k + 0.5) for i in pos], 0.0, busy, width,
                    color=palette[k % len(palette)], label=column[5:-2])
    right.set_xlim(0, longest * 1.05 or 1.0)
    right.set_xlabel("busy time (s)" + ("\n(mean per row)" if many else ""))
    right.set_title("Busy time per unit")
    if columns:
        right.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    left.set_yticks(pos, [label for label, _ in rows])
    right.set_yticks([])
    for ax in (left, right):
        ax.set_ylim(len(rows) - 0.5, -0.5)
        frame.value_ticks(ax.xaxis)
        ax.grid(axis="x", color="0.9", linewidth=0.6)
        ax.set_axisbelow(True)
    frame.fit(fig, axes, title)
    return fig


#: (summary column, panel title, divisor to the shown unit, higher is better)
COMPARED = (("throughput_rps", "Throughput (requests/s), higher is better", 1.0, True),
            ("latency_p95_ms", "p95 latency (ms), lower is better", 1.0, False),
            ("network_bytes", "Network traffic (MB), lower is better", 1e6, False),
            ("energy_J", "Energy (J), lower is better", 1.0, False))
GENERATION_COMPARED = (("tokens_per_s", "Tokens/s (pool), higher is better", 1.0, True),
                       ("tpot_p95_ms", "p95 time per output token (ms), lower is better", 1.0,
                        False),
                       ("network_bytes_per_token", "Network per token (kB), lower is better",
                        1e3, False),
                       ("energy_per_token_J", "Energy per token (J), lower is better", 1.0,
                        False))
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
           higher_is_better: bool, named: bool) -> None:
    """One measure's bars, one row per run; `named`: the rows' labels at the left
    (the panels of a row of the figure share them)."""
    pos = list(range(len(labels)))
    ax.set_title(title, fontsize=10)
    if values is None or values.isna().all():
        ax.text(0.5, 0.5, "not measured", ha="center", va="center",
                transform=ax.transAxes, color="0.4")
        ax.set_xticks([])
    else:
        shown = values.fillna(0.0).to_numpy()
        best = values.max() if higher_is_better else values.min()
        colours = [BEST if v == best else COLOURS["compute"] for v in values]
        frame.hbars(ax, pos, 0.0, shown, 0.6, facecolors=colours)
        ax.set_xlim(0, (float(shown.max()) or 1.0) * 1.25)
        for i, v in enumerate(values):
            ax.annotate("-" if pd.isna(v) else f"{v:.4g}", (0 if pd.isna(v) else v, i),
                        xytext=(3, 0), textcoords="offset points", va="center", fontsize=8,
                        fontweight="bold" if v == best else "normal")
        frame.value_ticks(ax.xaxis)
    if named:
        ax.set_yticks(pos, labels)
    else:
        ax.set_yticks([])
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.grid(axis="x", color="0.9", linewidth=0.6)
    ax.set_axisbelow(True)


def comparison(compare_df: pd.DataFrame, path: str | os.PathLike[str], title: str = "") -> Path:
    """Write `comparison_figure` as a PNG."""
    return frame.png(comparison_figure(compare_df, title), path)


def comparison_figure(compare_df: pd.DataFrame, title: str = "") -> Figure:
    """Strategies side by side on throughput, p95 latency, network bytes and energy
    (training and generation runs: their own four); the best bar of each panel is
    green. The rows are named once, at the left of the figure."""
    labels = _run_labels(compare_df)
    fig, axes = frame.new(11, min(MAX_HEIGHT_IN, 2.6 + 0.7 * max(len(labels), 1)), 2, 2)
    panels = (TRAINING_COMPARED if "final_loss" in compare_df.columns else
              GENERATION_COMPARED if "tokens_per_s" in compare_df.columns else COMPARED)
    for k, (ax, (column, name, divisor, higher)) in enumerate(zip(axes.flat, panels)):
        values = compare_df[column] / divisor if column in compare_df.columns else None
        _panel(ax, labels, values, name, higher, named=k % 2 == 0)
    scenarios = compare_df["scenario"].unique() if "scenario" in compare_df.columns else []
    frame.fit(fig, axes, title or ("Strategies compared" +
                                   (f": {scenarios[0]}" if len(scenarios) == 1 else "")))
    return fig


#: How a fault shows on the training curves: a departure dashed, a return dotted.
FAULT_LINES = {"leave": ("--", "device left"), "join": (":", "device rejoined")}


def training(frames: dict[str, pd.DataFrame], path: str | os.PathLike[str], title: str = "",
             faults: dict[str, pd.DataFrame] | None = None) -> Path:
    """Write `training_figure` as a PNG."""
    return frame.png(training_figure(frames, title, faults), path)


def training_figure(frames: dict[str, pd.DataFrame], title: str = "",
                    faults: dict[str, pd.DataFrame] | None = None) -> Figure:
    """Training loss and held-out accuracy against simulated time, one line per strategy.
    `faults` (per strategy label: its run's `leave` and `join` event rows) marks each
    departure with a dashed and each return with a dotted vertical line on both panels,
    in that strategy's colour and labelled with the device, so a jump in the curve can
    be read against the fault that caused it."""
    fig, axes = frame.new(11, 4.2, 1, 2)
    loss_ax, acc_ax = axes.flat
    colour = {}
    for label, df in frames.items():
        (line,) = loss_ax.plot(df["t"], df["loss"], label=label, linewidth=1.2)
        colour[label] = line.get_color()
        evaluated = df.dropna(subset=["accuracy"])
        acc_ax.plot(evaluated["t"], evaluated["accuracy"] * 100.0, marker="o", markersize=3,
                    label=label, linewidth=1.2)
    marked = set()
    for label, rows in (faults or {}).items():
        if label not in colour:
            raise SimdlError("faults", label, f"a strategy with a curve: {', '.join(colour)}")
        for kind, (style, _) in FAULT_LINES.items():
            own = rows[rows["kind"] == kind]
            for device, when in sorted(set(zip(own["device"], own["t_start"]))):
                marked.add(kind)
                for ax in (loss_ax, acc_ax):
                    ax.axvline(when, color=colour[label], linestyle=style, linewidth=1.0)
                    ax.annotate(device, (when, 1.0), xycoords=("data", "axes fraction"),
                                xytext=(2, -2), textcoords="offset points", rotation=90,
                                va="top", fontsize=7, color=colour[label])
    loss_ax.set(xlabel="simulated time (s)", ylabel="training loss", title="Loss")
    acc_ax.set(xlabel="simulated time (s)", ylabel="held-out accuracy (%)", title="Accuracy")
    for ax in (loss_ax, acc_ax):
        frame.value_ticks(ax.xaxis)
        frame.value_ticks(ax.yaxis)
        ax.grid(color="0.9", linewidth=0.6)
    extra = [Line2D([], [], color="0.3", linestyle=style, linewidth=1.0, label=meaning)
             for kind, (style, meaning) in FAULT_LINES.items() if kind in marked]
    if extra:
        handles, _ = acc_ax.get_legend_handles_labels()
        acc_ax.legend(handles=handles + extra, fontsize=8, frameon=False, loc="lower right")
    else:
        acc_ax.legend(fontsize=8, frameon=False, loc="lower right")
    frame.fit(fig, axes, title or "Training over simulated time")
    return fig


def memory(table: pd.DataFrame, path: str | os.PathLike[str], title: str = "") -> Path:
    """Write `memory_figure` as a PNG."""
    return frame.png(memory_figure(table, title), path)


def memory_figure(table: pd.DataFrame, title: str = "") -> Figure:
    """What each device's memory tier holds over simulated time (a generation run's
    `memory.csv`): weights plus KV cache, a step line each. Past MAX_ROWS tiers only the
    MAX_ROWS with the highest peaks are drawn, and the axis says so."""
    fig, axes = frame.new(11, 4.2)
    ax = axes[0, 0]
    held = table.assign(MiB=(table["weights_bytes"] + table["kv_bytes"]) / 2**20)
    lanes = [(f"{d} ({tier})", rows) for (d, tier), rows in held.groupby(["device", "tier"],
                                                                         sort=True)]
    lanes.sort(key=lambda lane: -lane[1]["MiB"].max())
    end = float(table["t"].max()) if len(table) else 0.0
    for name, rows in lanes[:MAX_ROWS]:
        ax.step(list(rows["t"]) + [end], list(rows["MiB"]) + [rows["MiB"].iloc[-1]],
                where="post", linewidth=1.2, label=name)
    note = f" ({MAX_ROWS} of {len(lanes)} tiers, highest peaks)" if len(lanes) > MAX_ROWS else ""
    ax.set(xlabel="simulated time (s)", ylabel="weights + KV cache held (MiB)" + note)
    frame.value_ticks(ax.xaxis)
    frame.value_ticks(ax.yaxis)
    ax.grid(color="0.9", linewidth=0.6)
    if lanes:
        ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    frame.fit(fig, axes, title or "Memory over simulated time")
    return fig
