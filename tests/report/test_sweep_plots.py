"""Sweep figures draw exactly the table's values, in order, and refuse a table they
would draw wrongly."""
import numpy as np
import pandas as pd
import pytest

from simdl.errors import SimdlError
from simdl.report import sweep_plots

PNG = b"\x89PNG\r\n\x1a\n"
#: Rows out of order on purpose: the figure must sort them, not trust the table.
SWEEP = pd.DataFrame({
    "uplink": [100, 10, 1000, 10, 100, 1000],
    "cut": [0, 0, 0, 3, 3, 3],
    "latency_ms": [39.0, 323.0, 12.5, 1700.0, 188.0, 48.0],
})
LINES = pd.DataFrame({
    "strategy": ["local", "offloaded", "local", "offloaded", "offloaded", "local"],
    "uplink": [1000, 10, 10, 1000, 100, 100],
    "latency_ms": [26.0, 323.0, 26.0, 12.5, 39.0, 26.0],
})


def test_the_heat_map_holds_each_cell_at_its_sorted_place():
    fig = sweep_plots.heatmap(SWEEP, "uplink", "cut", "latency_ms")
    ax = fig.axes[0]
    expected = np.array([[323.0, 39.0, 12.5], [1700.0, 188.0, 48.0]])  # rows cut 0, 3
    assert np.array_equal(ax.images[0].get_array(), expected)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["10", "100", "1000"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "3"]
    # Each cell written at its own place: (column, row) -> text.
    written = {t.get_position(): t.get_text() for t in ax.texts}
    assert written == {(0, 0): "323", (1, 0): "39", (2, 0): "12.5",
                       (0, 1): "1.7e+03", (1, 1): "188", (2, 1): "48"}


def test_a_missing_cell_stays_blank_and_log_colour_colours_by_decades():
    fig = sweep_plots.heatmap(SWEEP.iloc[1:], "uplink", "cut", "latency_ms", log_colour=True)
    ax = fig.axes[0]
    drawn = ax.images[0].get_array()
    assert drawn.mask[0, 1] and not drawn.mask.sum() - 1
    assert drawn[0, 0] == pytest.approx(np.log10(323.0), abs=0) and len(ax.texts) == 5


def test_the_line_plot_draws_one_line_per_strategy_in_order_of_x():
    fig = sweep_plots.lines(LINES, "uplink", "latency_ms", log_x=True)
    ax = fig.axes[0]
    drawn = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
             for line in ax.get_lines()}
    assert drawn == {"local": ([10, 100, 1000], [26.0, 26.0, 26.0]),
                     "offloaded": ([10, 100, 1000], [323.0, 39.0, 12.5])}
    assert [line.get_label() for line in ax.get_lines()] == ["local", "offloaded"]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "linear"


def test_a_path_gets_the_png_and_no_path_writes_nothing(tmp_path):
    sweep_plots.heatmap(SWEEP, "uplink", "cut", "latency_ms")
    sweep_plots.lines(LINES, "uplink", "latency_ms")
    assert not list(tmp_path.iterdir())
    for name, draw in (("heat.png", lambda p: sweep_plots.heatmap(SWEEP, "uplink", "cut",
                                                                  "latency_ms", path=p)),
                       ("lines.png", lambda p: sweep_plots.lines(LINES, "uplink", "latency_ms",
                                                                 path=p))):
        draw(tmp_path / name)
        assert (tmp_path / name).read_bytes().startswith(PNG)


@pytest.mark.parametrize("draw, field", [
    (lambda: sweep_plots.heatmap(SWEEP, "uplink", "cuts", "latency_ms"), "y"),
    (lambda: sweep_plots.heatmap(SWEEP, "uplink", "cut", "throughput"), "value"),
    (lambda: sweep_plots.lines(LINES, "bandwidth", "latency_ms"), "x"),
    (lambda: sweep_plots.lines(LINES, "uplink", "latency_ms", by="label"), "by"),
])
def test_a_column_the_table_lacks_is_named(draw, field):
    with pytest.raises(SimdlError, match=rf"^{field}: .* is not valid; a column of the table: "):
        draw()


def test_two_rows_for_one_point_are_refused_not_drawn_as_the_last():
    twice = pd.concat([SWEEP, SWEEP.iloc[[2]].assign(latency_ms=1.0)])
    with pytest.raises(SimdlError, match=r"^uplink, cut: \(1000, 0\) is not valid; one row per point"):
        sweep_plots.heatmap(twice, "uplink", "cut", "latency_ms")
    with pytest.raises(SimdlError, match=r"^strategy, uplink: \('local', 10\) is not valid"):
        sweep_plots.lines(pd.concat([LINES, LINES.iloc[[2]]]), "uplink", "latency_ms")
