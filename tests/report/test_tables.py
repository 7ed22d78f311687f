"""The run tables from a hand-built log; every expected number is computed by hand below.

The log (times are quarters of a second, so sums are exact in binary):
  phone: units cpu, npu. tv: units cpu, gpu. Duration 1.25 s.
  r0 (interactive) arrives 0.00, phone npu 0.00-0.50, phone>tv 4000 B 0.50-0.75,
     tv gpu 0.75-1.00, done 1.00                    -> latency 1.00 s, start 0.00
  r1 (batch)       arrives 0.25, phone npu 0.50-1.00, done 1.00 -> latency 0.75, start 0.50
  r3 (interactive) arrives 0.25, tv cpu 0.25-0.50, done 0.50    -> latency 0.25, start 0.25
  r2 (batch)       arrives 0.75, phone cpu 1.00-1.25 lost when the phone leaves at 1.25,
     failed at 1.25 (cause device_left: no retries left)
  memory: phone 100, +50 at 0.5, -50 at 1.0 (peak 150); tv 300 (peak 300)
"""
import math

import numpy as np
import pandas as pd
import pytest

from simdl.report.tables import (compare, devices_table, format_table, links_table,
                                 requests_table, summary)
from simdl.sim.recorder import COLUMNS
from stand_ins import Joules, Spec


ROWS = [
    (0.0, 0.0, "alloc", "phone", "memory", "weights", 0.0, 100.0, -1, -1),
    (0.0, 0.0, "alloc", "tv", "memory", "weights", 0.0, 300.0, -1, -1),
    (0.25, 0.5, "compute", "tv", "cpu", "r3", 5e8, 0.0, 3, -1),
    (0.25, 0.5, "request", "tv", "interactive", "tv", 0.0, 0.0, 3, -1),
    (0.0, 0.5, "compute", "phone", "npu", "r0 b0-1", 2e9, 0.0, 0, -1),
    (0.5, 0.5, "alloc", "phone", "memory", "act r1", 0.0, 50.0, 1, -1),
    (0.5, 0.75, "transfer", "phone", "tv", "act r0", 0.0, 4000.0, 0, -1),
    (0.75, 1.0, "compute", "tv", "gpu", "r0 b2", 1e9, 0.0, 0, -1),
    (0.0, 1.0, "request", "phone", "interactive", "phone>tv", 0.0, 0.0, 0, -1),
    (0.5, 1.0, "compute", "phone", "npu", "r1", 2e9, 0.0, 1, -1),
    (1.0, 1.0, "alloc", "phone", "memory", "act r1", 0.0, -50.0, 1, -1),
    (0.25, 1.0, "request", "phone", "batch", "phone", 0.0, 0.0, 1, -1),
    (1.0, 1.25, "lost", "phone", "cpu", "r2", 1e8, 0.0, 2, -1),
    (1.25, 1.25, "leave", "phone", "", "battery empty", 0.0, 0.0, -1, -1),
    (0.75, 1.25, "failed", "phone", "batch", "device_left", 0.0, 0.0, 2, -1),
]
SPECS = {"phone": Spec("phone", ["cpu", "npu"]), "tv": Spec("tv", ["cpu", "gpu"])}
ENERGY = {"phone": Joules(1.0, 2.0, 0.5), "tv": Joules(2.0, 1.0, 0.0)}
LINK_STATS = [{"resource": "wifi", "bytes": 8000, "busy_time": 0.25},
              {"resource": "eth", "bytes": 0, "busy_time": 0.0}]
DURATION = 1.25


@pytest.fixture
def events():
    return pd.DataFrame.from_records(ROWS, columns=list(COLUMNS))


@pytest.fixture
def tables(events):
    devices = devices_table(events, SPECS, ENERGY, DURATION)
    links = links_table(LINK_STATS, DURATION)
    return devices, links


def test_requests_table_has_arrival_start_finish_latency_and_status(events):
    r = requests_table(events)
    assert list(r.columns) == ["request", "class", "status", "cause", "attempts", "arrival",
                               "start", "finish", "latency", "memory_wait", "plan_wait",
                               "path"]
    assert r["request"].tolist() == [0, 1, 2, 3]
    assert r["class"].tolist() == ["interactive", "batch", "batch", "interactive"]
    assert r["status"].tolist() == ["completed", "completed", "failed", "completed"]
    assert r["cause"].tolist() == ["", "", "device_left", ""]
    assert r["attempts"].tolist() == [1, 1, 1, 1] and r["plan_wait"].tolist() == [0.0] * 4
    assert r["arrival"].tolist() == [0.0, 0.25, 0.75, 0.25]
    assert r["path"].tolist() == ["phone>tv", "phone", "", "tv"]  # a failed one has none
    done = r[r["status"] == "completed"]
    assert done["start"].tolist() == [0.0, 0.5, 0.25]
    assert done["finish"].tolist() == [1.0, 1.0, 0.5]
    assert done["latency"].tolist() == [1.0, 0.75, 0.25]


