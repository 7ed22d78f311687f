"""Each figure renders once to a real PNG, without pyplot or a global backend."""
import ast
import inspect
import itertools
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from simdl.errors import SimdlError
from simdl.report import frame, plots, result, store, timeline_plot
from simdl.sim.recorder import COLUMNS

PNG = b"\x89PNG\r\n\x1a\n"
ROWS = [
    (0.0, 0.5, "compute", "phone", "npu", "r0", 2e9, 0.0, 0, -1),
    (0.5, 0.75, "transfer", "phone", "tv", "act r0", 0.0, 4000.0, 0, -1),
    (0.6, 0.9, "transfer", "phone", "tv", "act r1", 0.0, 4000.0, 1, -1),
    (0.75, 1.0, "compute", "tv", "gpu", "r0", 1e9, 0.0, 0, -1),
    (0.25, 0.5, "compute", "tv", "cpu", "r2", 5e8, 0.0, 2, -1),
    (1.0, 1.25, "lost", "phone", "cpu", "r1", 1e8, 0.0, 1, -1),
    (1.25, 1.25, "leave", "phone", "", "battery empty", 0.0, 0.0, -1, -1),
]
DEVICES = pd.DataFrame({
    "device": ["phone", "tv"], "busy_cpu_s": [0.25, 0.25], "busy_gpu_s": [float("nan"), 0.25],
    "busy_npu_s": [0.5, float("nan")], "utilisation": [0.4, 0.2], "left_at": [1.25, float("nan")]})
COMPARE = pd.DataFrame({
    "scenario": ["home"] * 3, "strategy": ["single", "pipeline", "data"],
    "throughput_rps": [2.0, 3.5, 2.5], "latency_p95_ms": [975.0, 610.0, float("nan")],
    "network_bytes": [0.0, 4.2e6, 9e6], "energy_J": [6.5, 7.25, 9.0]})


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG) and len(data) > 5000


def test_timeline_draws_units_links_and_lost_work(tmp_path):
    events = pd.DataFrame.from_records(ROWS, columns=list(COLUMNS))
    assert_png(timeline_plot.timeline(events, tmp_path / "timeline.png", title="demo"))


def test_timeline_of_an_empty_log_still_renders(tmp_path):
    assert_png(timeline_plot.timeline(pd.DataFrame(columns=list(COLUMNS)), tmp_path / "empty.png"))


def test_utilisation_draws_one_bar_per_device(tmp_path):
    assert_png(plots.utilisation(DEVICES, tmp_path / "utilisation.png"))


def test_comparison_draws_four_small_multiples(tmp_path):
    assert_png(plots.comparison(COMPARE, tmp_path / "comparison.png"))


@pytest.mark.parametrize("module", [plots, timeline_plot, frame, store, result])
def test_report_never_imports_pyplot_nor_sets_the_global_backend(module):
    tree = ast.parse(inspect.getsource(module))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {"matplotlib.pyplot", "pylab"} & imported
    calls = [n.func for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert not [f for f in calls if isinstance(f, ast.Attribute) and f.attr == "use"]


def brute_busy_share(spans, lanes, edges):
    """Per lane and bin, the exact length (Fractions) of the union of the lane's spans
    inside the bin, over the bin's width."""
    out = []
    for lane in range(lanes):
        merged = []
        for s, e in sorted((Fraction(s), Fraction(e)) for l, s, e in spans if l == lane):
            if merged and s <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], e)
            else:
                merged.append([s, e])
        row = []
        for a, b in itertools.pairwise(edges):
            a, b = Fraction(a), Fraction(b)
            row.append(sum(max(Fraction(0), min(e, b) - max(s, a)) for s, e in merged) / (b - a))
        out.append(row)
    return out


def eighths(rng, n, lanes, end):
    """n spans (lane, start, end) at multiples of 1/8 s within [0, end], some empty."""
    spans = []
    for _ in range(n):
        s = int(rng.integers(0, end * 8)) / 8
        spans.append((int(rng.integers(lanes)), s, min(end, s + int(rng.integers(0, 30)) / 8)))
    return spans


