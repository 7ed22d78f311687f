"""Fit runtime profiles to published measured latencies, and say how far off simdl is.

A measured row (`hw.measured`: device, unit, precision, batch, runtime, model, latency)
is predicted as simdl simulates that request alone on that unit: the model's blocks
one kernel each, `roofline(peak x efficiency, mem_bw / traffic, overhead, background)`
summed. Per (device type, unit, runtime) three numbers are fitted, minimising the
squared relative errors:
- `efficiency`: the share of the unit's peak the runtime's kernels reach;
- `overhead`: seconds per kernel (dispatch, launch);
- `traffic`: the bytes the runtime moves through memory per byte simdl counts (fused
  operators and activations kept in cache or stored narrower move fewer; below 1).
For a fixed efficiency and traffic the best overhead (>= 0) is a closed-form least-squares
solution; efficiency (a log grid, then golden section) and traffic (powers of 2^(1/4))
are searched. Three rows or more fit all three; two keep traffic 1; one fits the
efficiency only (the catalogue's overhead kept). A device type with no row under a
runtime borrows the profile pooled over every device with a unit of that kind (cpu,
gpu, npu) under it. A thread count is part of the runtime (`ncnn-4t`): one core is
not the unit.

The error is judged on held-out rows, leave one out: each row is predicted by the
profile fitted without it (its own device's if the rest of its group has a row,
else the pooled one, else the catalogue's), so no row is judged by a fit it was part
of. The profiles shipped (`hw/runtimes.yaml`) are fitted on every row.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure

from simdl.errors import SimdlError
from simdl.hw import measured
from simdl.hw.devices import DeviceSpec, background_at, load_catalogue
from simdl.nn import models
from simdl.plan.plan import deployed_chain
from simdl.report.frame import png
from simdl.report.store import (
    atomic_write,
    check_folder,
    write_csv,
    write_staged,
)

#: The efficiency searched, on a log grid from here to 1 (then refined between points).
EFF_LOW, EFF_POINTS, GOLDEN_STEPS = 1e-4, 241, 80
#: The input the published models take at full size: rows measured at another are left out.
FULL_INPUT = "224x224"
#: The traffic factors searched: 2^(k/4) from 1/16 to 4 (1 exactly among them).
TRAFFIC = 2.0 ** (np.arange(-16, 9) / 4)
#: How many traffic factors, best on the grid first, have their efficiency refined.
REFINED = len(TRAFFIC)


class Profile(NamedTuple):
    efficiency: float
    overhead: float
    traffic: float = 1.0


@dataclass(frozen=True)
class Work:
    """One measured row as the roofline sees it: per block FLOPs and bytes, and the
    unit's figures (peak for the row's dtype, memory bandwidth, background load)."""

    flops: np.ndarray
    nbytes: np.ndarray
    peak: float
    bandwidth: float
    load: float

    def seconds(self, efficiency: float, overhead: float, traffic: float = 1.0) -> float:
        """The simulated latency: every block's roofline plus overhead, over the free share."""
        busy = np.maximum(self.flops / (self.peak * efficiency),
                          self.nbytes * traffic / self.bandwidth)
        return float((busy.sum() + len(self.flops) * overhead) / (1.0 - self.load))

    def busy(self, efficiency: np.ndarray, traffic: np.ndarray) -> np.ndarray:
        """Roofline seconds without overhead or load, for every (traffic, efficiency) pair."""
        compute = self.flops / (self.peak * efficiency[:, None])         # (E, B)
        memory = self.nbytes * traffic[:, None] / self.bandwidth          # (T, B)
        return np.maximum(compute[None], memory[:, None]).sum(-1)         # (T, E)


@cache
def _blocks(model: str, dtype: str, batch: int) -> tuple[np.ndarray, np.ndarray]:
    chain = deployed_chain(models.build(model), dtype, 0.0, "unstructured")
    costs = chain.costs(batch)
    return (np.array([c.fwd_flops for c in costs], float),
            np.array([c.fwd_bytes for c in costs], float))


