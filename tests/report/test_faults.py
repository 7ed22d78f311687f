"""The time a pool spends degraded: the union of the absences of the devices the run used."""
import pandas as pd

from simdl.report import faults
from simdl.sim.recorder import COLUMNS


def log(rows):
    full = [(t, t, kind, device, "", "why", 0.0, 0.0, -1, -1) for t, kind, device in rows]
    return pd.DataFrame.from_records(full, columns=list(COLUMNS))


def test_degraded_is_the_union_of_the_used_devices_absences():
    """a is out 1-3 and from 8 to the end (10), b 2-5, c (unused) 0-10: 1-5 and 8-10."""
    events = log([(0.0, "leave", "c"), (1.0, "leave", "a"), (2.0, "leave", "b"),
                  (3.0, "join", "a"), (5.0, "join", "b"), (8.0, "leave", "a")])
    assert faults.degraded(events, {"a", "b"}, 10.0) == 6.0
    assert faults.degraded(events, {"b"}, 10.0) == 3.0
    assert faults.degraded(events, set(), 10.0) == 0.0
    assert faults.away(events, 10.0) == {"c": 10.0, "a": 4.0, "b": 3.0}
