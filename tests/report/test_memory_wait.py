"""Memory waits in the tables, from a hand-built log.

  r0 has three micro-batches that wait 0.5-1.5, 0-1 and 0.25-0.75 (logged in that order):
     together 0-1.5, so 1.5 s, not the 2.5 s their sum would say.
  r1 never waits.
  r2 waits 2-2.5 and 3-3.25 (0.75 s), then fails (its device left).
  The summary's total: 1.5 + 0 + 0.75 = 2.25 s.
"""
import pandas as pd

from simdl.report.tables import devices_table, links_table, requests_table, summary
from simdl.sim.recorder import COLUMNS

ROWS = [
    (0.0, 0.5, "request", "phone", "", "phone", 0.0, 0.0, 1, -1),
    (0.5, 1.5, "memwait", "phone", "memory", "r0.1", 0.0, 256.0, 0, -1),
    (0.0, 1.0, "memwait", "tv", "memory", "r0.0", 0.0, 256.0, 0, -1),
    (0.25, 0.75, "memwait", "phone", "memory", "r0.2", 0.0, 256.0, 0, -1),
    (0.0, 2.0, "request", "phone", "", "phone>tv", 0.0, 0.0, 0, -1),
    (3.0, 3.25, "memwait", "phone", "memory", "r2.1", 0.0, 64.0, 2, -1),
    (2.0, 2.5, "memwait", "phone", "memory", "r2.0", 0.0, 64.0, 2, -1),
    (2.0, 3.5, "failed", "phone", "", "device_left", 0.0, 0.0, 2, -1),
]


def test_a_request_s_memory_wait_is_the_union_of_its_waits_and_the_summary_sums_them():
    events = pd.DataFrame.from_records(ROWS, columns=list(COLUMNS))
    reqs = requests_table(events)
    assert reqs.request.tolist() == [0, 1, 2]
    assert reqs.memory_wait.tolist() == [1.5, 0.0, 0.75]
    row = summary(events, devices_table(events, {}, {}, 3.5), links_table([], 3.5), 3.5).iloc[0]
    assert row["memory_wait_s"] == 2.25


def test_no_waits_is_zero_not_missing():
    events = pd.DataFrame.from_records(ROWS[:1], columns=list(COLUMNS))
    assert requests_table(events).memory_wait.tolist() == [0.0]
    empty = pd.DataFrame(columns=list(COLUMNS))
    assert summary(empty, devices_table(empty, {}, {}, 0.0), links_table([], 0.0),
                   0.0).iloc[0]["memory_wait_s"] == 0.0