def test_a_failed_request_has_no_start_finish_or_latency(events):
    """r2's only kernel was lost, so it never started a kernel that completed."""
    failed = requests_table(events).set_index("request").loc[2]
    assert math.isnan(failed["start"]) and math.isnan(failed["finish"])
    assert math.isnan(failed["latency"])


def test_devices_table_counts_busy_flops_bytes_memory_and_departure(tables):
    devices, _ = tables
    assert list(devices.columns) == [
        "device", "type", "busy_cpu_s", "busy_gpu_s", "busy_npu_s", "utilisation", "flops",
        "bytes_sent", "bytes_received", "energy_J", "energy_idle_J", "energy_compute_J",
        "energy_radio_J", "peak_memory_bytes", "left_at", "availability"]
    phone, tv = devices.set_index("device").loc["phone"], devices.set_index("device").loc["tv"]
    # phone: npu 0.5 + 0.5 s; cpu 0.25 s of lost work (it held the unit); no gpu.
    assert (phone["busy_cpu_s"], phone["busy_npu_s"]) == (0.25, 1.0)
    assert math.isnan(phone["busy_gpu_s"]) and math.isnan(tv["busy_npu_s"])
    assert (tv["busy_cpu_s"], tv["busy_gpu_s"]) == (0.25, 0.25)
    assert (phone["utilisation"], tv["utilisation"]) == (1.0 / 1.25, 0.25 / 1.25)
    # Lost work is not done work: the phone's 1e8 lost FLOPs are not counted.
    assert (phone["flops"], tv["flops"]) == (4e9, 1.5e9)
    assert (phone["bytes_sent"], phone["bytes_received"]) == (4000.0, 0.0)
    assert (tv["bytes_sent"], tv["bytes_received"]) == (0.0, 4000.0)
    assert (phone["peak_memory_bytes"], tv["peak_memory_bytes"]) == (150.0, 300.0)
    assert phone["left_at"] == 1.25 and math.isnan(tv["left_at"])
    # the phone left at the last instant of the run: it was there all of it
    assert (phone["availability"], tv["availability"]) == (1.0, 1.0)
    assert (phone["energy_J"], phone["energy_idle_J"], phone["energy_compute_J"],
            phone["energy_radio_J"]) == (3.5, 1.0, 2.0, 0.5)
    assert tv["type"] == "tv"


def test_availability_is_the_share_of_the_run_a_device_was_in_the_pool():
    """Duration 2 s: the phone is away 0.25-0.75 and 1.5-2 (1 s): 0.5; the tv leaves at
    1.0 and never returns: 0.5; a second leave while away changes nothing."""
    rows = [(0.25, 0.25, "leave", "phone", "", "test", 0.0, 0.0, -1, -1),
            (0.75, 0.75, "join", "phone", "", "", 0.0, 0.0, -1, -1),
            (1.5, 1.5, "leave", "phone", "", "test", 0.0, 0.0, -1, -1),
            (1.0, 1.0, "leave", "tv", "", "test", 0.0, 0.0, -1, -1),
            (1.25, 1.25, "leave", "tv", "", "battery empty", 0.0, 0.0, -1, -1)]
    devices = devices_table(pd.DataFrame.from_records(rows, columns=list(COLUMNS)), SPECS, {},
                            2.0)
    assert devices.set_index("device")["availability"].to_dict() == {"phone": 0.5, "tv": 0.5}


def test_devices_follow_the_specs_order_and_include_idle_devices(events):
    specs = {"watch": Spec("watch", ["cpu"]), "tv": SPECS["tv"], "phone": SPECS["phone"]}
    devices = devices_table(events, specs, {}, DURATION)
    assert devices["device"].tolist() == ["watch", "tv", "phone"]
    watch = devices.iloc[0]
    assert (watch["busy_cpu_s"], watch["utilisation"], watch["peak_memory_bytes"]) == (0, 0, 0)
    assert devices["energy_J"].isna().all()  # no energy given: unknown, not zero


def test_links_table_is_sorted_with_busy_share(tables):
    _, links = tables
    assert links.to_dict("list") == {"resource": ["eth", "wifi"], "bytes": [0.0, 8000.0],
                                     "busy_s": [0.0, 0.25], "utilisation": [0.0, 0.2]}


def test_summary_headline_numbers(events, tables):
    devices, links = tables
    s = summary(events, devices, links, DURATION, scenario="home", strategy="pipeline", seed=7)
    assert len(s) == 1
    row = s.iloc[0]
    assert list(s.columns[:3]) == ["scenario", "strategy", "seed"]
    assert (row["scenario"], row["strategy"], row["seed"]) == ("home", "pipeline", 7)
    assert (row["requests_completed"], row["requests_failed"]) == (3, 1)
    assert (row["failed_device_left"], row["failed_timeout"], row["failed_no_plan"],
            row["failed_source_left"], row["retries"]) == (1, 0, 0, 0, 0)
    assert row["makespan_s"] == 1.25  # the failure decision is the last thing that ended
    assert row["throughput_rps"] == row["goodput_rps"] == 3 / 1.25  # no late answers
    # r2's kernel lost with the phone: 1e8 FLOPs over 0.25 s (joules need specs); nothing
    # finished was thrown away; no request completed without the phone after it left
    assert (row["lost_flops"], row["lost_s"]) == (1e8, 0.25) and math.isnan(row["lost_J"])
    assert (row["redone_flops"], row["redone_s"]) == (0.0, 0.0)
    assert math.isnan(row["recovery_s_max"]) and row["plan_wait_s"] == 0.0
    assert row["network_bytes"] == 4000.0
    assert row["energy_J"] == 6.5
    assert row["peak_memory_max_MiB"] == 300 / 2**20
    assert row["mean_utilisation"] == (0.8 + 0.2) / 2
    assert row["max_link_utilisation"] == 0.2


