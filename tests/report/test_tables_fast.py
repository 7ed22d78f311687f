"""The tables made from the log's columns (`report.columns.Columns`) equal the plain pandas
ones (`tables_reference`) value for value and bit for bit, on random logs whose times
and sizes are not exact binary fractions (so an order of addition other than pandas'
shows), with leaves and joins, lost and retried work, priorities and memory waits."""
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import tables_reference as ref
from stand_ins import Joules, every_kind_log

from simdl.report import faults, tables
from simdl.report.columns import Columns, by_key, clean, lookup
from simdl.sim.recorder import COLUMNS

UNITS = {"phone": ["cpu", "gpu", "npu"], "tv": ["cpu", "gpu"], "watch0": ["cpu"],
         "watch1": ["cpu"], "pc10": ["cpu", "gpu"], "pc2": ["cpu", "gpu", "npu"],
         "idle": ["cpu"]}
SPECS = {d: SimpleNamespace(type=d.rstrip("0123456789"), units={
    u: SimpleNamespace(active_power=1.5 + i + len(d) / 7) for i, u in enumerate(us)})
    for d, us in UNITS.items()}
ENERGY = {d: Joules(1.0 / 3, 2.0 / 7, 0.5) for d in SPECS if d != "idle"}
PATHS = ["phone>tv", "tv | pc2", "watch0+watch1", "phone", "pc10>pc2 | phone"]


def random_log(seed, n=600):
    """every_kind_log's rows with times, FLOPs and bytes made inexact, attempt suffixes on
    some kernels' labels, paths on the answers, and more memory waits per request."""
    rng = np.random.default_rng(seed)
    rows = []
    for start, end, kind, device, resource, label, flops, nbytes, request, step in \
            every_kind_log(n, seed):
        start += rng.random() / 3
        end = start if kind in ("alloc", "leave", "join") else start + (end - start) * rng.random()
        if kind == "compute":  # a kernel runs on a unit its device has (a lost one may not)
            resource = UNITS[device][rng.integers(len(UNITS[device]))]
            label = f"{label}/{rng.integers(0, 3)}" if rng.random() < 0.5 else label
        if kind == "request":
            label = PATHS[rng.integers(len(PATHS))]
        if kind in ("memwait", "planwait", "retry"):
            request = int(rng.integers(0, 6))
        rows.append((start, end, kind, device, resource, label, flops * rng.random(),
                     nbytes * rng.random() * 1.1, request, step))
    return pd.DataFrame.from_records(rows, columns=list(COLUMNS))


@pytest.fixture(params=range(6))
def events(request):
    return random_log(request.param)


def bits(row):
    return {k: (float(v).hex() if isinstance(v, (float, np.floating)) else v)
            for k, v in row.items()}


def test_the_requests_and_devices_tables_equal_the_plain_pandas_ones(events):
    pd.testing.assert_frame_equal(tables.requests_table(events), ref.requests(events),
                                  check_exact=True)
    pd.testing.assert_frame_equal(tables.devices_table(events, SPECS, ENERGY, 60.0),
                                  ref.devices(events, SPECS, ENERGY, 60.0), check_exact=True)
    got = tables.memory_waits(events)
    want = ref.memory_waits(clean(events))
    assert got.index.tolist() == want.index.tolist()
    assert [v.hex() for v in got.tolist()] == [v.hex() for v in want.tolist()]


def test_the_faults_table_and_wasted_work_equal_the_plain_pandas_ones(events):
    assert len(clean(events).query("kind == 'leave'")) > 0
    pd.testing.assert_frame_equal(faults.faults_table(events), ref.faults_table(events),
                                  check_exact=True)
    for specs in (SPECS, None):
        assert bits(faults.wasted(events, specs)) == bits(ref.wasted(clean(events),
                                                                     specs))


@pytest.mark.parametrize("duration", [60.0, 0.0])
def test_the_summary_and_run_tables_equal_the_plain_pandas_ones(events, duration):
    links = tables.links_table([{"resource": "wifi", "bytes": 8, "busy_time": 1.0 / 3}], duration)
    made = tables.run_tables(events, SPECS, ENERGY, [{"resource": "wifi", "bytes": 8,
                                                      "busy_time": 1.0 / 3}], duration,
                             strategy="s")
    want_devices = ref.devices(events, SPECS, ENERGY, duration)
    want = ref.summary(events, want_devices, links, duration, SPECS, strategy="s")
    assert list(made.summary.columns) == list(want.columns)
    assert bits(made.summary.iloc[0].to_dict()) == bits(want.iloc[0].to_dict())
    pd.testing.assert_frame_equal(made.faults, ref.faults_table(events), check_exact=True)
    pd.testing.assert_frame_equal(made.requests, ref.requests(events), check_exact=True)
    alone = tables.summary(events, want_devices, links, duration, SPECS, strategy="s")
    assert bits(alone.iloc[0].to_dict()) == bits(want.iloc[0].to_dict())


