"""The event log as a Chrome trace-event JSON object (opens in ui.perfetto.dev, chrome://tracing).

Owns the mapping of log rows to tracks: a process per device with a thread per
compute unit, a "network" process with a thread per src>dst pair, a "requests"
process of async spans. Knows the log's columns and kinds, nothing of the engine.

The JSON text is written column by column, not through one dict per event: each
distinct number or name is formatted once, and every event is one string made
from a fixed template whose keys are in sorted order. The text is exactly what
`json.dumps(trace, sort_keys=True, separators=(",", ":"))` gives for the object.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Hashable, Iterator
from json.encoder import (
    encode_basestring_ascii as _string,  # what json.dumps quotes with
)
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from simdl.report.store import atomic_write
from simdl.report.columns import clean

#: Kinds drawn on a device's own process.
DEVICE_KINDS = ("compute", "lost", "leave", "join", "speed", "alloc", "step")
#: Kinds drawn as complete ("X") events on a thread of their own track.
SPAN_KINDS = ("compute", "transfer", "step")
#: Kinds the trace shows (apply and memwait rows are in the tables only).
DRAWN_KINDS = SPAN_KINDS + ("lost", "leave", "join", "speed", "link", "alloc", "request",
                            "failed")


def _us(seconds: float) -> float:
    """Seconds -> microseconds, rounded to 3 decimals (ns) so the JSON text is stable."""
    return round(float(seconds) * 1e6, 3)


def _each(values: np.ndarray, text: Callable[[Any], str]) -> np.ndarray:
    """`text(v)` for every value, computed once per distinct value (bit for bit, so
    -0.0 and 0.0 stay apart); an object array in the order of `values`."""
    values = np.asarray(values)
    keys = values.view("int64") if values.dtype == np.float64 else values
    codes, distinct = pd.factorize(keys)
    if values.dtype == np.float64:
        distinct = np.asarray(distinct).view("float64")
    return np.array([text(v) for v in np.asarray(distinct).tolist()] + [""], dtype=object)[codes]


def _number(value: float) -> str:
    """A float as json.dumps writes it; NaN and infinity are not JSON."""
    if not math.isfinite(value):
        raise ValueError(f"Out of range float values are not JSON compliant: {value!r}")
    return repr(value)


class _Lanes:
    """Threads of one process. A span that overlaps the last one on its track goes to a
    new lane ("phone>tv (2)"), because complete events on one thread must nest. Tracks
    get their first lane's tid in order of adding; later lanes in order of first use."""

    def __init__(self) -> None:
        self.tracks: dict[Hashable, str] = {}  # track -> its name, in order of adding
        self.extra: list[tuple[int, Hashable, int]] = []  # (first row, track, lane >= 1)

    def add(self, track: Hashable, name: str) -> None:
        self.tracks.setdefault(track, name)

    def place(self, track: Hashable, rows: np.ndarray, start: np.ndarray,
              end: np.ndarray) -> np.ndarray:
        """The lane of each span of `track` (in start order, `rows` their positions in
        the trace): the first lane free at its start, held to its end."""
        if (start[1:] >= end[:-1]).all():  # each span starts after the one before: lane 0
            return np.zeros(len(start), dtype=np.int64)
        ends: list[float] = []
        lanes = []
        for row, s, e in zip(rows.tolist(), start.tolist(), end.tolist()):
            for i, busy_until in enumerate(ends):
                if busy_until <= s:
                    ends[i] = e
                    break
            else:
                i = len(ends)
                ends.append(e)
                if i:
                    self.extra.append((row, track, i))
            lanes.append(i)
        return np.array(lanes, dtype=np.int64)

    def tids(self) -> tuple[dict[tuple[Hashable, int], int], dict[int, str], dict[int, int]]:
        """(track, lane) -> tid, tid -> thread name, tid -> display position (a track's
        extra lanes sit right below it)."""
        order = {track: n for n, track in enumerate(self.tracks)}
        lanes = [(track, 0) for track in self.tracks]
        lanes += [(track, lane) for _, track, lane in sorted(self.extra, key=lambda x: x[0])]
        tid = {key: n + 1 for n, key in enumerate(lanes)}
        names = {tid[(t, i)]: self.tracks[t] + (f" ({i + 1})" if i else "") for t, i in lanes}
        ranked = sorted(lanes, key=lambda key: (order[key[0]], key[1]))
        return tid, names, {tid[key]: n + 1 for n, key in enumerate(ranked)}


def _meta(name: str, pid: int, tid: int, args: dict[str, Any]) -> str:
    return json.dumps({"name": name, "ph": "M", "pid": pid, "tid": tid, "args": args},
                      sort_keys=True, separators=(",", ":"))


