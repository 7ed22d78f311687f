"""The run tables computed the plain way, with pandas selections and group-bys on the
text columns (how report.tables computed them before issue 14): the oracle the
column-wise tables are checked against, value for value and bit for bit."""
import re

import numpy as np
import pandas as pd

from simdl.report.faults import CAUSES, FAULT_COLUMNS
from simdl.report.tables import (
    BUSY_KINDS,
    MIB,
    REQUEST_COLUMNS,
    WORK_KINDS,
    _latency_percentiles,
    _ratio,
)
from simdl.report.columns import clean

NAN = float("nan")
ATTEMPT = re.compile(r"/(\d+)$")
PATH = re.compile(r" \| |>|\+")


def memory_waits(ev):
    w = ev.loc[ev["kind"] == "memwait", ["request", "t_start", "t_end"]]
    w = w.sort_values(["request", "t_start", "t_end"], kind="stable")
    by = w["request"]
    reach = w["t_end"].groupby(by).cummax()
    before = reach.groupby(by).shift(1, fill_value=-np.inf)
    new = (w["t_end"] - np.maximum(w["t_start"], before)).clip(lower=0.0)
    return new.groupby(by).sum()


def requests(ev):
    ev = clean(ev)
    kind = ev["kind"]
    rows = ev.loc[kind.isin(("request", "failed"))]
    first = ev.loc[kind == "compute"].groupby("request")["t_start"].min()
    done = rows["kind"] == "request"
    retries = ev.loc[kind == "retry", "request"].value_counts()
    failed = ev.loc[kind == "failed"].set_index("request")["label"]
    w = ev.loc[kind == "planwait"]
    waits = (w["t_end"] - w["t_start"]).groupby(w["request"]).sum()
    out = pd.DataFrame({
        "request": rows["request"], "class": rows["resource"].astype("str"),
        "status": np.where(done, "completed", "failed").astype(object),
        "arrival": rows["t_start"], "start": rows["request"].map(first).astype("float64"),
        "finish": rows["t_end"].where(done), "path": rows["label"].where(done, "")})
    out["cause"] = out["request"].map(failed).astype(object).fillna("")
    out["attempts"] = out["request"].map(retries + 1).fillna(1).astype("int64")
    out["latency"] = out["finish"] - out["arrival"]
    out["memory_wait"] = out["request"].map(memory_waits(ev)).fillna(0.0).astype("float64")
    out["plan_wait"] = out["request"].map(waits).fillna(0.0).astype("float64")
    return out[REQUEST_COLUMNS].sort_values("request", kind="stable").reset_index(drop=True)


def absences(ev, duration):
    out, left = [], {}
    for kind, device, t in ev.loc[ev["kind"].isin(("leave", "join")),
                                  ["kind", "device", "t_start"]].itertuples(index=False):
        if kind == "leave":
            left.setdefault(device, float(t))
        elif device in left:
            out.append((device, left.pop(device), float(t)))
    return out + [(d, t, max(duration, t)) for d, t in left.items()]


def devices(ev, specs, energy, duration):
    ev = clean(ev)
    units = sorted({u for spec in specs.values() for u in spec.units})
    kind = ev["kind"]
    worked = ev.loc[kind.isin(BUSY_KINDS)]
    busy = (worked["t_end"] - worked["t_start"]).groupby(
        [worked["device"], worked["resource"]]).sum().to_dict()
    flops = ev.loc[kind == "compute"].groupby("device")["flops"].sum().to_dict()
    moved = ev.loc[kind == "transfer"]
    sent = moved.groupby("device")["nbytes"].sum().to_dict()
    received = moved.groupby("resource")["nbytes"].sum().to_dict()
    allocs = ev.loc[kind == "alloc"]
    held = allocs.groupby("device")["nbytes"].cumsum()
    peak = held.groupby(allocs["device"]).max().clip(lower=0.0).to_dict()
    left = ev.loc[kind == "leave"].groupby("device")["t_start"].min().to_dict()
    absent = {}
    for d, s, e in absences(ev, duration):
        absent[d] = absent.get(d, 0.0) + e - s
    records = []
    for name, spec in specs.items():
        row = {"device": name, "type": spec.type}
        for u in units:
            row[f"busy_{u}_s"] = float(busy.get((name, u), 0.0)) if u in spec.units else NAN
        e = energy.get(name)
        row.update(
            utilisation=_ratio(max((busy.get((name, u), 0.0) for u in spec.units), default=0.0),
                               duration),
            flops=float(flops.get(name, 0.0)), bytes_sent=float(sent.get(name, 0.0)),
            bytes_received=float(received.get(name, 0.0)),
            energy_J=float(e.total) if e is not None else NAN,
            energy_idle_J=float(e.idle) if e is not None else NAN,
            energy_compute_J=float(e.compute) if e is not None else NAN,
            energy_radio_J=float(e.radio) if e is not None else NAN,
            peak_memory_bytes=float(peak.get(name, 0.0)), left_at=float(left.get(name, NAN)),
            availability=1.0 - _ratio(absent.get(name, 0.0), duration) if duration > 0 else NAN)
        records.append(row)
    columns = (["device", "type"] + [f"busy_{u}_s" for u in units]
               + ["utilisation", "flops", "bytes_sent", "bytes_received", "energy_J",
                  "energy_idle_J", "energy_compute_J", "energy_radio_J",
                  "peak_memory_bytes", "left_at", "availability"])
    return pd.DataFrame.from_records(records, columns=columns)


