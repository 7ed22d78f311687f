"""Figures of a run: the timeline (Gantt), utilisation per device, strategies compared.

Owns the drawing only; every number comes from the event log or the tables.
Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend,
nothing at import time) and writes PNGs through the store's atomic write.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from simdl.report.store import write_png
from simdl.report.tables import clean

COLOURS = {"compute": "#4C72B0", "transfer": "#DD8452", "lost": "#C44E52"}
#: Taller figures stop helping beyond this; rows then get thinner.
MAX_HEIGHT_IN = 24.0
#: Up to this many bars, the timeline writes each bar's label inside it.
LABELLED_BARS = 60
#: Beyond this many src>dst pairs, the timeline draws one row per sender instead.
MAX_LINK_ROWS = 16


def _time_scale(end: float) -> tuple[float, str]:
    """Seconds, or milliseconds for runs shorter than a second."""
    return (1e3, "ms") if 0 < end < 1 else (1.0, "s")


def timeline(events: pd.DataFrame, path: str | os.PathLike[str], title: str = "") -> Path:
    """Gantt chart: one row per device unit and per src>dst pair (per sender when there
    are many pairs); lost work hatched red, a departure a red line across its rows."""
    events = clean(events)
    worked = events[events["kind"].isin(("compute", "lost"))]
    transfers = events[events["kind"] == "transfer"]
    leaves = events[events["kind"] == "leave"]
    rows = [(d, u) for d, u in sorted(set(zip(worked["device"], worked["resource"])))]
    pairs = sorted(set(zip(transfers["device"], transfers["resource"])))
    # Past a screenful of pairs, one row per sender keeps the figure readable.
    per_sender = len(pairs) > MAX_LINK_ROWS
    senders = sorted({src for src, _ in pairs})
    links = [(s, "*") for s in senders] if per_sender else pairs
    labels = [f"{d} {u}" for d, u in rows] + [f"{s} → {t}" for s, t in links]
    y = {key: i for i, key in enumerate(rows)}
    y.update({("link", *p): len(rows) + i for i, p in enumerate(links)})

    height = min(MAX_HEIGHT_IN, 1.6 + 0.32 * max(len(labels), 1))
    fig = Figure(figsize=(11, height), layout="constrained")
    ax = fig.add_subplot()
    spans = pd.concat([worked, transfers])
    end = float(spans["t_end"].max()) if len(spans) else 0.0
    if len(leaves):
        end = max(end, float(leaves["t_start"].max()))
    scale, unit = _time_scale(end)

    few = len(spans) <= LABELLED_BARS

    def bars(frame: pd.DataFrame, key_of, ink: str = "white", **style) -> None:
        by_row: dict[int, list[tuple[float, float]]] = {}
        for r in frame.itertuples(index=False):
            start, width = r.t_start * scale, (r.t_end - r.t_start) * scale
            by_row.setdefault(y[key_of(r)], []).append((start, width))
            if few and r.label and width >= 0.06 * end * scale:
                ax.text(start + width / 2, y[key_of(r)], r.label, ha="center", va="center",
                        fontsize=7, color=ink, clip_on=True)
        for row, spans_ in by_row.items():
            ax.broken_barh(spans_, (row - 0.38, 0.76), **style)

    # White edges separate back-to-back kernels; with many bars they would hide thin ones.
    edge = {"edgecolors": "white", "linewidth": 0.8} if few else {"linewidth": 0.4}
    bars(events[events["kind"] == "compute"], lambda r: (r.device, r.resource),
         facecolors=COLOURS["compute"], **({"edgecolors": COLOURS["compute"]} | edge))
    bars(transfers, lambda r: ("link", r.device, "*" if per_sender else r.resource),
         facecolors=COLOURS["transfer"], alpha=0.8, **({"edgecolors": COLOURS["transfer"]} | edge))
    bars(events[events["kind"] == "lost"], lambda r: (r.device, r.resource), ink=COLOURS["lost"],
         facecolors="none", edgecolors=COLOURS["lost"], hatch="///", linewidth=0.8)
    for r in leaves.itertuples(index=False):
        own = [y[k] for k in rows if k[0] == r.device]
        low, high = (min(own) - 0.5, max(own) + 0.5) if own else (-0.5, len(labels) - 0.5)
        ax.vlines(r.t_start * scale, low, high, colors=COLOURS["lost"], linewidth=1.6)
        ax.annotate(f"{r.device} left", (r.t_start * scale, high), xytext=(3, -10),
                    textcoords="offset points", color=COLOURS["lost"], fontsize=8)

    if labels:
        ax.set_yticks(range(len(labels)), labels, fontsize=8 if len(labels) > 30 else 9)
        ax.set_ylim(len(labels) - 0.5, -0.5)
        if rows and links:
            ax.axhline(len(rows) - 0.5, color="0.6", linewidth=0.8)
    else:
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no compute or transfer in the log", ha="center", va="center",
                transform=ax.transAxes, color="0.4")
    ax.set_xlim(0, end * scale * 1.02 if end > 0 else 1)
    ax.set_xlabel(f"simulated time ({unit})")
    ax.grid(axis="x", color="0.9", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.set_title(title or "Timeline: kernels per unit, transfers per link")
    handles = [Patch(facecolor=COLOURS["compute"], label="compute"),
               Patch(facecolor=COLOURS["transfer"], label="transfer"),
               Patch(facecolor="none", edgecolor=COLOURS["lost"], hatch="///", label="lost work")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8,
              frameon=False)
    return write_png(fig, path)


def _busy_columns(devices_df: pd.DataFrame) -> list[str]:
    return [c for c in devices_df.columns if c.startswith("busy_") and c.endswith("_s")]


def utilisation(devices_df: pd.DataFrame, path: str | os.PathLike[str], title: str = "") -> Path:
    """Left: the busiest unit's share of the run per device. Right: busy seconds per unit."""
    names = [str(d) for d in devices_df["device"]]
    n = max(len(names), 1)
    fig = Figure(figsize=(11, min(MAX_HEIGHT_IN, 1.8 + 0.4 * n)), layout="constrained")
    left, right = fig.subplots(1, 2, sharey=True)
    pos = list(range(len(names)))
    share = devices_df["utilisation"].fillna(0.0) * 100.0
    left.barh(pos, share, color=COLOURS["compute"], height=0.6)
    for i, (v, gone) in enumerate(zip(share, devices_df.get("left_at", [math.nan] * len(names)))):
        digits = 2 if v < 1 else 1 if v < 10 else 0
        note = f"{v:.{digits}f}%" + (
            "" if pd.isna(gone) else f"  (left at {gone:.3g} s)")
        left.annotate(note, (v, i), xytext=(3, 0), textcoords="offset points",
                      va="center", fontsize=8)
    # Scale to the data (low shares stay visible), never past 100% plus room for notes.
    left.set_xlim(0, min(115.0, max(float(share.max()) if len(share) else 0.0, 1.0) * 1.35))
    left.set_xlabel("busiest unit busy / run duration (%)")
    left.set_title("Utilisation")

    columns = _busy_columns(devices_df)
    width = 0.8 / max(len(columns), 1)
    palette = ["#4C72B0", "#55A868", "#8172B2", "#CCB974", "#64B5CD"]
    for k, column in enumerate(columns):
        offsets = [i - 0.4 + width * (k + 0.5) for i in pos]
        right.barh(offsets, devices_df[column].fillna(0.0), height=width,
                   color=palette[k % len(palette)], label=column[5:-2])
    right.set_xlabel("busy time (s)")
    right.set_title("Busy time per unit")
    if columns:
        right.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    left.set_yticks(pos, names)
    left.set_ylim(len(names) - 0.5, -0.5)
    for ax in (left, right):
        ax.grid(axis="x", color="0.9", linewidth=0.6)
        ax.set_axisbelow(True)
    if title:
        fig.suptitle(title)
    return write_png(fig, path)


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