def test_busy_share_is_the_union_of_each_lane_s_spans_in_each_bin():
    rng = np.random.default_rng(4)
    spans = eighths(rng, 300, 5, 16)
    edges = np.linspace(0.0, 16.0, 65)  # bins of 1/4 s
    lane, start, end = (np.array(c) for c in zip(*spans))
    got = timeline_plot.busy_share(lane, start.astype(float), end.astype(float), 5, edges)
    assert got.tolist() == [[float(x) for x in row] for row in brute_busy_share(spans, 5, edges)]


def lanes_log(lanes, spans_per_lane=6, end=100.0, seed=0):
    """Compute spans on `lanes` units d0 cpu, d1 cpu, ...; the last span ends at `end`."""
    rng = np.random.default_rng(seed)
    spans = eighths(rng, lanes * spans_per_lane, lanes, end) + [(0, end - 1, end)]
    rows = [(s, e, "compute", f"d{lane}", "cpu", "k", 0.0, 0.0, -1, -1) for lane, s, e in spans]
    return spans, pd.DataFrame.from_records(rows, columns=list(COLUMNS))


def test_past_max_rows_lanes_neighbours_share_a_row_shaded_by_their_mean_busy_share():
    lanes = plots.MAX_ROWS + 1  # 41 lanes: rows of 2, the last alone
    spans, events = lanes_log(lanes)
    fig = timeline_plot.timeline_figure(events)
    (ax,) = fig.axes
    (image,) = ax.images
    edges = np.linspace(0.0, 100.0, timeline_plot.BINS + 1)  # the run's end is 100 s: 1/4 s bins
    share = brute_busy_share(spans, lanes, edges)
    expected = [[float((a + b) / 2) for a, b in zip(share[i], share[i + 1])]
                for i in range(0, lanes - 1, 2)] + [[float(x) for x in share[-1]]]
    assert np.asarray(image.get_array()).tolist() == expected
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[:2] == ["d0 … d1 cpu (2)", "d2 … d3 cpu (2)"] and labels[-1] == "d40 cpu"
    assert len(labels) == 21 and "2 lanes averaged" in ax.get_xlabel()


def test_up_to_max_rows_lanes_each_kernel_is_a_bar_in_one_collection():
    spans, events = lanes_log(plots.MAX_ROWS)
    (ax,) = timeline_plot.timeline_figure(events).axes
    assert not ax.images
    (bars,) = ax.collections
    corners = bars.get_paths()
    assert len(corners) == len(spans)
    lane, start, end = spans[0]
    assert corners[0].vertices[:4].tolist() == [[start, lane - 0.38], [start, lane + 0.38],
                                                [end, lane + 0.38], [end, lane - 0.38]]
    assert len(ax.get_yticklabels()) == plots.MAX_ROWS


