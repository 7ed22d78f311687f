"""What a changing pool cost: presence, requests' fates, work lost and redone, recovery.

Derived from the event log alone (leave and join rows, the engine's `lost` rows, and
inference's `request`, `failed`, `retry`, `late` and `planwait` rows) plus the units'
active power for joules. `report.tables` puts these beside its other numbers. Each
function takes the log as a DataFrame or as the tables' `report.columns.Columns`.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from simdl.report.columns import Columns, Log, by_key, lookup, total

#: Why a request failed (`sim.serving.CAUSES`), one summary column each.
CAUSES = ("device_left", "timeout", "no_plan", "source_left")
FAULT_COLUMNS = ["device", "left_at", "why", "back_at", "recovery_s"]
#: A retried attempt's kernels end their label with `/attempt` (`conv0 r3.0/1`).
_ATTEMPT = re.compile(r"/(\d+)$")
_PATH = re.compile(r" \| |>|\+")


def absences(events: Log, duration: float) -> list[tuple[str, float, float]]:
    """(device, from, to) for each time a device was out of the pool: from a `leave` to
    the `join` after it, or to `duration`."""
    log = Columns.of(events)
    rows = log.rows("leave", "join")
    out, left = [], {}
    for kind, device, t in zip(log.coded("kind").of(rows).tolist(),
                               log.coded("device").of(rows).tolist(), log.t_start[rows].tolist()):
        if kind == "leave":
            left.setdefault(device, t)
        elif device in left:
            out.append((device, left.pop(device), t))
    return out + [(d, t, max(duration, t)) for d, t in left.items()]


def away(events: Log, duration: float) -> dict[str, float]:
    """Seconds each device that ever left spent out of the pool by `duration`."""
    out: dict[str, float] = {}
    for device, start, end in absences(events, duration):
        out[device] = out.get(device, 0.0) + end - start
    return out


def degraded(events: Log, devices: set[str], duration: float) -> float:
    """Seconds during which at least one of `devices` was out of the pool (the union of
    their absences)."""
    total_s, reach = 0.0, -np.inf
    for start, end in sorted((s, e) for d, s, e in absences(events, duration) if d in devices):
        if end > reach:
            total_s += end - max(start, reach)
            reach = end
    return total_s


def fates(events: Log, requests: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of `requests`: its cause ("" unless it failed), attempts (1 + its retries)
    and plan_wait (seconds it waited for a plan to serve it)."""
    log = Columns.of(events)
    failed = log.rows("failed")
    order = np.argsort(log.request[failed], kind="stable")
    cause = lookup(log.request[failed][order], log.label[failed][order], requests, "")
    tried, retries = np.unique(log.request[log.rows("retry")], return_counts=True)
    waited = log.rows("planwait")
    waits = by_key("sum", log.request[waited], log.t_end[waited] - log.t_start[waited])
    return (cause.astype(object), lookup(tried, retries + 1, requests, 1).astype("int64"),
            lookup(*waits, requests, 0.0).astype("float64"))


def wasted(events: Log, specs: Mapping[str, Any] | None) -> dict[str, float]:
    """Work lost with a device (the engine's `lost` kernels) and redone (finished kernels
    of an attempt whose answer was not used: abandoned, or of a failed request): FLOPs,
    unit-seconds and joules (seconds x the unit's active power; NaN without `specs`)."""
    log = Columns.of(events)
    device, resource = log.coded("device"), log.coded("resource")
    lost = log.rows("lost")
    if specs is not None:
        lost = lost[np.array([r in specs[d].units for d, r in zip(
            device.of(lost).tolist(), resource.of(lost).tolist())], dtype=bool)]
    out = _spent("lost", log, lost, specs)
    compute = log.rows("compute")
    compute = compute[np.isin(log.request[compute], log.request[log.rows("retry", "failed")])]
    if len(compute):
        tried, retries = np.unique(log.request[log.rows("retry")], return_counts=True)
        final = dict(zip(tried.tolist(), retries.tolist()))  # the last attempt's index
        done = set(log.request[log.rows("request")].tolist())
        used = [r in done and _attempt(label) == final.get(r, 0)
                for r, label in zip(log.request[compute].tolist(), log.label[compute].tolist())]
        compute = compute[~np.array(used, dtype=bool)]
    return out | _spent("redone", log, compute, specs)


def _attempt(label: str) -> int:
    found = _ATTEMPT.search(label)
    return int(found.group(1)) if found else 0


def _spent(what: str, log: Columns, rows: np.ndarray,
           specs: Mapping[str, Any] | None) -> dict[str, float]:
    seconds = log.t_end[rows] - log.t_start[rows]
    if specs is None:
        joules = float("nan")
    else:
        power = [specs[d].units[u].active_power for d, u in zip(
            log.coded("device").of(rows).tolist(), log.coded("resource").of(rows).tolist())]
        joules = float(np.dot(seconds, np.asarray(power, dtype=float)))
    return {f"{what}_flops": total(log.flops[rows]), f"{what}_s": total(seconds),
            f"{what}_J": joules}


def faults_table(events: Log) -> pd.DataFrame:
    """One row per `leave`: the device, when and why, when it came back (NaN: never), and
    the recovery: seconds from the leave to the first request completed on a path
    without that device (NaN: none was)."""
    log = Columns.of(events)
    device = log.coded("device")
    leaves = log.rows("leave")
    rows = []
    if len(leaves):
        served = log.rows("request")
        served = served[np.argsort(log.t_end[served], kind="stable")]
        paths = [(t, set(_PATH.split(p))) for t, p in
                 zip(log.t_end[served].tolist(), log.label[served].tolist())]
        joins = log.rows("join")
        joined, back_at = device.codes[joins], log.t_start[joins]
        for code, t, why in zip(device.codes[leaves].tolist(), log.t_start[leaves].tolist(),
                                log.label[leaves].tolist()):
            name = device.names[code]
            back = back_at[(joined == code) & (back_at >= t)]
            first = next((end for end, devices in paths if end >= t and name not in devices),
                         None)
            rows.append((name, t, why, float(back.min()) if len(back) else float("nan"),
                         first - t if first is not None else float("nan")))
    return pd.DataFrame({c: np.array([r[i] for r in rows], dtype=object if i in (0, 2) else
                                      "float64") for i, c in enumerate(FAULT_COLUMNS)})