def _thread_meta(pid: int, lanes: _Lanes) -> list[str]:
    _, names, position = lanes.tids()
    out = []
    for tid, name in sorted(names.items()):
        out.append(_meta("thread_name", pid, tid, {"name": name}))
        out.append(_meta("thread_sort_index", pid, tid, {"sort_index": position[tid]}))
    return out


def trace_text(events: pd.DataFrame, title: str = "") -> str:
    """The trace-event JSON text: {"traceEvents": [...], "displayTimeUnit": "ms"}.

    Complete events ("X", ts/dur in µs) for kernels, transfers and training steps
    (a "training steps" track per device), instant events
    ("i") for a device leaving or joining, a unit's speed or a link's bandwidth or
    loss changing, and each lost kernel, a memory counter ("C") per
    device from alloc rows, async spans ("b"/"e") per request, and metadata ("M")
    naming every track. pids follow sorted device names, then "network", then
    "requests"; tids follow sorted unit names and sorted src>dst pairs. Events
    follow start time (then end time, then log order). The same events give the
    same text, byte for byte: compact, keys sorted, non-ASCII escaped.
    """
    return "".join(trace_pieces(events, title))


#: Events per piece of text `trace_pieces` makes at a time.
PIECE = 32768


def trace_pieces(events: pd.DataFrame, title: str = "") -> Iterator[str]:
    """`trace_text` in pieces of PIECE events, so the whole text is never held at once."""
    events = clean(events)
    # Lanes are placed in start order, so overlap is judged as a viewer sees it.
    rows = _Rows(events, np.lexsort((events["t_end"].to_numpy(), events["t_start"].to_numpy())))
    devices = sorted(set(rows.device_names[rows.device[rows.of(*DEVICE_KINDS)]].tolist()))
    pid = {d: i + 1 for i, d in enumerate(devices)}
    network_pid, requests_pid = len(devices) + 1, len(devices) + 2
    device_pid = np.array([str(pid.get(d, 0)) for d in rows.device_names], dtype=object)

    units: dict[str, _Lanes] = {d: _Lanes() for d in devices}
    for d, u in rows.pairs("compute", "lost"):
        units[d].add(u, u)
    for d, _ in rows.pairs("step"):
        units[d].add("steps", "training steps")
    links = _Lanes()
    for pair in rows.pairs("transfer"):
        links.add(pair, f"{pair[0]}>{pair[1]}")
    lanes_of: dict[str | None, _Lanes] = {None: links, **units}  # None: the network

    # Each span's lane on its track, hence its thread (tid), before any text.
    spans = np.flatnonzero(rows.of(*SPAN_KINDS))
    link, stepped = rows.of("transfer"), rows.of("step")
    on, to = rows.device[spans], rows.resource[spans]
    # A track is (network or not, device, unit); the steps track is unit "steps".
    width = len(rows.resource_names) + 1  # one more: "steps" when no row's resource is
    unit = np.where(stepped[spans], rows.resource_code("steps"), to)
    group, members = _groups((link[spans] * len(rows.device_names) + on) * width + unit)
    lane = np.zeros(len(spans), dtype=np.int64)
    keys = []
    for at in members:
        i = at[0]
        d, r = rows.device_names[on[i]], rows.resource_names[to[i]]
        process, key = (None, (d, r)) if link[spans[i]] else (d, "steps" if stepped[spans[i]]
                                                              else r)
        keys.append((process, key))
        lane[at] = lanes_of[process].place(key, spans[at], rows.start[spans[at]],
                                           rows.end[spans[at]])
    numbers = {process: lanes.tids()[0] for process, lanes in lanes_of.items()}
    tid = np.zeros(len(rows.kind), dtype=np.int64)
    tid[spans] = np.array([numbers[p][(k, 0)] for p, k in keys], dtype=np.int64)[group]
    for i in np.flatnonzero(lane):
        p, k = keys[group[i]]
        tid[spans[i]] = numbers[p][(k, int(lane[i]))]
    sync = np.array([',"sync":' + _string(r) for r in rows.resource_names], dtype=object)

    # Memory counters: the running sum per device, added one by one in trace order.
    held = rows.of("alloc")
    running = np.zeros(len(rows.kind))
    for d in np.unique(rows.device[held]):
        mine = held & (rows.device == d)
        running[mine] = np.cumsum(rows.nbytes[mine])

    def complete(at: np.ndarray) -> list[str]:
        return [f'{{"args":{{"bytes":{b},"flops":{f}{r}{s}{x}}},"cat":"{k}","dur":{d},'
                f'"name":{n},"ph":"X","pid":{p},"tid":{t},"ts":{ts}}}'
                for b, f, r, s, x, k, d, n, p, t, ts in zip(
                    rows.text("nbytes", at), rows.text("flops", at), rows.text("request", at),
                    rows.text("step", at),
                    np.where(stepped[at], sync[rows.resource[at]], "").tolist(),
                    rows.kind_names[rows.kind[at]].tolist(),
                    _each(rows.end[at] - rows.start[at], _microseconds).tolist(),
                    rows.names(at),
                    np.where(link[at], str(network_pid), device_pid[rows.device[at]]).tolist(),
                    _each(tid[at], str).tolist(), rows.text("t_start", at))]

    def lost(at: np.ndarray) -> list[str]:
        return [f'{{"args":{{"bytes":{b},"flops":{f}{r},"started_us":{ts}{s}}},"cat":"lost",'
                f'"name":{_string(f"lost {n}".rstrip())},"ph":"i","pid":{pid[d]},"s":"t",'
                f'"tid":{numbers[d][(u, 0)]},"ts":{te}}}'
                for b, f, r, ts, s, n, d, u, te in zip(
                    rows.text("nbytes", at), rows.text("flops", at), rows.text("request", at),
                    rows.text("t_start", at), rows.text("step", at), rows.label[at].tolist(),
                    rows.device_names[rows.device[at]].tolist(),
                    rows.resource_names[rows.resource[at]].tolist(), rows.text("t_end", at))]

    def presence(at: np.ndarray) -> list[str]:
        return [f'{{"args":{{"why":{_string(n)}}},"cat":"{k}",'
                f'"name":{_string(d + (" left" if k == "leave" else " joined"))},"ph":"i",'
                f'"pid":{pid[d]},"s":"p","tid":0,"ts":{t}}}'
                for n, k, d, t in zip(rows.label[at].tolist(),
                                      rows.kind_names[rows.kind[at]].tolist(),
                                      rows.device_names[rows.device[at]].tolist(),
                                      rows.text("t_start", at))]

    def change(at: np.ndarray) -> list[str]:
        """A unit's speed (on its device) or a link's bandwidth or loss (on the network,
        for the whole trace) set from then on."""
        return [f'{{"args":{{"set":{_string(n)}}},"cat":"{k}",'
                f'"name":{_string(f"{r} {n}" if k == "speed" else f"link {r}: {n}")},"ph":"i",'
                f'"pid":{pid[d] if k == "speed" else network_pid},'
                f'"s":"{"p" if k == "speed" else "g"}","tid":0,"ts":{t}}}'
                for n, k, d, r, t in zip(rows.label[at].tolist(),
                                         rows.kind_names[rows.kind[at]].tolist(),
                                         rows.device_names[rows.device[at]].tolist(),
                                         rows.resource_names[rows.resource[at]].tolist(),
                                         rows.text("t_start", at))]

    def memory(at: np.ndarray) -> list[str]:
        mib = _each(running[at], lambda v: _number(round(v / 2**20, 6)))
        return [f'{{"args":{{"MiB":{m}}},"cat":"memory","name":"memory","ph":"C",'
                f'"pid":{p},"tid":0,"ts":{t}}}'
                for m, p, t in zip(mib.tolist(), device_pid[rows.device[at]].tolist(),
                                   rows.text("t_start", at))]

    def request(at: np.ndarray) -> list[str]:
        return [f'{{"args":{{"class":{_string(c)},"device":{_string(d)},"path":{_string(n)},'
                f'"status":"{"completed" if k == "request" else "failed"}"}},"cat":"request",'
                f'"id":{r},"name":"request {r}","ph":"b","pid":{requests_pid},"tid":0,'
                f'"ts":{t}}},{{"cat":"request","id":{r},"name":"request {r}","ph":"e",'
                f'"pid":{requests_pid},"tid":0,"ts":{e}}}'
                for c, d, n, k, r, t, e in zip(
                    rows.resource_names[rows.resource[at]].tolist(),
                    rows.device_names[rows.device[at]].tolist(), rows.label[at].tolist(),
                    rows.kind_names[rows.kind[at]].tolist(), rows.request[at].tolist(),
                    rows.text("t_start", at), rows.text("t_end", at))]

    served = rows.of("request", "failed")
    meta: list[str] = []
    for d in devices:
        meta.append(_meta("process_name", pid[d], 0, {"name": d}))
        meta.append(_meta("process_sort_index", pid[d], 0, {"sort_index": pid[d]}))
        meta += _thread_meta(pid[d], units[d])
    if links.tracks:
        meta.append(_meta("process_name", network_pid, 0, {"name": "network"}))
        meta.append(_meta("process_sort_index", network_pid, 0, {"sort_index": network_pid}))
        meta += _thread_meta(network_pid, links)
    if served.any():
        meta.append(_meta("process_name", requests_pid, 0, {"name": "requests"}))
        meta.append(_meta("process_sort_index", requests_pid, 0, {"sort_index": requests_pid}))

    other = f',"otherData":{{"title":{_string(title)}}}' if title else ""
    yield f'{{"displayTimeUnit":"ms"{other},"traceEvents":[' + ",".join(meta)
    made = bool(meta)
    drawn = np.flatnonzero(rows.of(*DRAWN_KINDS))
    kinds = [(rows.of(*SPAN_KINDS), complete), (rows.of("lost"), lost),
             (rows.of("leave", "join"), presence), (rows.of("speed", "link"), change),
             (held, memory), (served, request)]
    for first in range(0, len(drawn), PIECE):
        at = drawn[first:first + PIECE]
        body = np.empty(len(at), dtype=object)
        for mine, text in kinds:
            chosen = np.flatnonzero(mine[at])
            if len(chosen):
                body[chosen] = text(at[chosen])
        yield ("," if made else "") + ",".join(body.tolist())
        made = True
    yield "]}\n"


