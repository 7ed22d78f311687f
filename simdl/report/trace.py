"""The event log as a Chrome trace-event JSON object (opens in ui.perfetto.dev, chrome://tracing).

Owns the mapping of log rows to tracks: a process per device with a thread per
compute unit, a "network" process with a thread per src>dst pair, a "requests"
process of async spans. Knows the log's columns and kinds, nothing of the engine.
"""
from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import pandas as pd

from simdl.report.tables import clean

#: Kinds drawn on a device's own process.
DEVICE_KINDS = ("compute", "lost", "leave", "alloc", "step")


def _us(seconds: float) -> float:
    """Seconds -> microseconds, rounded to 3 decimals (ns) so the JSON text is stable."""
    return round(float(seconds) * 1e6, 3)


class _Lanes:
    """Threads of one process. A span that overlaps the last one on its track goes to a
    new lane ("phone>tv (2)"), because complete events on one thread must nest."""

    def __init__(self) -> None:
        self.tid: dict[tuple[Hashable, int], int] = {}
        self.names: dict[int, str] = {}
        self._ends: dict[Hashable, list[float]] = {}
        self._base: dict[Hashable, str] = {}
        self._rank: dict[int, tuple[int, int]] = {}  # tid -> (track's order, lane)

    def add(self, track: Hashable, name: str) -> None:
        """Give `track` its first lane (tids in order of adding)."""
        if track not in self._ends:
            self._ends[track], self._base[track] = [], name
            self._lane(track, 0)

    def _lane(self, track: Hashable, i: int) -> int:
        key = (track, i)
        if key not in self.tid:
            tid = len(self.tid) + 1
            self.tid[key] = tid
            self.names[tid] = self._base[track] + (f" ({i + 1})" if i else "")
            self._rank[tid] = (list(self._ends).index(track), i)
        return self.tid[key]

    def sort_index(self) -> dict[int, int]:
        """tid -> display position: a track's extra lanes sit right below it."""
        return {tid: n + 1 for n, tid in enumerate(sorted(self._rank, key=self._rank.get))}

    def place(self, track: Hashable, start: float, end: float) -> int:
        """The tid of the first lane of `track` free at `start`; the lane is held to `end`."""
        ends = self._ends[track]
        for i, busy_until in enumerate(ends):
            if busy_until <= start:
                ends[i] = end
                return self._lane(track, i)
        ends.append(end)
        return self._lane(track, len(ends) - 1)

    def first(self, track: Hashable) -> int:
        return self.tid[(track, 0)]


def _args(row: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"flops": float(row.flops), "bytes": float(row.nbytes)}
    if row.request >= 0:
        args["request"] = int(row.request)
    if row.step >= 0:
        args["step"] = int(row.step)
    return args


def _meta(name: str, pid: int, tid: int, args: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "ph": "M", "pid": pid, "tid": tid, "args": args}


def _thread_meta(pid: int, lanes: _Lanes) -> list[dict[str, Any]]:
    position = lanes.sort_index()
    out = []
    for tid, name in sorted(lanes.names.items()):
        out.append(_meta("thread_name", pid, tid, {"name": name}))
        out.append(_meta("thread_sort_index", pid, tid, {"sort_index": position[tid]}))
    return out