def test_many_bars_on_few_lanes_are_shaded_per_bin_too():
    _, events = lanes_log(3, spans_per_lane=timeline_plot.MAX_BARS // 3 + 1)
    (ax,) = timeline_plot.timeline_figure(events).axes
    assert len(ax.images) == 1 and "lanes averaged" not in ax.get_xlabel()


def bar_widths(ax):
    """The widths of the bars in the axes' first collection (one bar per path)."""
    paths = ax.collections[0].get_paths()
    return [float(p.vertices[2, 0] - p.vertices[0, 0]) for p in paths]


def test_utilisation_of_many_devices_draws_each_group_s_mean_with_its_range():
    n = plots.MAX_ROWS * 2 + 1  # rows of 3 devices
    share = np.arange(n) / 128  # exact
    devices = pd.DataFrame({"device": [f"pc{i}" for i in range(n)], "utilisation": share,
                            "busy_gpu_s": share * 2, "left_at": [np.nan] * (n - 1) + [3.0]})
    left, right = plots.utilisation_figure(devices).axes[:2]
    rows = [share[i:i + 3] for i in range(0, n, 3)]
    assert bar_widths(left) == [float(r.mean() * 100) for r in rows]
    assert bar_widths(right) == [float(r.mean() * 2) for r in rows]
    assert [t.get_text() for t in left.get_yticklabels()][:2] == ["pc0 … pc2 (3)",
                                                                   "pc3 … pc5 (3)"]
    notes = [t.get_text() for t in left.texts]
    assert notes[0] == "0.78% (0.00-1.6)" and notes[-1].endswith("  (1 left)")


def test_few_devices_keep_a_row_each():
    left = plots.utilisation_figure(DEVICES).axes[0]
    assert bar_widths(left) == [40.0, 20.0]


def test_lanes_sort_naturally_and_groups_name_first_and_last():
    assert sorted(["pc10", "pc2", "pc1"], key=timeline_plot.natural) == ["pc1", "pc2", "pc10"]
    assert plots.grouped(["a gpu", "b gpu", "c cpu"], 2) == [("a … b gpu (2)", slice(0, 2)),
                                                              ("c cpu", slice(2, 3))]
    assert plots.grouped(["a gpu", "b cpu"], 2)[0][0] == "a gpu … b cpu (2)"


def test_timeline_rows_follow_devices_in_natural_order_then_units():
    rows = [(0.0, 1.0, "compute", d, u, "k", 0.0, 0.0, -1, -1)
            for d, u in [("pc10", "cpu"), ("pc2", "gpu"), ("pc", "npu"), ("pc2", "cpu")]]
    events = pd.DataFrame.from_records(rows, columns=list(COLUMNS))
    (ax,) = timeline_plot.timeline_figure(events).axes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["pc npu", "pc2 cpu", "pc2 gpu",
                                                           "pc10 cpu"]


CURVE = pd.DataFrame({"t": [0.0, 1.0, 2.0, 4.0], "loss": [2.0, 1.5, 1.8, 1.0],
                      "accuracy": [0.1, float("nan"), 0.3, 0.6]})
FAULTS = pd.DataFrame.from_records([(1.5, 1.5, "leave", "phone", "", "absent", 0.0, 0.0, -1, -1),
                                    (3.0, 3.0, "join", "phone", "", "present", 0.0, 0.0, -1, -1)],
                                   columns=list(COLUMNS))


def vertical_lines(ax):
    """(x, linestyle, colour) of each vertical line: both ends at one x, across the axis."""
    return sorted((float(line.get_xdata()[0]), line.get_linestyle(), line.get_color())
                  for line in ax.get_lines()
                  if len(line.get_xdata()) == 2 and line.get_xdata()[0] == line.get_xdata()[1])


def test_training_marks_a_leave_dashed_and_a_join_dotted_on_both_panels_in_the_run_s_colour():
    fig = plots.training_figure({"ring": CURVE, "ps": CURVE}, faults={"ps": FAULTS})
    loss_ax, acc_ax = fig.axes
    colour = {line.get_label(): line.get_color() for line in loss_ax.get_lines()}
    for ax in (loss_ax, acc_ax):
        assert vertical_lines(ax) == [(1.5, "--", colour["ps"]), (3.0, ":", colour["ps"])]
        assert [t.get_text() for t in ax.texts] == ["phone", "phone"]
    legend = [t.get_text() for t in acc_ax.get_legend().get_texts()]
    assert legend == ["ring", "ps", "device left", "device rejoined"]


def test_training_without_faults_draws_no_vertical_line_and_the_same_png(tmp_path):
    for faults in (None, {"ring": FAULTS.iloc[:0]}):
        fig = plots.training_figure({"ring": CURVE}, faults=faults)
        assert all(vertical_lines(ax) == [] and not ax.texts for ax in fig.axes)
        assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == ["ring"]
    plain = plots.training({"ring": CURVE}, tmp_path / "a.png").read_bytes()
    empty = plots.training({"ring": CURVE}, tmp_path / "b.png",
                           faults={"ring": FAULTS.iloc[:0]}).read_bytes()
    assert plain == empty


def test_training_refuses_faults_of_a_strategy_without_a_curve():
    with pytest.raises(SimdlError, match="faults: 'gossip'"):
        plots.training_figure({"ring": CURVE}, faults={"gossip": FAULTS})
