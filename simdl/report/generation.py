"""What a generation run reports: per request its time to first token and time per
output token (`tokens.csv`), each device's weights and caches over time (`memory.csv`),
each link's bytes per token (`links.csv`), and the run's token headline in `summary.csv`.

TTFT = first token at the source - arrival; TPOT = (finish - first token) /
(tokens - 1), NaN for a one-token request. Percentiles are numpy's linear ones over
completed requests, in ms. tokens_per_s = tokens generated / makespan_s (the pool);
network_bytes_per_token and energy_per_token_J divide network_bytes and energy_used_J
by the tokens generated.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from simdl.plan.lm_model import is_shape_only
from simdl.plan.world import Generation, World
from simdl.sim.generation import Generated

MIB = 2**20
MEMORY_COLUMNS = ["t", "device", "tier", "weights_bytes", "kv_bytes"]
TOKEN_COLUMNS = ["request", "status", "prompt", "tokens", "arrival", "first_token", "finish",
                 "ttft", "tpot"]


def context(world: World, made: Generated) -> dict[str, Any]:
    """Summary columns known before the tables: outcome, numerics, memory and paging."""
    paged = [m for m in made.memory if m.paged > 0]
    out: dict[str, Any] = {
        "outcome": made.outcome,
        "numerics": ("none: full-size preset, shapes only" if is_shape_only(world.chain)
                     else "real"),
        "weights_paged": "; ".join(f"{m.device}: {m.paged / 1e6:.1f} of {m.weights / 1e6:.1f}"
                                   f" MB from storage" for m in paged),
        "paged_MB_per_pass": sum(m.paged for m in paged) / 1e6,
        "kv_peak_MiB_max": max(made.kv_peak.values(), default=0.0) / MIB,
    }
    out |= {f"kv_peak_MiB_{d}": v / MIB for d, v in sorted(made.kv_peak.items())}
    return out


def tokens_table(world: World, made: Generated) -> pd.DataFrame:
    """One row per request, in request order."""
    load = world.workload
    assert isinstance(load, Generation)
    rows = []
    for r in range(load.requests):
        q = made.seqs.get(r)
        done = q is not None and not np.isnan(q.finish)
        arrival = q.arrival if q is not None else float("nan")
        first = q.first if done else float("nan")
        finish = q.finish if done else float("nan")
        tokens = load.token_counts[r]
        tpot = (finish - first) / (tokens - 1) if done and tokens > 1 else float("nan")
        rows.append({"request": r, "status": "completed" if done else "failed",
                     "prompt": load.prompt_lengths[r], "tokens": tokens if done else 0,
                     "arrival": arrival, "first_token": first, "finish": finish,
                     "ttft": first - arrival, "tpot": tpot})
    return pd.DataFrame(rows, columns=TOKEN_COLUMNS)


def memory_table(made: Generated) -> pd.DataFrame:
    """What each device's memory tier holds over time: a row per change, in time order."""
    return pd.DataFrame(made.memory_trace, columns=MEMORY_COLUMNS)


def finish(result: Any, world: World, made: Generated) -> None:
    """Add tokens.csv and the token columns to `result` (a `report.result.Result`)."""
    table = tokens_table(world, made)
    result.extra["tokens"] = table
    result.extra["memory"] = memory_table(made)
    done = table[table.status == "completed"]
    s = result.summary.iloc[0]
    generated = int(done.tokens.sum())
    cols: dict[str, float] = {"tokens_generated": generated}
    for name in ("ttft", "tpot"):
        values = done[name].dropna().to_numpy()
        for p in (50, 95):
            cols[f"{name}_p{p}_ms"] = (float(np.percentile(values, p)) * 1e3 if len(values)
                                       else float("nan"))
    cols["tokens_per_s"] = generated / s.makespan_s if s.makespan_s > 0 else float("nan")
    cols["network_bytes_per_token"] = (s.network_bytes / generated if generated
                                       else float("nan"))
    cols["energy_per_token_J"] = s.energy_used_J / generated if generated else float("nan")
    cols["failed_out_of_memory"] = int((result.requests.cause == "out_of_memory").sum())
    result.summary = result.summary.assign(**cols)
    result.links = result.links.assign(
        bytes_per_token=result.links["bytes"] / generated if generated else float("nan"))
