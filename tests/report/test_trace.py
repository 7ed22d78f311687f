"""The Chrome trace from a hand-built log: tracks, names, microseconds, determinism.

Devices sort as phone (pid 1), tv (pid 2); then network (pid 3), requests (pid 4).
phone units sort as cpu (tid 1), npu (tid 2); tv has gpu (tid 1).
Two phone>tv transfers overlap (0.5-0.75 and 0.6-0.9), so the second gets a lane
of its own; the tv>phone one follows phone>tv in sorted order.
"""
import json

import pandas as pd
import pytest

from simdl.report import trace as trace_module
from simdl.report.trace import chrome_trace, trace_text
from simdl.sim.recorder import COLUMNS
from stand_ins import every_kind_log

ROWS = [
    (0.0, 0.0, "alloc", "tv", "memory", "weights", 0.0, 2**20, -1, -1),
    (0.0, 0.5, "compute", "phone", "npu", "r0 b0", 2e9, 1e6, 0, -1),
    (0.5, 0.75, "transfer", "phone", "tv", "act r0", 0.0, 4000.0, 0, -1),
    (0.6, 0.9, "transfer", "phone", "tv", "act r1", 0.0, 4000.0, 1, -1),
    (0.9, 1.0, "transfer", "tv", "phone", "out r0", 0.0, 100.0, 0, -1),
    (0.75, 1.0, "compute", "tv", "gpu", "r0 b1", 1e9, 0.0, 0, 3),
    (0.0, 1.0, "request", "phone", "", "phone>tv", 0.0, 0.0, 0, -1),
    (1.0, 1.0, "alloc", "tv", "memory", "weights", 0.0, -(2**19), -1, -1),
    (1.0, 1.25, "lost", "phone", "cpu", "r1", 1e8, 0.0, 1, -1),
    (1.25, 1.25, "leave", "phone", "", "battery empty", 0.0, 0.0, -1, -1),
]


@pytest.fixture
def trace():
    return chrome_trace(pd.DataFrame.from_records(ROWS, columns=list(COLUMNS)), title="demo")


def by(trace, **match):
    return [e for e in trace["traceEvents"] if all(e.get(k) == v for k, v in match.items())]


def names(trace, what):
    return {(e["pid"], e["tid"]) if what == "thread_name" else e["pid"]: e["args"]["name"]
            for e in by(trace, ph="M", name=what)}


def test_is_a_json_object_trace_with_ms_display(trace):
    assert trace["displayTimeUnit"] == "ms"
    assert trace["otherData"] == {"title": "demo"}
    assert json.loads(json.dumps(trace, allow_nan=False)) == trace


def test_one_process_per_device_then_network_then_requests(trace):
    assert names(trace, "process_name") == {1: "phone", 2: "tv", 3: "network", 4: "requests"}
    assert {e["pid"]: e["args"]["sort_index"] for e in by(trace, name="process_sort_index")} \
        == {1: 1, 2: 2, 3: 3, 4: 4}


def test_one_thread_per_unit_and_per_link_lane(trace):
    assert names(trace, "thread_name") == {
        (1, 1): "cpu", (1, 2): "npu", (2, 1): "gpu",
        (3, 1): "phone>tv", (3, 2): "tv>phone", (3, 3): "phone>tv (2)"}
    order = {e["tid"]: e["args"]["sort_index"]
             for e in by(trace, name="thread_sort_index", pid=3)}
    assert order == {1: 1, 3: 2, 2: 3}  # the extra lane sits right below its pair


def test_complete_events_carry_microseconds_and_args(trace):
    kernel = by(trace, ph="X", name="r0 b0")[0]
    assert (kernel["pid"], kernel["tid"], kernel["ts"], kernel["dur"]) == (1, 2, 0.0, 500000.0)
    assert kernel["args"] == {"flops": 2e9, "bytes": 1e6, "request": 0}
    stepped = by(trace, ph="X", name="r0 b1")[0]
    assert (stepped["pid"], stepped["tid"], stepped["ts"], stepped["dur"]) == (2, 1, 750000.0,
                                                                              250000.0)
    assert stepped["args"]["step"] == 3
    first, second = by(trace, ph="X", name="act r0")[0], by(trace, ph="X", name="act r1")[0]
    assert (first["pid"], first["tid"], first["ts"], first["dur"]) == (3, 1, 500000.0, 250000.0)
    assert (second["tid"], second["ts"], second["dur"]) == (3, 600000.0, 300000.0)
    assert by(trace, ph="X", name="out r0")[0]["tid"] == 2
    assert first["args"] == {"flops": 0.0, "bytes": 4000.0, "request": 0}


def test_leave_and_lost_are_instant_events(trace):
    (left,) = by(trace, ph="i", cat="leave")
    assert (left["pid"], left["s"], left["ts"], left["args"]) == (1, "p", 1250000.0,
                                                                  {"why": "battery empty"})
    (lost,) = by(trace, ph="i", cat="lost")
    assert (lost["pid"], lost["tid"], lost["s"], lost["ts"]) == (1, 1, "t", 1250000.0)
    assert lost["name"] == "lost r1" and lost["args"]["started_us"] == 1000000.0