def test_latency_percentiles_are_numpys_linear_ones(events, tables):
    """Latencies 1000, 750, 250 ms: p50 = 750, p95 = 750 + 0.9 * 250 = 975, p99 = 995."""
    s = summary(events, *tables, DURATION).iloc[0]
    assert s["latency_p50_ms"] == pytest.approx(750.0)
    assert s["latency_p95_ms"] == pytest.approx(975.0)
    assert s["latency_p99_ms"] == pytest.approx(995.0)
    for q in (50, 95, 99):
        assert s[f"latency_p{q}_ms"] == np.percentile([1000.0, 750.0, 250.0], q, method="linear")


def test_latency_percentiles_per_priority_class(events, tables):
    """interactive: 1000 and 250 ms -> p50 625; batch: only 750 ms done (r2 failed)."""
    s = summary(events, *tables, DURATION).iloc[0]
    assert s["latency_p50_ms_interactive"] == pytest.approx(625.0)
    assert s["latency_p95_ms_interactive"] == pytest.approx(250 + 0.95 * 750)
    assert s["latency_p50_ms_batch"] == s["latency_p99_ms_batch"] == pytest.approx(750.0)


def test_no_class_columns_without_classes(events, tables):
    events = events.assign(resource=events["resource"].where(
        ~events["kind"].isin(["request", "failed"]), ""))
    s = summary(events, *tables, DURATION)
    assert not [c for c in s.columns if c.startswith("latency_") and c.count("_") > 2]


def test_an_empty_log_gives_empty_tables_and_nan_rates():
    empty = pd.DataFrame(columns=list(COLUMNS))
    assert len(requests_table(empty)) == 0
    devices = devices_table(empty, SPECS, ENERGY, 0.0)
    assert devices["utilisation"].isna().all()
    s = summary(empty, devices, links_table([], 0.0), 0.0).iloc[0]
    assert (s["requests_completed"], s["requests_failed"], s["makespan_s"]) == (0, 0, 0.0)
    assert (s["retries"], s["lost_flops"], s["redone_flops"]) == (0, 0.0, 0.0)
    assert math.isnan(s["throughput_rps"]) and math.isnan(s["goodput_rps"])
    assert math.isnan(s["latency_p95_ms"]) and math.isnan(s["recovery_s_max"])


def test_compare_stacks_rows_and_fills_missing_columns_with_nan():
    a = pd.DataFrame([{"strategy": "single", "throughput_rps": 2.0}])
    b = pd.DataFrame([{"strategy": "pipeline", "throughput_rps": 3.0, "latency_p95_ms_hi": 9.0}])
    c = compare([a, b])
    assert list(c.columns) == ["strategy", "throughput_rps", "latency_p95_ms_hi"]
    assert c["strategy"].tolist() == ["single", "pipeline"]
    assert math.isnan(c.loc[0, "latency_p95_ms_hi"]) and c.loc[1, "latency_p95_ms_hi"] == 9.0


def test_format_table_aligns_columns_in_human_units():
    df = pd.DataFrame({"strategy": ["single", "pipeline"], "latency_p95_ms": [975.0, float("nan")],
                       "network_bytes": [4e6, 1.5e5], "mean_utilisation": [0.5, 0.125],
                       "requests_completed": [3, 12]})
    text = format_table(df)
    lines = text.split("\n")
    assert lines[0].split() == ["strategy", "latency_p95_ms", "network_MB",
                                "mean_utilisation_%", "requests_completed"]
    assert lines[2].split() == ["single", "975", "4", "50", "3"]
    assert lines[3].split() == ["pipeline", "-", "0.15", "12.5", "12"]
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].startswith("single  ") and lines[3].endswith("12")
    assert len({len(line) for line in lines}) == 1  # last column is numeric: right-aligned


def test_a_pool_past_127_devices_counts_each_and_leaves_the_idle_ones_at_zero():
    """Device names are coded as categories inside the tables; past 127 of them the codes
    no longer fit in int8, and a device with no rows must still read as zero."""
    specs = {f"pc{i}": Spec("pc", ["cpu"]) for i in range(200)}
    rows = [(0.0, 1.0, "compute", f"pc{i}", "cpu", "k", float(i), 0.0, i, -1)
            for i in range(150)]
    devices = devices_table(pd.DataFrame.from_records(rows, columns=list(COLUMNS)), specs, {}, 1.0)
    assert devices["flops"].tolist() == [float(i) if i < 150 else 0.0 for i in range(200)]
    assert devices["left_at"].isna().all()
