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
# # Inference strategies on a home pool: where each one wins
#
# A phone asks for MobileNet inferences in a living room that also holds a tablet, a
# laptop, a TV and a smartwatch (`scenarios/living_room.yaml`). Is using every device
# the fastest plan? And when does splitting a model over two devices pay at all
# (`scenarios/fast_link.yaml`)? Every number below comes from the simulator's event
# log (timing-only: the same timeline without the numpy kernels).

# %%
import tempfile
from pathlib import Path

from IPython.display import Image

import simdl.api as sd
from simdl import planner
from simdl.report import plots, timeline_plot
from simdl.report.pareto import plot_pareto
from simdl.report.frame import png
from simdl.world import build

# The repository root, whether the kernel starts in notebooks/ or at the root.
ROOT = Path.cwd() if (Path.cwd() / "scenarios").exists() else Path.cwd().parent
OUT = Path(tempfile.mkdtemp(prefix="simdl-notebook-"))  # figures go here, not into the repo
COLUMNS = ["strategy", "throughput_rps", "latency_p50_ms", "latency_p95_ms",
           "network_bytes", "energy_J"]

# %% [markdown]
# ## The living room: the planner's choice, every device, the phone alone

# %%
room = sd.run(ROOT / "scenarios" / "living_room.yaml", timing_only=True)
table = room.comparison.set_index("strategy")
room.comparison[COLUMNS + ["plan"]]

# %%
plots.comparison(room.comparison, OUT / "living_room.png")
Image(filename=OUT / "living_room.png")

# %% [markdown]
# Why the pipeline over every device loses: its slowest stages (the watch, the TV) and
# the Wi-Fi hops between five devices. Utilisation per device, from the same log:

# %%
Image(filename=png(plots.utilisation_figure(room["every-device"].devices, "every-device"),
                   OUT / "utilisation.png"))

# %% [markdown]
# The planner's choice, kernel by kernel and transfer by transfer:

# %%
Image(filename=png(timeline_plot.timeline_figure(room["auto"].events, "auto"),
                   OUT / "timeline.png"))

# %% [markdown]
# The planner's search (`simdl plan` from Python): its candidates beside the plans a user
# would try first, and the Pareto front over capacity, latency and energy.

# %%
planned = planner.plan_pool(build(sd.resolve(ROOT / "scenarios" / "living_room.yaml"),
                                  timing_only=True), "throughput", top=3)
plot_pareto(planner.pareto_points(planned), OUT / "pareto.png")
display(planned.table[["label", "plan", "capacity_rps", "sim_throughput_rps",
                       "latency_p50_ms", "energy_per_request_mJ"]])
Image(filename=OUT / "pareto.png")

# %% [markdown]
# ## When splitting pays: a wide MLP on a low-end phone and a TV

# %%
link = sd.run(ROOT / "scenarios" / "fast_link.yaml", timing_only=True)
fast = link.comparison.set_index("strategy")
link.comparison[COLUMNS + ["plan"]]

# %%
plots.comparison(link.comparison, OUT / "fast_link.png")
Image(filename=OUT / "fast_link.png")

# %% [markdown]
# ## Conclusion
#
# In the living room the planner's choice (`auto`: the phone and the laptop each serving
# whole requests, weighted by speed) serves the most requests per second, but the phone
# alone has the lowest p95 latency and uses the least energy: no hop, no second device
# drawing power. The pipeline over every device is the worst on all four counts, with
# under a tenth of the phone's throughput. Every baseline a user would try first that
# spreads the model over three or more devices is beaten by a plan on a subset of its
# own devices. Splitting one model pays when the model is heavy for its activations: on
# `fast_link` the phone-TV pipeline beats each device alone on throughput, though the
# TV alone is slower than the phone.

# %%
assert table.throughput_rps.idxmax() == "auto"
assert table.latency_p95_ms.idxmin() == "phone-only"
assert table.energy_J.idxmin() == "phone-only"
worst = table.loc["every-device"]
assert (worst.throughput_rps == table.throughput_rps.min()
        and worst.latency_p95_ms == table.latency_p95_ms.max()
        and worst.network_bytes == table.network_bytes.max()
        and worst.energy_J == table.energy_J.max())
assert worst.throughput_rps < table.loc["phone-only", "throughput_rps"] / 10
spread = planned.table[~planned.table.label.str.startswith("plan-") & (planned.table.devices >= 3)]
assert len(spread) and all(any(n.startswith(f"{label} uses") for n in planned.notes)
                           for label in spread.label)
assert fast.throughput_rps.idxmax() == "phone-tv"
assert fast.loc["tv-only", "throughput_rps"] < fast.loc["phone-only", "throughput_rps"]
print(f"auto / phone-only throughput: "
      f"{table.loc['auto', 'throughput_rps'] / table.loc['phone-only', 'throughput_rps']:.2f}x; "
      f"phone-tv / phone-only on fast_link: "
      f"{fast.loc['phone-tv', 'throughput_rps'] / fast.loc['phone-only', 'throughput_rps']:.2f}x")
