# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: -all
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Local, split or offloaded inference as the uplink changes
#
# A mid-range phone runs a ResNet (`scenarios/offload.yaml`) and may hand some of it to an
# edge server behind the home router's uplink. Neurosurgeon's question: run every block
# on the phone (cut 6), split after block k (cuts 1-5), or ship the raw input (cut 0)?
# We sweep the uplink from 5 Mb/s to 1 Gb/s and time one request at a time (latency
# p50, the scenario's closed loop of one), timing-only. `edge-auto` is the planner's
# pick of the cut (`cut: auto`), shown beside the sweep.

# %%
import tempfile
from pathlib import Path

import pandas as pd
from IPython.display import Image

import yaml

import simdl.api as sd
from simdl import sweep as sweeps
from simdl.report import sweep_plots
from simdl.scenario import dump

ROOT = Path.cwd() if (Path.cwd() / "scenarios").exists() else Path.cwd().parent
OUT = Path(tempfile.mkdtemp(prefix="simdl-notebook-"))  # figures go here, not into the repo
UPLINKS_MBPS = [5, 10, 20, 50, 100, 150, 200, 500, 1000]

# %% [markdown]
# The sweep is `simdl sweep`'s, from Python: the base scenario with the edge network, a
# grid over its `network.uplink`, the edge strategies only; each point runs in its own
# process, is named by a hash of its resolved scenario, and a rerun into the same folder
# skips what is done.

# %%
base = dump(sd.resolve(ROOT / "scenarios" / "offload.yaml"))
base["network"] = {"kind": "edge", "uplink": "100Mbps"}
(OUT / "offload_edge.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
(OUT / "uplinks.yaml").write_text(yaml.safe_dump({
    "scenario": "offload_edge.yaml",
    "grid": {"network.uplink": [f"{mbps}Mbps" for mbps in UPLINKS_MBPS]},
    "strategies": ["edge", "edge-auto"]}))  # no cloud
table = sweeps.sweep(OUT / "uplinks.yaml", OUT / "sweep", timing_only=True)
assert (table.status == "done").all()
sweep = (table.assign(uplink_Mbps=table["network.uplink"].str.removesuffix("Mbps").astype(int),
                      planned=table.strategy == "edge-auto")
         .sort_values(["uplink_Mbps", "planned", "strategy"]).reset_index(drop=True))
cuts = sweep[sweep.strategy.str.startswith("edge[")].assign(
    cut=lambda t: t.strategy.str.extract(r"cut=(\d)", expand=False).astype(int))
kind = {0: "offloaded", 6: "local"}
cuts = cuts.assign(kind=cuts.cut.map(lambda c: kind.get(c, "split")))
cuts.pivot(index="uplink_Mbps", columns="cut", values="latency_p50_ms").round(1)

# %%
sweep_plots.heatmap(cuts, "uplink_Mbps", "cut", "latency_p50_ms", log_colour=True,
                    path=OUT / "heatmap.png",
                    title="p50 latency (ms) by uplink and cut (0 offloads all, 6 keeps all)")
Image(filename=OUT / "heatmap.png")

# %% [markdown]
# Each kind's best cut at every uplink (for split, the best of cuts 1-5), and the planner's:

# %%
best = cuts.loc[cuts.groupby(["uplink_Mbps", "kind"]).latency_p50_ms.idxmin()]
auto = sweep[sweep.strategy == "edge-auto"].assign(kind="edge-auto")
shown = pd.concat([best, auto])[["uplink_Mbps", "kind", "latency_p50_ms", "network_bytes"]]
sweep_plots.lines(shown, "uplink_Mbps", "latency_p50_ms", by="kind", log_x=True, log_y=True,
                  path=OUT / "lines.png", title="Best p50 latency by kind of plan")
Image(filename=OUT / "lines.png")

# %%
winner = best.loc[best.groupby("uplink_Mbps").latency_p50_ms.idxmin()].set_index("uplink_Mbps")
crossing = (winner.kind.eq("local").iloc[::-1].idxmax(), winner.kind.eq("offloaded").idxmax())
input_bytes = cuts[cuts.cut == 0].network_bytes.iloc[0]
print(f"local wins up to {crossing[0]} Mb/s, offloading from {crossing[1]} Mb/s")
winner[["kind", "cut", "latency_p50_ms"]]

# %% [markdown]
# ## Conclusion
#
# On a slow uplink the phone keeps every block; somewhere between 150 and 200 Mb/s
# shipping the raw input to the edge server becomes faster, and stays faster up to
# 1 Gb/s. A split never wins at any
# uplink: every cut of this ResNet sends more bytes than the input itself (its
# activations have more channels than the image has colours), so a split pays the
# phone's work and a bigger transfer. The planner's `cut: auto` picks the fastest cut at
# every uplink of the sweep.

# %%
assert set(winner.kind) == {"local", "offloaded"}  # a split is never the fastest
assert crossing == (150, 200)
assert (winner.loc[:150, "kind"] == "local").all()
assert (winner.loc[200:, "kind"] == "offloaded").all()
assert (cuts[cuts.kind == "split"].network_bytes > input_bytes).all()
fastest = cuts.groupby("uplink_Mbps").latency_p50_ms.min()
assert (auto.set_index("uplink_Mbps").latency_p50_ms == fastest).all()