def test_memory_is_a_counter_of_the_running_sum(trace):
    assert [(e["pid"], e["ts"], e["args"]["MiB"]) for e in by(trace, ph="C")] \
        == [(2, 0.0, 1.0), (2, 1000000.0, 0.5)]


def test_requests_are_async_spans(trace):
    begin, end = by(trace, ph="b")[0], by(trace, ph="e")[0]
    assert (begin["pid"], begin["id"], begin["ts"], end["id"], end["ts"]) == (4, 0, 0.0, 0, 1e6)
    assert begin["args"]["status"] == "completed" and begin["args"]["path"] == "phone>tv"


def test_a_failed_request_is_a_span_to_its_end_with_status_failed():
    row = (0.5, 2.0, "failed", "phone", "", "device_left", 0.0, 0.0, 7, -1)
    t = chrome_trace(pd.DataFrame([row], columns=list(COLUMNS)))
    (begin,), (end,) = by(t, ph="b"), by(t, ph="e")
    assert (begin["id"], begin["ts"], end["ts"]) == (7, 500000.0, 2000000.0)
    assert begin["args"]["status"] == "failed" and begin["args"]["path"] == "device_left"


def test_timestamps_are_rounded_to_nanoseconds():
    row = (0.1 + 0.2, 0.7, "compute", "phone", "cpu", "k", 0.0, 0.0, -1, -1)
    (x,) = by(chrome_trace(pd.DataFrame([row], columns=list(COLUMNS))), ph="X")
    assert (x["ts"], x["dur"]) == (300000.0, 400000.0)


def test_same_events_give_the_same_json_text():
    frame = pd.DataFrame.from_records(ROWS, columns=list(COLUMNS))
    texts = {json.dumps(chrome_trace(frame.copy()), sort_keys=True) for _ in range(2)}
    assert len(texts) == 1


def test_the_text_is_the_objects_canonical_json_even_for_odd_labels():
    """Keys sorted, compact, non-ASCII escaped: what json.dumps writes for the object."""
    events = pd.DataFrame.from_records(every_kind_log(), columns=list(COLUMNS))
    text = trace_text(events, title="démo")
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":")) + "\n"
    assert "\\u00e9" in text and text.isascii()


def test_overlapping_spans_take_lanes_in_order_of_first_use():
    """A brute-force placement: spans in start order, each on its track's first lane
    free at its start; a track's first lane is numbered with its process's tracks in
    sorted order, later lanes as they are first needed."""
    events = pd.DataFrame.from_records(every_kind_log(seed=3), columns=list(COLUMNS))
    trace = chrome_trace(events)
    spans = events[events.kind.isin(["compute", "transfer", "step"])].sort_values(
        ["t_start", "t_end"], kind="stable")
    devices = sorted(set(events[events.kind.isin(trace_module.DEVICE_KINDS)]
                         .device))
    tracks = {}  # process -> [track, ...] in order of numbering
    worked = events[events.kind.isin(["compute", "lost"])]
    for d, u in sorted(set(zip(worked.device, worked.resource))):
        tracks.setdefault(d, []).append((u, 0))
    for d in sorted(set(events[events.kind == "step"].device)):
        tracks.setdefault(d, []).append(("steps", 0))
    sent = events[events.kind == "transfer"]
    tracks["network"] = [((s, t), 0) for s, t in sorted(set(zip(sent.device, sent.resource)))]
    ends, expected = {}, []
    for r in spans.itertuples():
        process = "network" if r.kind == "transfer" else r.device
        track = ((r.device, r.resource) if r.kind == "transfer"
                 else "steps" if r.kind == "step" else r.resource)
        lanes = ends.setdefault((process, track), [])
        lane = next((i for i, end in enumerate(lanes) if end <= r.t_start), len(lanes))
        lanes[lane:lane + 1] = [r.t_end]
        if (track, lane) not in tracks[process]:
            tracks[process].append((track, lane))
        pid = len(devices) + 1 if process == "network" else devices.index(process) + 1
        expected.append((pid, tracks[process].index((track, lane)) + 1))
    got = [(e["pid"], e["tid"]) for e in trace["traceEvents"] if e["ph"] == "X"]
    assert got == expected
    assert max(lane for lanes in ends.values() for lane in range(len(lanes))) >= 1


def test_a_time_that_is_not_a_number_is_refused():
    row = (0.0, float("nan"), "compute", "phone", "cpu", "k", 0.0, 0.0, -1, -1)
    with pytest.raises(ValueError, match="JSON"):
        trace_text(pd.DataFrame([row], columns=list(COLUMNS)))


def test_the_text_made_a_few_events_at_a_time_is_the_same(monkeypatch, tmp_path):
    events = pd.DataFrame.from_records(every_kind_log(seed=5), columns=list(COLUMNS))
    whole = trace_text(events, "t")
    monkeypatch.setattr(trace_module, "PIECE", 7)
    assert trace_text(events, "t") == whole
    assert trace_module.write_trace(events, tmp_path / "t.json", "t").read_text() == whole