def chrome_trace(events: pd.DataFrame, title: str = "") -> dict[str, Any]:
    """The trace-event JSON object: {"traceEvents": [...], "displayTimeUnit": "ms"}.

    Complete events ("X", ts/dur in µs) for kernels, transfers and training steps
    (a "training steps" track per device), instant events
    ("i") for a device leaving and each lost kernel, a memory counter ("C") per
    device from alloc rows, async spans ("b"/"e") per request, and metadata ("M")
    naming every track. pids follow sorted device names, then "network", then
    "requests"; tids follow sorted unit names and sorted src>dst pairs. The same
    events give the same object, key for key.
    """
    events = clean(events)
    on_device = events[events["kind"].isin(DEVICE_KINDS)]
    devices = sorted(set(on_device["device"]))
    pid = {d: i + 1 for i, d in enumerate(devices)}
    network_pid, requests_pid = len(devices) + 1, len(devices) + 2

    units: dict[str, _Lanes] = {d: _Lanes() for d in devices}
    worked = events[events["kind"].isin(("compute", "lost"))]
    for device, unit in sorted(set(zip(worked["device"], worked["resource"]))):
        units[device].add(unit, unit)
    for device in sorted(set(events.loc[events["kind"] == "step", "device"])):
        units[device].add("steps", "training steps")
    transfers = events[events["kind"] == "transfer"]
    links = _Lanes()
    for pair in sorted(set(zip(transfers["device"], transfers["resource"]))):
        links.add(pair, f"{pair[0]}>{pair[1]}")

    body: list[dict[str, Any]] = []
    memory = dict.fromkeys(devices, 0.0)
    # Lanes are placed in start order, so overlap is judged as a viewer sees it.
    order = events.sort_values(["t_start", "t_end"], kind="stable")
    for row in order.itertuples(index=False):
        kind = row.kind
        ts, dur = _us(row.t_start), _us(row.t_end - row.t_start)
        if kind == "compute":
            tid = units[row.device].place(row.resource, row.t_start, row.t_end)
            body.append({"name": row.label or "compute", "cat": "compute", "ph": "X",
                         "pid": pid[row.device], "tid": tid, "ts": ts, "dur": dur,
                         "args": _args(row)})
        elif kind == "transfer":
            pair = (row.device, row.resource)
            tid = links.place(pair, row.t_start, row.t_end)
            body.append({"name": row.label or "transfer", "cat": "transfer", "ph": "X",
                         "pid": network_pid, "tid": tid, "ts": ts, "dur": dur,
                         "args": _args(row)})
        elif kind == "step":
            tid = units[row.device].place("steps", row.t_start, row.t_end)
            body.append({"name": row.label or "step", "cat": "step", "ph": "X",
                         "pid": pid[row.device], "tid": tid, "ts": ts, "dur": dur,
                         "args": _args(row) | {"sync": row.resource}})
        elif kind == "lost":
            args = _args(row) | {"started_us": ts}
            body.append({"name": f"lost {row.label}".rstrip(), "cat": "lost", "ph": "i",
                         "s": "t", "pid": pid[row.device],
                         "tid": units[row.device].first(row.resource),
                         "ts": _us(row.t_end), "args": args})
        elif kind == "leave":
            body.append({"name": f"{row.device} left", "cat": "leave", "ph": "i", "s": "p",
                         "pid": pid[row.device], "tid": 0, "ts": ts,
                         "args": {"why": row.label}})
        elif kind == "alloc":
            memory[row.device] += float(row.nbytes)
            body.append({"name": "memory", "cat": "memory", "ph": "C",
                         "pid": pid[row.device], "tid": 0, "ts": ts,
                         "args": {"MiB": round(memory[row.device] / 2**20, 6)}})
        elif kind in ("request", "dropped"):
            status = "done" if kind == "request" else "dropped"
            common = {"name": f"request {int(row.request)}", "cat": "request",
                      "id": int(row.request), "pid": requests_pid, "tid": 0}
            body.append(common | {"ph": "b", "ts": ts,
                                  "args": {"class": row.resource, "path": row.label,
                                           "status": status, "device": row.device}})
            body.append(common | {"ph": "e", "ts": _us(row.t_end)})

    meta: list[dict[str, Any]] = []
    for d in devices:
        meta.append(_meta("process_name", pid[d], 0, {"name": d}))
        meta.append(_meta("process_sort_index", pid[d], 0, {"sort_index": pid[d]}))
        meta += _thread_meta(pid[d], units[d])
    if links.names:
        meta.append(_meta("process_name", network_pid, 0, {"name": "network"}))
        meta.append(_meta("process_sort_index", network_pid, 0, {"sort_index": network_pid}))
        meta += _thread_meta(network_pid, links)
    if any(e["pid"] == requests_pid for e in body):
        meta.append(_meta("process_name", requests_pid, 0, {"name": "requests"}))
        meta.append(_meta("process_sort_index", requests_pid, 0, {"sort_index": requests_pid}))

    trace: dict[str, Any] = {"traceEvents": meta + body, "displayTimeUnit": "ms"}
    if title:
        trace["otherData"] = {"title": title}
    return trace
