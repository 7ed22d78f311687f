"""The Chrome trace from a hand-built log: tracks, names, microseconds, determinism.

Devices sort as phone (pid 1), tv (pid 2); then network (pid 3), requests (pid 4).
phone units sort as cpu (tid 1), npu (tid 2); tv has gpu (tid 1).
Two phone>tv transfers overlap (0.5-0.75 and 0.6-0.9), so the second gets a lane
of its own; the tv>phone one follows phone>tv in sorted order.
"""
import json

import pandas as pd
import pytest

from simdl.report.trace import chrome_trace
from simdl.sim.recorder import COLUMNS

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
    assert begin["args"]["status"] == "done" and begin["args"]["path"] == "phone>tv"


def test_timestamps_are_rounded_to_nanoseconds():
    row = (0.1 + 0.2, 0.7, "compute", "phone", "cpu", "k", 0.0, 0.0, -1, -1)
    (x,) = by(chrome_trace(pd.DataFrame([row], columns=list(COLUMNS))), ph="X")
    assert (x["ts"], x["dur"]) == (300000.0, 400000.0)


def test_same_events_give_the_same_json_text():
    frame = pd.DataFrame.from_records(ROWS, columns=list(COLUMNS))
    texts = {json.dumps(chrome_trace(frame.copy()), sort_keys=True) for _ in range(2)}
    assert len(texts) == 1