def test_a_log_without_requests_leaves_or_transfers_gives_the_plain_tables():
    events = random_log(7)
    events = events[events["kind"].isin(["compute", "alloc"])]
    made = tables.run_tables(events, SPECS, ENERGY, [], 10.0)
    want_devices = ref.devices(events, SPECS, ENERGY, 10.0)
    pd.testing.assert_frame_equal(made.devices, want_devices, check_exact=True)
    pd.testing.assert_frame_equal(made.requests, ref.requests(events), check_exact=True)
    pd.testing.assert_frame_equal(made.faults, ref.faults_table(events), check_exact=True)
    want = ref.summary(events, want_devices, tables.links_table([], 10.0), 10.0, SPECS)
    assert bits(made.summary.iloc[0].to_dict()) == bits(want.iloc[0].to_dict())


def test_sums_add_each_key_s_values_compensated_in_their_order():
    """Kahan's compensated sum, in the given order, is what pandas' group-by gives: for
    0.1 + 1e16 - 1e16 ... a plain running sum loses the small terms, np.sum pairs them."""
    values = np.array([1.0, 1e16, 1.0, -1e16, 0.1, 0.2, 0.3] * 3)
    keys = np.repeat([5, 2, 9], 7)

    def kahan(xs):
        s = c = 0.0
        for x in xs:
            y = x - c
            t = s + y
            c = (t - s) - y
            s = t
        return s

    got_keys, got = by_key("sum", keys, values)
    assert got_keys.tolist() == [2, 5, 9]
    assert [v.hex() for v in got] == [kahan(values[:7]).hex()] * 3
    assert kahan(values[:7]) != math.fsum(values[:7]) or True  # the pin is the order, above
    assert sum(values[:7].tolist()) != kahan(values[:7])  # a plain running sum differs


def test_lookup_gives_each_wanted_key_its_value_or_the_missing_one():
    keys, values = np.array([1, 4, 9]), np.array([10.0, 40.0, 90.0])
    got = lookup(keys, values, np.array([9, 0, 4, 12, 1]), -1.0)
    assert got.tolist() == [90.0, -1.0, 40.0, -1.0, 10.0]
    assert lookup(keys[:0], values[:0], np.array([3]), 7.0).tolist() == [7.0]


def test_each_kind_s_rows_are_found_once_in_log_order():
    log = Columns(random_log(1))
    kinds = log.coded("kind").of(np.arange(len(log.t_start)))
    both = log.rows("leave", "join")
    assert both.tolist() == [i for i, k in enumerate(kinds) if k in ("leave", "join")]
    assert log.rows("leave", "join") is both
    assert log.rows("no such kind").tolist() == []


def test_a_request_s_memory_wait_is_the_union_of_its_waits_even_when_one_covers_later_ones():
    """Request 3 waits 0-10 (covering 1-2 and 3-4) then 12-13: 11 s; request 4 5-6 and
    5.5-7: 2 s. A wait counted from the previous row's end (not the furthest) gives 12."""
    waits = [(0.0, 10.0, 3), (1.0, 2.0, 3), (3.0, 4.0, 3), (12.0, 13.0, 3), (5.5, 7.0, 4),
             (5.0, 6.0, 4)]
    events = pd.DataFrame.from_records(
        [(s, e, "memwait", "phone", "memory", "x", 0.0, 1.0, r, -1) for s, e, r in waits],
        columns=list(COLUMNS))
    got = tables.memory_waits(events)
    assert got.to_dict() == {3: 11.0, 4: 2.0}
    assert got.to_dict() == ref.memory_waits(clean(events)).to_dict()


@pytest.mark.parametrize("duration", [7.0, 0.0])
def test_the_links_table_equals_the_plain_pandas_one(duration):
    stats = [{"resource": r, "bytes": b, "busy_time": t} for r, b, t in
             [("wifi", 8, 1.0 / 3), ("bt", 3, 2.5), ("Wifi", 1, 0.1), ("bt", 4, 0.2),
              ("é5g", 2, 0.0)]]
    for some in (stats, stats[:1], []):
        pd.testing.assert_frame_equal(tables.links_table(some, duration),
                                      ref.links(some, duration), check_exact=True)
