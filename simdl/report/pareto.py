"""The planner's Pareto front as a picture: capacity against p50 latency, energy per
request as colour, the front drawn through, the named plans (the planner's best and the
baselines a user would try) labelled, so the gain and the trade-offs are visible."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from simdl.report.frame import png


def plot_pareto(points: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write the PNG at `path`: one dot per plan of `points` (columns capacity_rps,
    latency_p50_ms, energy_per_request_mJ, front: on the Pareto front, label: "" or
    a name to print beside it)."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    dots = ax.scatter(points.capacity_rps, points.latency_p50_ms, c=points.energy_per_request_mJ,
                      cmap="viridis", s=18, zorder=2)
    fig.colorbar(dots, ax=ax, label="energy per request (mJ)")
    front = points[points.front].sort_values("capacity_rps")
    ax.plot(front.capacity_rps, front.latency_p50_ms, "o-", mfc="none", color="tab:red",
            ms=9, zorder=3, label="Pareto front (capacity, p50, energy)")
    for row in points[points.label != ""].itertuples():
        ax.annotate(row.label, (row.capacity_rps, row.latency_p50_ms), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("capacity (requests/s, estimated)")
    ax.set_ylabel("p50 latency (ms, estimated)")
    ax.legend(loc="best", fontsize=8)
    return png(fig, path)
