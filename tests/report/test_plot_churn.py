"""The timeline marks a device's time away: red line out, green line back, a band between."""
import numpy as np
import pandas as pd
from matplotlib.colors import to_rgba

from simdl.report import plots, timeline_plot
from simdl.sim.recorder import COLUMNS

ROWS = [
    (0.0, 0.5, "compute", "phone", "cpu", "k0", 1e9, 0.0, -1, -1),
    (0.0, 4.0, "compute", "tv", "gpu", "k1", 1e9, 0.0, -1, -1),
    (1.0, 1.0, "leave", "phone", "", "absent", 0.0, 0.0, -1, -1),
    (3.0, 3.0, "join", "phone", "", "present", 0.0, 0.0, -1, -1),
    (3.5, 3.5, "leave", "tv", "", "battery empty", 0.0, 0.0, -1, -1),
]


def test_a_return_is_a_green_line_and_the_time_away_a_band_over_the_device_s_rows():
    events = pd.DataFrame.from_records(ROWS, columns=list(COLUMNS))
    (ax,) = timeline_plot.timeline_figure(events).axes
    notes = sorted(t.get_text() for t in ax.texts if t.get_text().endswith(("left", "joined")))
    assert notes == ["phone joined", "phone left", "tv left"]
    green = [c for c in ax.collections
             if np.allclose(c.get_colors()[0] if hasattr(c, "get_colors") else 0,
                            to_rgba(plots.COLOURS["join"]))]
    assert len(green) == 1
    (segment,) = green[0].get_segments()
    assert segment.tolist() == [[3.0, -0.5], [3.0, 0.5]]  # phone cpu is row 0
    bands = [c for c in ax.collections if c.get_alpha() == 0.12]
    assert len(bands) == 1  # the tv never came back: no band
    x = bands[0].get_paths()[0].vertices[:, 0]
    assert (x.min(), x.max()) == (1.0, 3.0)
