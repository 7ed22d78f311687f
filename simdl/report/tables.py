"""The run-folder tables, derived from the event log's columns (`report.columns`).

Owns the meaning of every reported number (requests, devices, links, summary,
comparison) and the terminal table. Knows the log's columns and row kinds;
knows nothing of the engine's objects: specs and energy come in as plain
mappings, link counters as dicts, so a table never measures anything twice.
Each kind's rows are found once and shared; sums add as pandas' group-by and
Series.sum add (`columns.by_key`, `columns.total`), so every figure keeps its bits.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np
import pandas as pd

from simdl.report import faults
from simdl.report.columns import Coded, Columns, Log, by_key, lookup, total

NAN = float("nan")
REQUEST_COLUMNS = ["request", "class", "status", "cause", "attempts", "arrival", "start",
                   "finish", "latency", "memory_wait", "plan_wait", "path"]
LINK_COLUMNS = ["resource", "bytes", "busy_s", "utilisation"]
#: Rows that are work or its end; their last t_end is the makespan.
WORK_KINDS = ("compute", "transfer", "request", "failed", "step")
#: Rows that held a unit: a kernel lost mid-run occupied (and powered) its unit too.
BUSY_KINDS = ("compute", "lost")
PERCENTILES = (50, 95, 99)
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


def requests_table(events: Log) -> pd.DataFrame:
    """One row per request: `completed`, or `failed` with its `cause`; `attempts` is
    1 + its retries.

    start is the t_start of the request's first completed kernel (of any attempt); a
    failed request has no finish and no latency. memory_wait is how long its work
    waited for memory (`memory_waits`), plan_wait how long it waited for a plan to
    serve it (weights moving after a re-plan). Times in seconds, sorted by request.
    """
    return _requests(Columns.of(events))


def _requests(log: Columns) -> pd.DataFrame:
    rows = log.rows("request", "failed")
    rows = rows[np.argsort(log.request[rows], kind="stable")]
    request = log.request[rows]
    kind = log.coded("kind")
    done = kind.codes[rows] == kind.code("request")
    compute = log.rows("compute")
    started = by_key("min", log.request[compute], log.t_start[compute])
    cause, attempts, plan_wait = faults.fates(log, request)
    arrival, finish = log.t_start[rows], np.where(done, log.t_end[rows], NAN)
    return pd.DataFrame({
        "request": request,
        "class": pd.array(log.coded("resource").of(rows), dtype="str"),
        "status": np.where(done, "completed", "failed").astype(object),
        "cause": pd.Series(cause, dtype=object, copy=False),  # plain objects, as ever
        "attempts": attempts,
        "arrival": arrival,
        "start": lookup(*started, request, NAN),
        "finish": finish,
        "latency": finish - arrival,
        "memory_wait": lookup(*_memory_waits(log), request, 0.0),
        "plan_wait": plan_wait,
        "path": pd.array(np.where(done, log.label[rows], ""), dtype="str"),
    }, columns=REQUEST_COLUMNS)


def memory_waits(events: Log) -> pd.Series:
    """Seconds each request (the index) had work waiting for memory: the union of its
    memwait rows, so micro-batches that wait side by side count once."""
    keys, waits = _memory_waits(Columns.of(events))
    return pd.Series(waits, index=pd.Index(keys, name="request"), name="memory_wait")


def _memory_waits(log: Columns) -> tuple[np.ndarray, np.ndarray]:
    rows = log.rows("memwait")
    rows = rows[np.lexsort((log.t_end[rows], log.t_start[rows], log.request[rows]))]
    by, start, end = log.request[rows], log.t_start[rows], log.t_end[rows]
    # The furthest end so far in each request: rows sorted by (request, end) rank above
    # every row of an earlier request, so a running max of ranks restarts per request.
    order = np.lexsort((end, by))
    rank = np.empty(len(rows), dtype=np.intp)
    rank[order] = np.arange(len(rows))
    reach = end[order][np.maximum.accumulate(rank)]
    before = np.full(len(rows), -np.inf)
    same = by[1:] == by[:-1]
    before[1:][same] = reach[:-1][same]
    new = end - np.maximum(start, before)
    return by_key("sum", by, np.where(np.isnan(new) | (new >= 0.0), new, 0.0))


def devices_table(events: Log, specs: Mapping[str, DeviceLike],
                  energy: Mapping[str, EnergyLike], duration: float) -> pd.DataFrame:
    """One row per device of `specs`, in its order.

    busy_<unit>_s is NaN for a unit the device does not have; utilisation is
    the busiest unit's busy time over `duration`; peak memory is the running
    sum of alloc rows in log order (0 if none); left_at is NaN if it stayed;
    availability is the share of `duration` it was in the pool (`faults.away`).
    """
    return _devices(Columns.of(events), specs, energy, duration)


def _by_name(column: Coded, got: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """Per-code figures (`by_key`) as a dict by name."""
    return {column.names[k]: float(v) for k, v in zip(got[0].tolist(), got[1].tolist())}


def _devices(log: Columns, specs: Mapping[str, DeviceLike],
             energy: Mapping[str, EnergyLike], duration: float) -> pd.DataFrame:
    units = sorted({u for spec in specs.values() for u in spec.units})
    device, resource = log.coded("device"), log.coded("resource")
    worked = log.rows(*BUSY_KINDS)
    n = max(len(resource.names), 1)
    keys, seconds = by_key("sum", device.codes[worked] * n + resource.codes[worked],
                         log.t_end[worked] - log.t_start[worked])
    busy = {(device.names[k // n], resource.names[k % n]): float(v)
            for k, v in zip(keys.tolist(), seconds.tolist())}
    compute, moved = log.rows("compute"), log.rows("transfer")
    flops = _by_name(device, by_key("sum", device.codes[compute], log.flops[compute]))
    sent = _by_name(device, by_key("sum", device.codes[moved], log.nbytes[moved]))
    received = _by_name(resource, by_key("sum", resource.codes[moved], log.nbytes[moved]))
    allocs = log.rows("alloc")
    held = (pd.Series(log.nbytes[allocs], copy=False).groupby(device.codes[allocs]).cumsum()
            .to_numpy())  # compensated, as pandas adds
    peak = {name: max(v, 0.0) for name, v in  # clipped at 0 as pandas clips (NaN, -0.0 kept)
            _by_name(device, by_key("max", device.codes[allocs], held)).items()}
    leaves = log.rows("leave")
    left = _by_name(device, by_key("min", device.codes[leaves], log.t_start[leaves]))
    absent = faults.away(log, duration)
    records = []
    for name, spec in specs.items():
        row: dict[str, Any] = {"device": name, "type": spec.type}
        for u in units:
            row[f"busy_{u}_s"] = busy.get((name, u), 0.0) if u in spec.units else NAN
        busiest = max((busy.get((name, u), 0.0) for u in spec.units), default=0.0)
        e = energy.get(name)
        row.update(
            utilisation=_ratio(busiest, duration),
            flops=flops.get(name, 0.0),
            bytes_sent=sent.get(name, 0.0),
            bytes_received=received.get(name, 0.0),
            energy_J=float(e.total) if e is not None else NAN,
            energy_idle_J=float(e.idle) if e is not None else NAN,
            energy_compute_J=float(e.compute) if e is not None else NAN,
            energy_radio_J=float(e.radio) if e is not None else NAN,
            peak_memory_bytes=peak.get(name, 0.0),
            left_at=left.get(name, NAN),
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
    links = sorted(((str(s["resource"]), float(s["bytes"]), float(s["busy_time"]))
                    for s in link_stats), key=lambda link: link[0])  # stable, as text sorts
    return pd.DataFrame({
        "resource": np.array([r for r, _, _ in links], dtype=object),
        "bytes": np.array([b for _, b, _ in links], dtype="float64"),
        "busy_s": np.array([t for _, _, t in links], dtype="float64"),
        "utilisation": np.array([_ratio(t, duration) for _, _, t in links], dtype="float64"),
    }, columns=LINK_COLUMNS)


class RunTables(NamedTuple):
    """Every table of one run, and the log they came from (cleaned)."""

    events: pd.DataFrame
    requests: pd.DataFrame
    devices: pd.DataFrame
    links: pd.DataFrame
    summary: pd.DataFrame
    faults: pd.DataFrame  # one row per device leave (`faults.faults_table`)


def run_tables(events: Log, specs: Mapping[str, DeviceLike],
               energy: Mapping[str, EnergyLike], link_stats: Sequence[Mapping[str, Any]],
               duration: float, **context: Any) -> RunTables:
    """`requests_table`, `devices_table`, `links_table`, `summary` and the faults table of
    one run, from one `Columns` of the log: each selection made once, each table once."""
    log = Columns.of(events)
    requests = _requests(log)
    devices = _devices(log, specs, energy, duration)
    links = links_table(link_stats, duration)
    fault_rows = faults.faults_table(log)
    return RunTables(log.events, requests, devices, links,
                     _summary(log, requests, devices, links, duration, context, specs,
                              fault_rows), fault_rows)


def summary(events: Log, devices_df: pd.DataFrame, links_df: pd.DataFrame,
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
    log = Columns.of(events)
    return _summary(log, _requests(log), devices_df, links_df, duration, context, specs,
                    faults.faults_table(log))


def _summary(log: Columns, reqs: pd.DataFrame, devices_df: pd.DataFrame,
             links_df: pd.DataFrame, duration: float, context: dict[str, Any],
             specs: Mapping[str, DeviceLike] | None, fault_rows: pd.DataFrame) -> pd.DataFrame:
    status, latency = reqs["status"].to_numpy(), reqs["latency"].to_numpy()
    done = status == "completed"
    failed = reqs["cause"].to_numpy()[status == "failed"]
    work = log.t_end[log.rows(*WORK_KINDS)]
    makespan = float(np.fmax.reduce(work)) if len(work) else 0.0
    completed = int(done.sum())
    answers = completed + len(log.rows("late"))
    row: dict[str, Any] = dict(context)
    row.update(
        requests_completed=completed,
        requests_failed=len(failed),
        duration_s=float(duration),
        makespan_s=makespan,
        throughput_rps=_ratio(answers, makespan) if len(reqs) else NAN,
        goodput_rps=_ratio(completed, makespan) if len(reqs) else NAN,
    )
    row.update({f"failed_{c}": int((failed == c).sum()) for c in faults.CAUSES})
    row["retries"] = int(reqs["attempts"].to_numpy().sum() - len(reqs))
    row.update(_latency_percentiles(latency[done], ""))
    classes = reqs["class"].to_numpy(dtype=object)
    for cls in sorted(set(classes.tolist()) - {""}):
        row.update(_latency_percentiles(latency[done & (classes == cls)], f"_{cls}"))
    some = len(devices_df) > 0
    is_used = _used(devices_df) if some else np.zeros(0, dtype=bool)
    energy = devices_df["energy_J"].to_numpy() if some else np.zeros(0)
    utilisation = devices_df["utilisation"].to_numpy() if some else np.zeros(0)
    counted = int((~np.isnan(utilisation)).sum())
    link_use = links_df["utilisation"].to_numpy()
    row.update(
        network_bytes=total(log.nbytes[log.rows("transfer")]),
        energy_used_J=total(energy[is_used]),
        energy_J=total(energy),
        peak_memory_max_MiB=(float(np.fmax.reduce(devices_df["peak_memory_bytes"].to_numpy()))
                             / MIB if some else 0.0),
        memory_wait_s=total(reqs["memory_wait"].to_numpy()),
        plan_wait_s=total(reqs["plan_wait"].to_numpy()),
        mean_utilisation=(total(utilisation) / counted if counted else NAN) if some else NAN,
        max_link_utilisation=float(np.fmax.reduce(link_use)) if len(link_use) else NAN,
    )
    row.update(faults.wasted(log, specs))
    recovery = fault_rows["recovery_s"].to_numpy()
    row["recovery_s_max"] = (float(np.fmax.reduce(recovery)) if (~np.isnan(recovery)).any()
                             else NAN)
    busy = set(devices_df["device"].to_numpy()[is_used].tolist()) if some else set()
    row["degraded_s"] = faults.degraded(log, {str(d) for d in busy}, duration)
    return pd.DataFrame([row])


def used(devices_df: pd.DataFrame) -> pd.Series:
    """Which rows of a devices table did work: computed FLOPs, or sent or received bytes."""
    return pd.Series(_used(devices_df), index=devices_df.index)


def _used(devices_df: pd.DataFrame) -> np.ndarray:
    return ((devices_df["flops"].to_numpy() > 0) | (devices_df["bytes_sent"].to_numpy() > 0)
            | (devices_df["bytes_received"].to_numpy() > 0))


def _latency_percentiles(latency: np.ndarray, suffix: str) -> dict[str, float]:
    values = latency.astype("float64") * 1e3
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
