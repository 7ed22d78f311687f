"""The run-folder tables, derived from the event log with pandas group-bys only.

Owns the meaning of every reported number (requests, devices, links, summary,
comparison) and the terminal table. Knows the log's columns and row kinds;
knows nothing of the engine's objects: specs and energy come in as plain
mappings, link counters as dicts, so a table never measures anything twice.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np
import pandas as pd

from simdl.report import faults
from simdl.sim.recorder import COLUMNS

NAN = float("nan")
REQUEST_COLUMNS = ["request", "class", "status", "cause", "attempts", "arrival", "start",
                   "finish", "latency", "memory_wait", "plan_wait", "path"]
LINK_COLUMNS = ["resource", "bytes", "busy_s", "utilisation"]
#: Rows that are work or its end; their last t_end is the makespan.
WORK_KINDS = ("compute", "transfer", "request", "failed", "step")
#: Rows that held a unit: a kernel lost mid-run occupied (and powered) its unit too.
BUSY_KINDS = ("compute", "lost")
PERCENTILES = (50, 95, 99)
#: Log columns with few distinct values, which the tables compare and group by.
CODED = ("kind", "device", "resource")
#: The summary columns worth a terminal line (pass as `format_table(df, HEADLINE)`).
HEADLINE = ("scenario", "strategy", "seed", "requests_completed", "requests_failed", "makespan_s",
            "offered_rps", "throughput_rps", "capacity_rps", "latency_p50_ms", "latency_p95_ms",
            "latency_p99_ms", "network_bytes", "energy_used_J", "energy_J", "peak_memory_max_MiB",
            "mean_utilisation")
MIB = 2**20


class DeviceLike(Protocol):
    """What a table needs of a DeviceSpec."""

    @property
    def type(self) -> str: ...

    @property
    def units(self) -> Mapping[str, Any]: ...


class EnergyLike(Protocol):
    """What a table needs of an Energy record (joules)."""

    @property
    def idle(self) -> float: ...

    @property
    def compute(self) -> float: ...

    @property
    def radio(self) -> float: ...

    @property
    def total(self) -> float: ...


def clean(events: pd.DataFrame) -> pd.DataFrame:
    """The log with its fixed columns and dtypes (also for a log read back from CSV)."""
    missing = [c for c in COLUMNS if c not in events.columns]
    if missing:
        raise ValueError(f"event log lacks columns {missing}; expected {list(COLUMNS)}")
    out = events if list(events.columns) == list(COLUMNS) else events.loc[:, list(COLUMNS)]
    fixes: dict[str, pd.Series] = {}
    for c in ("t_start", "t_end", "flops", "nbytes"):
        if out[c].dtype != "float64":
            fixes[c] = out[c].astype("float64")
    for c in ("request", "step"):
        if out[c].dtype != "int64":
            fixes[c] = out[c].astype("int64")
    for c in ("kind", "device", "resource", "label"):
        if not pd.api.types.is_string_dtype(out[c]) or out[c].isna().any():
            fixes[c] = out[c].fillna("").astype(str)
    # A log that is already clean is returned as is (the tables never modify it).
    return out.assign(**fixes) if fixes else out


def coded(events: pd.DataFrame) -> pd.DataFrame:
    """The log with its kinds, devices and resources as categories (sorted, so groups
    come out in text order): the tables' many selections and group-bys then compare
    small codes, not text. The log callers see keeps its text columns."""
    out = {}
    for c in CODED:
        if not isinstance(events[c].dtype, pd.CategoricalDtype):
            codes, names = pd.factorize(events[c].to_numpy(dtype=object), sort=True)
            out[c] = pd.Categorical.from_codes(codes, dtype=pd.CategoricalDtype(
                pd.Index(names, dtype="str")))
    return events.assign(**out) if out else events


def requests_table(events: pd.DataFrame) -> pd.DataFrame:
    """One row per request: `completed`, or `failed` with its `cause`; `attempts` is
    1 + its retries.

    start is the t_start of the request's first completed kernel (of any attempt); a
    failed request has no finish and no latency. memory_wait is how long its work
    waited for memory (`memory_waits`), plan_wait how long it waited for a plan to
    serve it (weights moving after a re-plan). Times in seconds, sorted by request.
    """
    return _requests(coded(clean(events)))


def _requests(events: pd.DataFrame) -> pd.DataFrame:
    kind = events["kind"]
    rows = events.loc[kind.isin(("request", "failed")), ["kind", "resource", "t_start",
                                                         "t_end", "label", "request"]]
    compute = events.loc[kind == "compute", ["request", "t_start"]]
    first = compute.groupby("request")["t_start"].min()
    done = rows["kind"] == "request"
    out = pd.DataFrame({
        "request": rows["request"],
        "class": rows["resource"].astype("str"),
        "status": np.where(done, "completed", "failed").astype(object),
        "arrival": rows["t_start"],
        "start": rows["request"].map(first).astype("float64"),
        "finish": rows["t_end"].where(done),
        "path": rows["label"].where(done, ""),
    })
    fate = faults.fates(events)
    out["cause"] = out["request"].map(fate["cause"]).astype(object).fillna("")
    out["attempts"] = out["request"].map(fate["attempts"]).fillna(1).astype("int64")
    out["latency"] = out["finish"] - out["arrival"]
    out["memory_wait"] = out["request"].map(memory_waits(events)).fillna(0.0).astype("float64")
    out["plan_wait"] = out["request"].map(fate["plan_wait"]).fillna(0.0).astype("float64")
    return out[REQUEST_COLUMNS].sort_values("request", kind="stable").reset_index(drop=True)


def memory_waits(events: pd.DataFrame) -> pd.Series:
    """Seconds each request (the index) had work waiting for memory: the union of its
    memwait rows, so micro-batches that wait side by side count once."""
    w = events.loc[events["kind"] == "memwait", ["request", "t_start", "t_end"]]
    w = w.sort_values(["request", "t_start", "t_end"], kind="stable")
    by = w["request"]
    reach = w["t_end"].groupby(by).cummax()  # the furthest end so far, this row's included
    before = reach.groupby(by).shift(1, fill_value=-np.inf)  # ... of the rows before it
    new = (w["t_end"] - np.maximum(w["t_start"], before)).clip(lower=0.0)
    return new.groupby(by).sum()


def devices_table(events: pd.DataFrame, specs: Mapping[str, DeviceLike],
                  energy: Mapping[str, EnergyLike], duration: float) -> pd.DataFrame:
    """One row per device of `specs`, in its order.

    busy_<unit>_s is NaN for a unit the device does not have; utilisation is
    the busiest unit's busy time over `duration`; peak memory is the running
    sum of alloc rows in log order (0 if none); left_at is NaN if it stayed;
    availability is the share of `duration` it was in the pool (`faults.away`).
    """
    return _devices(coded(clean(events)), specs, energy, duration)


def _devices(events: pd.DataFrame, specs: Mapping[str, DeviceLike],
             energy: Mapping[str, EnergyLike], duration: float) -> pd.DataFrame:
    units = sorted({u for spec in specs.values() for u in spec.units})
    kind = events["kind"]
    worked = events.loc[kind.isin(BUSY_KINDS), ["device", "resource", "t_start", "t_end"]]
    busy = (worked["t_end"] - worked["t_start"]).groupby(
        [worked["device"], worked["resource"]], observed=True).sum().to_dict()
    # Plain dicts below: a Series on a categorical index cannot look up a name it lacks
    # once its codes pass int8 (more than 127 devices).
    compute = events.loc[kind == "compute", ["device", "flops"]]
    flops = compute.groupby("device", observed=True)["flops"].sum().to_dict()
    transfers = events.loc[kind == "transfer", ["device", "resource", "nbytes"]]
    sent = transfers.groupby("device", observed=True)["nbytes"].sum().to_dict()
    received = transfers.groupby("resource", observed=True)["nbytes"].sum().to_dict()
    allocs = events.loc[kind == "alloc", ["device", "nbytes"]]
    held = allocs.groupby("device", observed=True)["nbytes"].cumsum()
    peak = held.groupby(allocs["device"], observed=True).max().clip(lower=0.0).to_dict()
    leaves = events.loc[kind == "leave", ["device", "t_start"]]
    left = leaves.groupby("device", observed=True)["t_start"].min().to_dict()
    absent = faults.away(events, duration)
    records = []
    for name, spec in specs.items():
        row: dict[str, Any] = {"device": name, "type": spec.type}
        for u in units:
            row[f"busy_{u}_s"] = float(busy.get((name, u), 0.0)) if u in spec.units else NAN
        busiest = max((busy.get((name, u), 0.0) for u in spec.units), default=0.0)
        e = energy.get(name)
        row.update(
            utilisation=_ratio(busiest, duration),
            flops=float(flops.get(name, 0.0)),
            bytes_sent=float(sent.get(name, 0.0)),
            bytes_received=float(received.get(name, 0.0)),
            energy_J=float(e.total) if e is not None else NAN,
            energy_idle_J=float(e.idle) if e is not None else NAN,
            energy_compute_J=float(e.compute) if e is not None else NAN,
            energy_radio_J=float(e.radio) if e is not None else NAN,
            peak_memory_bytes=float(peak.get(name, 0.0)),
            left_at=float(left.get(name, NAN)),
            availability=1.0 - _ratio(absent.get(name, 0.0), duration) if duration > 0 else NAN,
        )
        records.append(row)
    columns = (["device", "type"] + [f"busy_{u}_s" for u in units]
               + ["utilisation", "flops", "bytes_sent", "bytes_received", "energy_J",
                  "energy_idle_J", "energy_compute_J", "energy_radio_J",
                  "peak_memory_bytes", "left_at", "availability"])
    return pd.DataFrame.from_records(records, columns=columns)


def links_table(link_stats: Sequence[Mapping[str, Any]], duration: float) -> pd.DataFrame:
    """One row per link: bytes carried, seconds busy, busy share of `duration`."""
    df = pd.DataFrame.from_records(
        [(str(s["resource"]), float(s["bytes"]), float(s["busy_time"])) for s in link_stats],
        columns=LINK_COLUMNS[:3])
    df["bytes"] = df["bytes"].astype("float64")
    df["busy_s"] = df["busy_s"].astype("float64")
    df["utilisation"] = [_ratio(b, duration) for b in df["busy_s"]]
    df["utilisation"] = df["utilisation"].astype("float64")
    return df.sort_values("resource", kind="stable").reset_index(drop=True)


class RunTables(NamedTuple):
    """Every table of one run, and the log they came from (cleaned)."""

    events: pd.DataFrame
    requests: pd.DataFrame
    devices: pd.DataFrame
    links: pd.DataFrame
    summary: pd.DataFrame
    faults: pd.DataFrame  # one row per device leave (`faults.faults_table`)


def run_tables(events: pd.DataFrame, specs: Mapping[str, DeviceLike],
               energy: Mapping[str, EnergyLike], link_stats: Sequence[Mapping[str, Any]],
               duration: float, **context: Any) -> RunTables:
    """`requests_table`, `devices_table`, `links_table` and `summary` of one run, the
    log cleaned and coded once and the requests table made once."""
    events = clean(events)
    log = coded(events)
    requests = _requests(log)
    devices = _devices(log, specs, energy, duration)
    links = links_table(link_stats, duration)
    return RunTables(events, requests, devices, links,
                     _summary(log, requests, devices, links, duration, context, specs),
                     faults.faults_table(log))


def summary(events: pd.DataFrame, devices_df: pd.DataFrame, links_df: pd.DataFrame,
            duration: float, specs: Mapping[str, DeviceLike] | None = None,
            **context: Any) -> pd.DataFrame:
    """One row: the context (scenario, strategy, seed, ...) then the run's headline numbers.

    makespan_s is the last end of any work row (a failure decision included);
    goodput_rps = requests completed / makespan_s; throughput_rps counts every answer
    the pool produced, a late one of an abandoned attempt too (both NaN without
    requests); failed_<cause> counts failed requests by cause; retries sums the
    requests' attempts beyond their first. lost_* (work cut short by a device leaving)
    and redone_* (finished work whose answer was not used) are FLOPs, unit-seconds and
    joules (`faults.wasted`; joules need `specs`); recovery_s_max is the longest
    recovery after a leave (`faults.faults_table`); degraded_s the time some device the
    run used was out of the pool. Latency percentiles (ms) are
    numpy's "linear" ones over completed requests, overall and per priority class when
    classes exist; memory_wait_s and plan_wait_s sum the requests' waits.
    energy_J is the whole pool's; energy_used_J only the devices the strategy used (any
    FLOP computed or byte sent or received), so idle bystanders do not count against it.
    """
    events = coded(clean(events))
    return _summary(events, _requests(events), devices_df, links_df, duration, context, specs)


def _summary(events: pd.DataFrame, reqs: pd.DataFrame, devices_df: pd.DataFrame,
             links_df: pd.DataFrame, duration: float, context: dict[str, Any],
             specs: Mapping[str, DeviceLike] | None = None) -> pd.DataFrame:
    done = reqs[reqs["status"] == "completed"]
    failed = reqs.loc[reqs["status"] == "failed", "cause"]
    work = events.loc[events["kind"].isin(WORK_KINDS), "t_end"]
    makespan = float(work.max()) if len(work) else 0.0
    answers = len(done) + int((events["kind"] == "late").sum())
    row: dict[str, Any] = dict(context)
    row.update(
        requests_completed=len(done),
        requests_failed=len(failed),
        duration_s=float(duration),
        makespan_s=makespan,
        throughput_rps=_ratio(answers, makespan) if len(reqs) else NAN,
        goodput_rps=_ratio(len(done), makespan) if len(reqs) else NAN,
    )
    row.update({f"failed_{c}": int((failed == c).sum()) for c in faults.CAUSES})
    row["retries"] = int(reqs["attempts"].sum() - len(reqs))
    row.update(_latency_percentiles(done["latency"], ""))
    for cls in sorted(set(reqs["class"]) - {""}):
        row.update(_latency_percentiles(done.loc[done["class"] == cls, "latency"], f"_{cls}"))
    sent = events.loc[events["kind"] == "transfer", "nbytes"]
    row.update(
        network_bytes=float(sent.sum()),
        energy_used_J=float(devices_df.loc[used(devices_df), "energy_J"].sum())
        if len(devices_df) else 0.0,
        energy_J=float(devices_df["energy_J"].sum()) if len(devices_df) else 0.0,
        peak_memory_max_MiB=(float(devices_df["peak_memory_bytes"].max()) / MIB
                             if len(devices_df) else 0.0),
        memory_wait_s=float(reqs["memory_wait"].sum()),
        plan_wait_s=float(reqs["plan_wait"].sum()),
        mean_utilisation=float(devices_df["utilisation"].mean()) if len(devices_df) else NAN,
        max_link_utilisation=float(links_df["utilisation"].max()) if len(links_df) else NAN,
    )
    row.update(faults.wasted(events, specs))
    recovery = faults.faults_table(events)["recovery_s"]
    row["recovery_s_max"] = float(recovery.max()) if recovery.notna().any() else NAN
    busy = set(devices_df.loc[used(devices_df), "device"]) if len(devices_df) else set()
    row["degraded_s"] = faults.degraded(events, {str(d) for d in busy}, duration)
    return pd.DataFrame([row])


def used(devices_df: pd.DataFrame) -> pd.Series:
    """Which rows of a devices table did work: computed FLOPs, or sent or received bytes."""
    return ((devices_df["flops"] > 0) | (devices_df["bytes_sent"] > 0)
            | (devices_df["bytes_received"] > 0))


def _latency_percentiles(latency: pd.Series, suffix: str) -> dict[str, float]:
    values = latency.to_numpy(dtype="float64") * 1e3
    if values.size == 0:
        return {f"latency_p{q}_ms{suffix}": NAN for q in PERCENTILES}
    got = np.percentile(values, PERCENTILES, method="linear")
    return {f"latency_p{q}_ms{suffix}": float(v) for q, v in zip(PERCENTILES, got)}


def _ratio(a: float, b: float) -> float:
    return float(a) / float(b) if b > 0 else NAN


def compare(summaries: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Stack summary rows (one per strategy), in the given order; a missing column is NaN."""
    frames = [s for s in summaries if len(s)]
    if not frames:
        return pd.DataFrame()
    columns: list[str] = []
    for s in frames:
        columns += [c for c in s.columns if c not in columns]
    rows = [r for s in frames for r in s.to_dict("records")]
    return pd.DataFrame.from_records(rows, columns=columns)