def work(spec: DeviceSpec, unit: str, model: str, dtype: str, batch: int) -> Work:
    """Row -> Work: the zoo model at its full published size, deployed in `dtype`."""
    u = spec.units[unit]
    if dtype not in u.peak:
        raise SimdlError(f"{spec.type}.units.{unit}", dtype,
                         f"a dtype this unit runs: {', '.join(u.peak)}")
    flops, nbytes = _blocks(model, dtype, batch)
    return Work(flops, nbytes, u.peak[dtype], spec.mem_bw if u.mem_bw is None else u.mem_bw,
                background_at(spec, 0.0))


def _scaled(rows: Sequence[Work], measured: np.ndarray, efficiency: np.ndarray,
            traffic: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, busy / ((1 - load) measured) for every (traffic, efficiency), and the
    overhead's coefficient n_kernels / ((1 - load) measured)."""
    a = np.stack([w.busy(efficiency, traffic) / ((1 - w.load) * y)
                  for w, y in zip(rows, measured)])                       # (R, T, E)
    c = np.array([len(w.flops) / ((1 - w.load) * y) for w, y in zip(rows, measured)])
    return a, c


def _errors(a: np.ndarray, c: np.ndarray, overhead: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Sum of squared relative errors and the overhead used, per (traffic, efficiency):
    `overhead` when given, else the least-squares one, >= 0 (the error is affine in it)."""
    if overhead is None:
        o = np.maximum(0.0, np.tensordot(c, 1.0 - a, axes=(0, 0)) / np.dot(c, c))
    else:
        o = np.full(a.shape[1:], overhead)
    r = a + c[:, None, None] * o - 1.0
    return (r * r).sum(0), o


def best_overhead(rows: Sequence[Work], measured: Sequence[float], efficiency: float,
                  traffic: float = 1.0) -> float:
    """The overhead >= 0 with the least squared relative error at this efficiency and
    traffic: predictions are affine in it, so one-variable least squares."""
    a, c = _scaled(rows, np.asarray(measured, float), np.array([efficiency]), np.array([traffic]))
    return float(_errors(a, c, None)[1][0, 0])


def fit(rows: Sequence[Work], measured: Sequence[float], overhead: float | None = None,
        traffic: bool = True) -> Profile:
    """The profile minimising the squared relative errors of `rows` against `measured`
    seconds: `overhead` given, it is kept; `traffic` False, it stays 1."""
    y = np.asarray(measured, float)
    grid = np.linspace(math.log(EFF_LOW), 0.0, EFF_POINTS)
    factors = TRAFFIC if traffic else np.array([1.0])
    values, _ = _errors(*_scaled(rows, y, np.exp(grid), factors), overhead)
    # equal errors (no block memory-bound at either traffic): the one nearest 1 wins
    best = min((_refine(rows, y, grid, values[ti], factors[ti], overhead)
                for ti in np.argsort(values.min(1), kind="stable")[:REFINED]),
               key=lambda found: (found[0], abs(math.log(found[2]))))
    e, t = math.exp(best[1]), best[2]
    return Profile(e, best_overhead(rows, y, e, t) if overhead is None else overhead, t)


def _refine(rows: Sequence[Work], y: np.ndarray, grid: np.ndarray, values: np.ndarray,
            traffic: float, overhead: float | None) -> tuple[float, float, float]:
    """(error, log efficiency, traffic): golden section between the grid's best point's
    neighbours at this traffic."""
    def cost(log_eff: float) -> float:
        a, c = _scaled(rows, y, np.array([math.exp(log_eff)]), np.array([traffic]))
        return float(_errors(a, c, overhead)[0][0, 0])

    k = int(np.argmin(values))
    lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = cost(a), cost(b)
    for _ in range(GOLDEN_STEPS):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = cost(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = cost(b)
    return min((float(values[k]), float(grid[k]), traffic), (fa, a, traffic), (fb, b, traffic))


def _fit_group(rows: list[Work], y: list[float], catalogue_overhead: float) -> Profile:
    if len(rows) < 3:
        return fit(rows, y, overhead=catalogue_overhead, traffic=len(rows) == 2)
    return fit(rows, y)


def setups(measured: pd.DataFrame) -> pd.DataFrame:
    """The rows with `runtime` naming the whole setup a profile is for: the runtime, its
    thread count (one core is not the unit) and the precision (int8 kernels are not the
    fp16 ones), e.g. `ncnn-4t-int8`; `family` is the same without the precision."""
    threads = measured["threads"] if "threads" in measured else pd.Series(pd.NA, measured.index)
    family = [r if pd.isna(t) else f"{r}-{int(t)}t" for r, t in zip(measured.runtime, threads)]
    return measured.assign(family=family,
                           runtime=[f"{f}-{p}" for f, p in zip(family, measured.precision)])


def calibrate(measured: pd.DataFrame, specs: dict[str, DeviceSpec] | None = None
              ) -> tuple[pd.DataFrame, dict]:
    """(one row per usable measurement with its predictions and errors, the profiles
    fitted on every row). Rows on no catalogued device are left out.

    A row's profile is its setup's on its device when that has two rows or more, else
    its runtime family's on its device (the other precisions), else its setup's pooled
    over the devices with a unit of its kind, else the catalogue's figures."""
    specs = specs or load_catalogue()
    rows = setups(measured[measured["device"].isin(list(specs))].reset_index(drop=True))
    works = [work(specs[r.device], r.unit, r.model, r.precision, int(r.batch))
             for r in rows.itertuples()]
    y = rows["latency_ms"].to_numpy(float) / 1e3
    units = [specs[r.device].units[r.unit] for r in rows.itertuples()]
    levels = (("setup", [(r.device, r.unit, r.runtime) for r in rows.itertuples()], 2),
              ("family", [(r.device, r.unit, r.family) for r in rows.itertuples()], 1),
              ("kind", [(u.kind, r.runtime) for u, r in zip(units, rows.itertuples())], 1))
    base = [Profile(u.efficiency, u.overhead) for u in units]
    fits: dict[tuple, Profile] = {}

    def group(members: tuple[int, ...]) -> Profile:
        if members not in fits:
            fits[members] = _fit_group([works[j] for j in members], [y[j] for j in members],
                                       base[members[0]].overhead)
        return fits[members]

    def profile_for(i: int, skip: int | None) -> tuple[Profile, str, tuple[int, ...]]:
        for level, keys, least in levels:
            members = tuple(j for j in range(len(rows)) if keys[j] == keys[i] and j != skip)
            if len(members) >= least:
                return group(members), level, members
        return base[i], "catalogue", ()

    out = []
    for i, r in enumerate(rows.itertuples()):
        held, source, _ = profile_for(i, skip=i)
        before, after = works[i].seconds(*base[i]), works[i].seconds(*held)
        out.append({"device": r.device, "unit": r.unit, "runtime": r.runtime,
                    "model": r.model, "precision": r.precision, "batch": int(r.batch),
                    "measured_ms": y[i] * 1e3, "before_ms": before * 1e3,
                    "heldout_ms": after * 1e3, "heldout_from": source,
                    "fitted_ms": works[i].seconds(*profile_for(i, skip=None)[0]) * 1e3,
                    "error_before": before / y[i] - 1.0, "error_heldout": after / y[i] - 1.0})

    def entry(fitted: Profile, members: tuple[int, ...], level: str) -> dict:
        return {"efficiency": float(f"{fitted.efficiency:.6g}"),
                "overhead_s": float(f"{fitted.overhead:.6g}"),
                "traffic": float(fitted.traffic), "fitted_on": level, "rows": len(members),
                "models": sorted(set(rows.model.iloc[list(members)]))}

    profiles: dict = {"devices": {}, "kinds": {}}
    _, own, _ = levels[0]
    for i in sorted({own.index(key) for key in own}):
        device, unit, runtime = own[i]
        fitted, level, members = profile_for(i, skip=None)
        profiles["devices"].setdefault(device, {}).setdefault(unit, {})[runtime] = entry(
            fitted, members, level)
    _, pooled, _ = levels[2]
    for key in sorted(set(pooled)):
        members = tuple(j for j in range(len(rows)) if pooled[j] == key)
        profiles["kinds"].setdefault(key[0], {})[key[1]] = entry(group(members), members,
                                                                 "kind")
    return pd.DataFrame(out), profiles


def summary(table: pd.DataFrame) -> dict[str, float | int]:
    """The headline: rows, devices, and the median |relative error| before the fit (the
    catalogue's figures) and after it, on held-out rows."""
    return {"rows": len(table), "devices": int(table.device.nunique()),
            "median_error_before": float(table.error_before.abs().median()),
            "median_error_heldout": float(table.error_heldout.abs().median())}


def profiles_yaml(profiles: dict, source: str) -> str:
    """`hw/runtimes.yaml` as `simdl calibrate` writes it: the same rows, the same bytes."""
    head = ("# Runtime profiles: efficiency and overhead per kernel of a unit under one\n"
            "# runtime, fitted by `simdl calibrate` (simdl/calibrate.py) to the measured\n"
            f"# latencies in {source}. Written by that command, never by hand.\n")
    return head + yaml.safe_dump({"format": 1, **profiles}, sort_keys=True, width=100)


def figure(table: pd.DataFrame, title: str = "") -> Figure:
    """Predicted against measured latency, log-log: the catalogue's figures and the
    held-out fitted ones, with the diagonal where they would be exact."""
    fig = Figure(figsize=(6.5, 6), layout="constrained")
    ax = fig.subplots()
    for column, error, name, marker in (
            ("before_ms", "error_before", "catalogue figures", "x"),
            ("heldout_ms", "error_heldout", "fitted, held out", "o")):
        err = table[error].abs().median()
        ax.scatter(table.measured_ms, table[column], s=14, marker=marker,
                   label=f"{name} (median error {err:.0%})")
    lo = float(min(table.measured_ms.min(), table.before_ms.min(), table.heldout_ms.min()))
    hi = float(max(table.measured_ms.max(), table.before_ms.max(), table.heldout_ms.max()))
    ax.plot([lo, hi], [lo, hi], color="0.5", linewidth=0.8)
    ax.set(xscale="log", yscale="log", xlabel="measured latency (ms)",
           ylabel="simulated latency (ms)", title=title or "simdl against measured latencies")
    ax.grid(color="0.9", linewidth=0.6)
    ax.legend(fontsize=8, frameon=False)
    return fig


def write(table: pd.DataFrame, profiles: dict, out: Path, source: str) -> None:
    """`calibration.csv` (a row per measurement), `runtimes.yaml` and `calibration.png`
    into `out`, a folder being written whole."""
    write_csv(table, out / "calibration.csv")
    atomic_write(out / "runtimes.yaml", profiles_yaml(profiles, source))
    png(figure(table), out / "calibration.png")


def run(data: str | Path | None, out: str | Path, *, overwrite: bool = False,
        where: str = "--out") -> tuple[pd.DataFrame, dict]:
    """`simdl calibrate`: fit the rows of `data` (default: the shipped `hw/measured.csv`)
    on the published models, and write the folder `out` whole (`write`)."""
    try:
        table_in = measured.load(data)
    except (OSError, UnicodeDecodeError) as err:
        raise SimdlError("--data", str(data), f"a readable UTF-8 CSV file ({err})") from None
    usable = table_in[table_in.model.isin(measured.CALIBRATION_MODELS)
                      & (table_in.input == FULL_INPUT)]
    check_folder(out, where, overwrite=overwrite, marker="calibration.csv")  # before fitting
    table, profiles = calibrate(usable)
    source = "simdl/hw/measured.csv" if data is None else Path(data).name
    write_staged(out, lambda folder: write(table, profiles, folder, source), where=where,
                 overwrite=overwrite, marker="calibration.csv")
    return table, profiles