def _microseconds(seconds: float) -> str:
    return _number(_us(seconds))


def _groups(keys: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Each key's group (numbered in order of first appearance) and each group's
    positions, in order."""
    group, _ = pd.factorize(keys)
    by = np.argsort(group, kind="stable")
    return group, np.split(by, np.flatnonzero(np.diff(group[by])) + 1) if len(by) else []


class _Rows:
    """The log in trace order: kinds, devices and resources as codes into their names,
    the other columns as arrays; the JSON text of a column made once per distinct value."""

    def __init__(self, events: pd.DataFrame, order: np.ndarray) -> None:
        def coded(column: str) -> tuple[np.ndarray, np.ndarray]:
            codes, names = pd.factorize(events[column])
            return codes[order], np.array(list(names), dtype=object)

        self.kind, self.kind_names = coded("kind")
        self.device, self.device_names = coded("device")
        self.resource, self.resource_names = coded("resource")
        self.label = events["label"].to_numpy(dtype=object)[order]
        self.start = events["t_start"].to_numpy()[order]
        self.end = events["t_end"].to_numpy()[order]
        self.nbytes = events["nbytes"].to_numpy()[order]
        self.flops = events["flops"].to_numpy()[order]
        self.request = events["request"].to_numpy()[order]
        self.step = events["step"].to_numpy()[order]
        self._text: dict[str, np.ndarray] = {}

    def of(self, *kinds: str) -> np.ndarray:
        """Which rows are of these kinds."""
        return np.isin(self.kind, [i for i, k in enumerate(self.kind_names) if k in kinds])

    def resource_code(self, name: str) -> int:
        """The code of resource `name`, or one past the last when no row has it."""
        found = np.flatnonzero(self.resource_names == name)
        return int(found[0]) if len(found) else len(self.resource_names)

    def pairs(self, *kinds: str) -> list[tuple[str, str]]:
        """Sorted distinct (device, resource) of the rows of these kinds."""
        mine = self.of(*kinds)
        width = len(self.resource_names)
        codes = np.unique(self.device[mine] * width + self.resource[mine]).tolist()
        return sorted((self.device_names[c // width], self.resource_names[c % width])
                      for c in codes)

    def names(self, at: np.ndarray) -> list[str]:
        """A span's name as JSON: its label, or its kind when it has none."""
        label = self.label[at]
        return _each(np.where(label == "", self.kind_names[self.kind[at]], label),
                     _string).tolist()

    def text(self, column: str, at: np.ndarray) -> list[str]:
        """The JSON text of `column` at rows `at`: times in µs, sizes as floats, request
        and step as `,"key":n` fragments ("" when not set)."""
        if column not in self._text:
            if column in ("t_start", "t_end"):
                made = _each(self.start if column == "t_start" else self.end, _microseconds)
            elif column in ("nbytes", "flops"):
                made = _each(getattr(self, column), lambda v: _number(float(v)))
            else:
                made = _each(getattr(self, column), lambda v: f',"{column}":{v}' if v >= 0 else "")
            self._text[column] = made
        return self._text[column][at].tolist()


def chrome_trace(events: pd.DataFrame, title: str = "") -> dict[str, Any]:
    """The trace as a JSON object (`trace_text` parsed), for notebooks and tests."""
    return json.loads(trace_text(events, title))


def write_trace(events: pd.DataFrame, path: str | os.PathLike[str], title: str = "") -> Path:
    """Write `trace_text` to `path` atomically (the bytes `store.write_json` would write
    for `chrome_trace`), a piece at a time."""
    return atomic_write(path, trace_pieces(events, title))