# -- the terminal table ---------------------------------------------------------

def _human(column: str, values: pd.Series) -> tuple[str, pd.Series]:
    """A column's human header and values: bytes in MB, FLOP in GFLOP, shares in %."""
    if "bytes" in column:
        return column.replace("bytes", "MB"), values / 1e6
    if column == "flops":
        return "GFLOP", values / 1e9
    if "utilisation" in column:
        return f"{column}_%", values * 100.0
    return column, values


def _cell(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        x = float(x)
        if x == 0.0:
            return "0"
        if abs(x) >= 1e5:
            return f"{x:,.0f}"
        return f"{x:.4g}"
    return str(x)


def format_table(df: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    """A plain aligned text table with human units (ms, MB, GFLOP, J, %); "-" is missing.

    Text columns are left-aligned, numbers right-aligned. Ends without a newline.
    """
    if columns is not None:
        df = df.loc[:, [c for c in columns if c in df.columns]]
    headers, cells, numeric = [], [], []
    for column in df.columns:
        values = df[column]
        is_number = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
        if is_number:
            column, values = _human(str(column), values)
        headers.append(str(column))
        cells.append([_cell(v) for v in values.tolist()])
        numeric.append(is_number)
    widths = [max([len(h)] + [len(c) for c in col]) for h, col in zip(headers, cells)]

    def line(parts: list[str]) -> str:
        return "  ".join(p.rjust(w) if num else p.ljust(w)
                         for p, w, num in zip(parts, widths, numeric)).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line([col[i] for col in cells]) for i in range(len(df))]
    return "\n".join(out)