def spent(what, rows, specs):
    seconds = rows["t_end"] - rows["t_start"]
    joules = NAN if specs is None else float(np.dot(seconds.to_numpy(dtype=float), np.asarray(
        [specs[d].units[u].active_power for d, u in zip(rows["device"], rows["resource"])],
        dtype=float)))
    return {f"{what}_flops": float(rows["flops"].sum()), f"{what}_s": float(seconds.sum()),
            f"{what}_J": joules}


def wasted(ev, specs):
    kind = ev["kind"]
    lost = ev.loc[kind == "lost"]
    if specs is not None:
        lost = lost[np.array([r in specs[d].units for d, r in zip(lost["device"],
                                                                  lost["resource"])], dtype=bool)]
    asked = ev.loc[kind.isin(("retry", "failed")), "request"]
    compute = ev.loc[(kind == "compute") & ev["request"].isin(set(asked))]
    if len(compute):
        attempt = compute["label"].str.extract(ATTEMPT, expand=False).fillna("0").astype(int)
        final = ev.loc[kind == "retry", "request"].value_counts()
        used = compute["request"].isin(set(ev.loc[kind == "request", "request"])) & (
            attempt == compute["request"].map(final).fillna(0).astype(int))
        compute = compute[~used.to_numpy()]
    return spent("lost", lost, specs) | spent("redone", compute, specs)


def faults_table(ev):
    ev = clean(ev)
    kind = ev["kind"]
    served = ev.loc[kind == "request"].sort_values("t_end", kind="stable")
    paths = [(float(t), set(PATH.split(p))) for t, p in zip(served["t_end"], served["label"])]
    joins = ev.loc[kind == "join"]
    rows = []
    for device, t, why in ev.loc[kind == "leave", ["device", "t_start", "label"]].itertuples(
            index=False):
        back = joins.loc[(joins["device"] == device) & (joins["t_start"] >= t), "t_start"]
        first = next((end for end, d in paths if end >= t and device not in d), None)
        rows.append((device, float(t), why, float(back.min()) if len(back) else NAN,
                     first - t if first is not None else NAN))
    return pd.DataFrame.from_records(rows, columns=FAULT_COLUMNS).astype(
        {"left_at": "float64", "back_at": "float64", "recovery_s": "float64"})


def summary(ev, devices_df, links_df, duration, specs, **context):
    ev = clean(ev)
    reqs = requests(ev)
    done = reqs[reqs["status"] == "completed"]
    failed = reqs.loc[reqs["status"] == "failed", "cause"]
    work = ev.loc[ev["kind"].isin(WORK_KINDS), "t_end"]
    makespan = float(work.max()) if len(work) else 0.0
    answers = len(done) + int((ev["kind"] == "late").sum())
    row = dict(context)
    row.update(requests_completed=len(done), requests_failed=len(failed),
               duration_s=float(duration), makespan_s=makespan,
               throughput_rps=_ratio(answers, makespan) if len(reqs) else NAN,
               goodput_rps=_ratio(len(done), makespan) if len(reqs) else NAN)
    row.update({f"failed_{c}": int((failed == c).sum()) for c in CAUSES})
    row["retries"] = int(reqs["attempts"].sum() - len(reqs))
    row.update(_latency_percentiles(done["latency"].to_numpy(), ""))
    for cls in sorted(set(reqs["class"]) - {""}):
        row.update(_latency_percentiles(done.loc[done["class"] == cls, "latency"].to_numpy(),
                                        f"_{cls}"))
    used = ((devices_df["flops"] > 0) | (devices_df["bytes_sent"] > 0)
            | (devices_df["bytes_received"] > 0))
    some = len(devices_df) > 0
    row.update(
        network_bytes=float(ev.loc[ev["kind"] == "transfer", "nbytes"].sum()),
        energy_used_J=float(devices_df.loc[used, "energy_J"].sum()) if some else 0.0,
        energy_J=float(devices_df["energy_J"].sum()) if some else 0.0,
        peak_memory_max_MiB=float(devices_df["peak_memory_bytes"].max()) / MIB if some else 0.0,
        memory_wait_s=float(reqs["memory_wait"].sum()), plan_wait_s=float(reqs["plan_wait"].sum()),
        mean_utilisation=float(devices_df["utilisation"].mean()) if some else NAN,
        max_link_utilisation=float(links_df["utilisation"].max()) if len(links_df) else NAN)
    row.update(wasted(ev, specs))
    recovery = faults_table(ev)["recovery_s"]
    row["recovery_s_max"] = float(recovery.max()) if recovery.notna().any() else NAN
    busy = set(devices_df.loc[used, "device"]) if some else set()
    total, reach = 0.0, -np.inf
    for start, end in sorted((s, e) for d, s, e in absences(ev, duration) if d in busy):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    row["degraded_s"] = total
    return pd.DataFrame([row])


def links(link_stats, duration):
    df = pd.DataFrame.from_records(
        [(str(s["resource"]), float(s["bytes"]), float(s["busy_time"])) for s in link_stats],
        columns=["resource", "bytes", "busy_s"])
    df["bytes"] = df["bytes"].astype("float64")
    df["busy_s"] = df["busy_s"].astype("float64")
    df["utilisation"] = [_ratio(b, duration) for b in df["busy_s"]]
    df["utilisation"] = df["utilisation"].astype("float64")
    return df.sort_values("resource", kind="stable").reset_index(drop=True)
