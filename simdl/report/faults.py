"""What a changing pool cost: presence, requests' fates, work lost and redone, recovery.

Derived from the event log alone (leave and join rows, the engine's `lost` rows, and
inference's `request`, `failed`, `retry`, `late` and `planwait` rows) plus the units'
active power for joules. `report.tables` puts these beside its other numbers.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

#: Why a request failed (`sim.serving.CAUSES`), one summary column each.
CAUSES = ("device_left", "timeout", "no_plan", "source_left")
FAULT_COLUMNS = ["device", "left_at", "why", "back_at", "recovery_s"]
#: A retried attempt's kernels end their label with `/attempt` (`conv0 r3.0/1`).
_ATTEMPT = re.compile(r"/(\d+)$")
_PATH = re.compile(r" \| |>|\+")


def absences(events: pd.DataFrame, duration: float) -> list[tuple[str, float, float]]:
    """(device, from, to) for each time a device was out of the pool: from a `leave` to
    the `join` after it, or to `duration`."""
    rows = events.loc[events["kind"].isin(("leave", "join")), ["kind", "device", "t_start"]]
    out, left = [], {}
    for kind, device, t in rows.itertuples(index=False):
        device = str(device)
        if kind == "leave":
            left.setdefault(device, float(t))
        elif device in left:
            out.append((device, left.pop(device), float(t)))
    return out + [(d, t, max(duration, t)) for d, t in left.items()]


def away(events: pd.DataFrame, duration: float) -> dict[str, float]:
    """Seconds each device that ever left spent out of the pool by `duration`."""
    out: dict[str, float] = {}
    for device, start, end in absences(events, duration):
        out[device] = out.get(device, 0.0) + end - start
    return out


def degraded(events: pd.DataFrame, devices: set[str], duration: float) -> float:
    """Seconds during which at least one of `devices` was out of the pool (the union of
    their absences)."""
    total, reach = 0.0, -np.inf
    for start, end in sorted((s, e) for d, s, e in absences(events, duration) if d in devices):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def fates(events: pd.DataFrame) -> pd.DataFrame:
    """Per request (the index): `cause` ("" when completed), `attempts` (1 + its retries)
    and `plan_wait` (seconds it waited for a plan to serve it)."""
    kind = events["kind"]
    retries = events.loc[kind == "retry", "request"].value_counts()
    failed = events.loc[kind == "failed", ["request", "label"]].set_index("request")["label"]
    w = events.loc[kind == "planwait", ["request", "t_start", "t_end"]]
    waits = (w["t_end"] - w["t_start"]).groupby(w["request"]).sum()
    return pd.DataFrame({"cause": failed.astype(object), "attempts": retries + 1,
                         "plan_wait": waits})


def wasted(events: pd.DataFrame, specs: Mapping[str, Any] | None) -> dict[str, float]:
    """Work lost with a device (the engine's `lost` kernels) and redone (finished kernels
    of an attempt whose answer was not used: abandoned, or of a failed request): FLOPs,
    unit-seconds and joules (seconds x the unit's active power; NaN without `specs`)."""
    kind = events["kind"]
    lost = events.loc[kind == "lost", ["device", "resource", "t_start", "t_end", "flops"]]
    if specs is not None:
        lost = lost[np.array([str(r) in specs[str(d)].units
                              for d, r in zip(lost["device"], lost["resource"])], dtype=bool)]
    out = _spent("lost", lost, specs)
    asked = events.loc[kind.isin(("retry", "failed")), "request"]
    compute = events.loc[(kind == "compute") & events["request"].isin(set(asked)),
                         ["device", "resource", "t_start", "t_end", "flops", "label", "request"]]
    if len(compute):
        attempt = compute["label"].str.extract(_ATTEMPT, expand=False).fillna("0").astype(int)
        final = events.loc[kind == "retry", "request"].value_counts()  # the last attempt's index
        done = set(events.loc[kind == "request", "request"])
        used = compute["request"].isin(done) & (
            attempt == compute["request"].map(final).fillna(0).astype(int))
        compute = compute[~used.to_numpy()]
    return out | _spent("redone", compute, specs)


def _spent(what: str, rows: pd.DataFrame, specs: Mapping[str, Any] | None) -> dict[str, float]:
    seconds = rows["t_end"] - rows["t_start"]
    if specs is None:
        joules = float("nan")
    else:
        power = [specs[str(d)].units[str(u)].active_power
                 for d, u in zip(rows["device"], rows["resource"])]
        joules = float(np.dot(seconds.to_numpy(dtype=float), np.asarray(power, dtype=float)))
    return {f"{what}_flops": float(rows["flops"].sum()), f"{what}_s": float(seconds.sum()),
            f"{what}_J": joules}


def faults_table(events: pd.DataFrame) -> pd.DataFrame:
    """One row per `leave`: the device, when and why, when it came back (NaN: never), and
    the recovery: seconds from the leave to the first request completed on a path
    without that device (NaN: none was)."""
    kind = events["kind"]
    served = events.loc[kind == "request", ["t_end", "label"]].sort_values("t_end", kind="stable")
    paths = [(float(t), set(_PATH.split(str(p)))) for t, p in served.itertuples(index=False)]
    joins = events.loc[kind == "join", ["device", "t_start"]]
    rows = []
    for device, t, why in events.loc[kind == "leave", ["device", "t_start", "label"]].itertuples(
            index=False):
        device, t = str(device), float(t)
        back = joins.loc[(joins["device"].astype(str) == device) & (joins["t_start"] >= t),
                         "t_start"]
        first = next((end for end, devices in paths if end >= t and device not in devices), None)
        rows.append((device, t, str(why), float(back.min()) if len(back) else float("nan"),
                     first - t if first is not None else float("nan")))
    return pd.DataFrame.from_records(rows, columns=FAULT_COLUMNS).astype(
        {"left_at": "float64", "back_at": "float64", "recovery_s": "float64"})
