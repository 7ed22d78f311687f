"""The pool's changes in the Chrome trace: joins beside leaves, speed and link changes."""
import pandas as pd

from simdl.report.trace import chrome_trace
from simdl.sim.recorder import COLUMNS

ROWS = [
    (0.0, 1.0, "compute", "tv", "gpu", "k0", 1e9, 0.0, -1, -1),
    (0.0, 2.0, "transfer", "phone", "tv", "act", 0.0, 100.0, -1, -1),
    (0.5, 0.5, "speed", "tv", "gpu", "x0.25", 0.0, 0.0, -1, -1),
    (1.0, 1.0, "leave", "phone", "", "absent", 0.0, 0.0, -1, -1),
    (1.5, 1.5, "link", "", "phone-ap", "bandwidth x0.2, loss 0.05", 0.0, 0.0, -1, -1),
    (3.0, 3.0, "join", "phone", "", "present", 0.0, 0.0, -1, -1),
]


def test_joins_speed_and_link_changes_are_instant_events():
    trace = chrome_trace(pd.DataFrame.from_records(ROWS, columns=list(COLUMNS)))
    instants = [(e["cat"], e["name"], e["pid"], e["s"], e["ts"], e["args"])
                for e in trace["traceEvents"] if e["ph"] == "i"]
    # pids: phone 1, tv 2 (sorted), network 3
    assert instants == [
        ("speed", "gpu x0.25", 2, "p", 5e5, {"set": "x0.25"}),
        ("leave", "phone left", 1, "p", 1e6, {"why": "absent"}),
        ("link", "link phone-ap: bandwidth x0.2, loss 0.05", 3, "g", 1.5e6,
         {"set": "bandwidth x0.2, loss 0.05"}),
        ("join", "phone joined", 1, "p", 3e6, {"why": "present"}),
    ]
