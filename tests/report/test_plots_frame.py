"""The shared figure skeleton (report.frame): margins measured from the texts, so every
text fits inside the figure, PAD from its edge, and none crosses another panel."""
import io

import numpy as np
import pandas as pd
import pytest
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from simdl.report import frame, plots, timeline_plot
from simdl.sim.recorder import COLUMNS

LONG = "a-strategy-label-far-longer-than-any-default-margin"


def texts(fig):
    """Every text drawn: each axes' margins' (`outer_texts`), its notes, its legend's,
    the figure's title."""
    renderer = fig.canvas.get_renderer()
    found = [t for ax in fig.axes for t in outer_texts(ax) + ax.texts]
    found += [t for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    found += [t for t in fig.texts if t.get_text()]
    return [(t, t.get_window_extent(renderer)) for t in found]


def outer_texts(ax):
    """The texts an axes' margins hold: tick labels drawn (inside the view), axis
    labels, title."""
    lo, hi = sorted(ax.get_xlim())
    ticks = [t for t, x in zip(ax.get_xticklabels(), ax.get_xticks()) if lo <= x <= hi]
    lo, hi = sorted(ax.get_ylim())
    ticks += [t for t, y in zip(ax.get_yticklabels(), ax.get_yticks()) if lo <= y <= hi]
    return [t for t in ticks + [ax.xaxis.label, ax.yaxis.label, ax.title]
            if t.get_visible() and t.get_text()]


def drawn(fig):
    fig.canvas.draw()
    return fig


DEVICES = pd.DataFrame({"device": ["phone", LONG], "busy_cpu_s": [0.25, 0.5],
                        "utilisation": [0.4, 0.2]})
COMPARE = pd.DataFrame({"scenario": ["home"] * 2, "strategy": ["single", LONG],
                        "throughput_rps": [2.0, 3.5], "latency_p95_ms": [975.0, 610.0],
                        "network_bytes": [0.0, 4.2e6], "energy_J": [6.5, 7.25]})
EVENTS = pd.DataFrame.from_records(
    [(0.0, 0.5, "compute", LONG, "npu", "r0", 2e9, 0.0, 0, -1),
     (0.5, 0.75, "transfer", LONG, "tv", "act r0", 0.0, 4000.0, 0, -1)], columns=list(COLUMNS))
CURVE = pd.DataFrame({"t": [0.0, 1.0, 2.0], "loss": [2.0, 1.5, 1.0],
                      "accuracy": [0.1, float("nan"), 0.3]})
FIGURES = {
    "utilisation": lambda: plots.utilisation_figure(DEVICES, title="a title"),
    "comparison": lambda: plots.comparison_figure(COMPARE),
    "timeline": lambda: timeline_plot.timeline_figure(EVENTS, title="a title"),
    "training": lambda: plots.training_figure({LONG: CURVE, "ps": CURVE}),
    "memory": lambda: plots.memory_figure(pd.DataFrame(
        {"t": [0.0, 1.0], "device": [LONG, LONG], "tier": ["ram", "ram"],
         "weights_bytes": [2**20, 2**20], "kv_bytes": [0, 2**21]})),
}


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_every_text_lies_inside_the_figure_and_off_the_other_panels(name):
    fig = drawn(FIGURES[name]())
    width, height = fig.canvas.get_width_height()
    pad = frame.PAD * fig.dpi / 72
    for text, box in texts(fig):
        assert box.x0 >= pad - 1 and box.x1 <= width - pad + 1, (name, text.get_text())
        assert box.y0 >= pad - 1 and box.y1 <= height - pad + 1, (name, text.get_text())
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        for other in fig.axes:
            if other is not ax:
                assert not ax.bbox.overlaps(other.bbox)
                for text in outer_texts(other):
                    assert not text.get_window_extent(renderer).overlaps(ax.bbox), \
                        (name, text.get_text())


def test_the_widest_label_sits_pad_points_from_the_edge_and_the_axes_take_the_rest():
    """The margin is the label's own width: a longer label moves the axes right by
    exactly the difference of the widths."""
    fig = drawn(plots.utilisation_figure(DEVICES))
    left = fig.axes[0]
    labels = [t.get_window_extent() for t in left.get_yticklabels()]
    assert min(b.x0 for b in labels) == pytest.approx(frame.PAD * fig.dpi / 72, abs=0.5)
    short = drawn(plots.utilisation_figure(DEVICES.assign(device=["phone", "tv"])))
    widths = [max(t.get_window_extent().width for t in f.axes[0].get_yticklabels())
              for f in (fig, short)]
    shift = left.bbox.x0 - short.axes[0].bbox.x0
    assert shift == pytest.approx(widths[0] - widths[1], abs=1e-6)


def test_a_legend_beside_the_axes_gets_its_width_on_the_right():
    fig = drawn(timeline_plot.timeline_figure(EVENTS))
    (ax,) = fig.axes
    legend = ax.get_legend().get_window_extent()
    width = fig.canvas.get_width_height()[0]
    assert legend.x0 >= ax.bbox.x1 - 1e-6
    assert legend.x1 == pytest.approx(width - frame.PAD * fig.dpi / 72, abs=0.5)


def test_hbars_span_each_start_to_its_end_centred_on_its_row():
    _fig, axes = frame.new(4, 3)
    bars = frame.hbars(axes[0, 0], [0, 2], [1.0, 0.0], [3.0, 0.5], 0.5)
    assert [p.vertices[:4].tolist() for p in bars.get_paths()] == [
        [[1.0, -0.25], [1.0, 0.25], [3.0, 0.25], [3.0, -0.25]],
        [[0.0, 1.75], [0.0, 2.25], [0.5, 2.25], [0.5, 1.75]]]
    assert bars.get_linewidths().tolist() == [0.0]  # as barh: an empty bar draws nothing


def test_value_ticks_keep_at_most_six_round_ticks():
    _fig, axes = frame.new(11, 3)
    ax = axes[0, 0]
    ax.set_xlim(0, 87)
    frame.value_ticks(ax.xaxis)
    assert ax.get_xticks().tolist() == [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]


def test_png_is_the_drawn_picture_without_alpha(tmp_path):
    """PIL reads back exactly the pixels the canvas drew (text drawn as frame.TEXT
    says), as RGB at DPI; the same figure gives the same bytes."""
    data = frame.png(FIGURES["utilisation"](), tmp_path / "u.png").read_bytes()
    image = Image.open(io.BytesIO(data))
    assert image.mode == "RGB" and image.info["dpi"] == pytest.approx((frame.DPI, frame.DPI),
                                                                        abs=1e-3)
    again = FIGURES["utilisation"]()
    with rc_context(frame.TEXT):
        FigureCanvasAgg(again).draw()
    assert (np.asarray(image) == np.asarray(again.canvas.buffer_rgba())[..., :3]).all()
    assert frame.png(FIGURES["utilisation"](), tmp_path / "v.png").read_bytes() == data


def test_fit_keeps_a_cell_when_labels_are_longer_than_the_figure():
    fig, axes = frame.new(2, 2)
    axes[0, 0].set_yticks([0], [LONG * 3])
    frame.fit(fig, axes)
    assert axes[0, 0].get_position().width == pytest.approx(frame.MIN_CELL)


def test_axis_labels_sit_labelpad_beyond_the_tick_labels_as_matplotlib_puts_them():
    fig, axes = frame.new(6, 4)
    ax = axes[0, 0]
    ax.set_yticks([0, 1], ["a", "a wide label"])
    ax.set_xticks([0, 1], ["0", "1"])
    ax.set(xlim=(-0.5, 1.5), ylim=(-0.5, 1.5), xlabel="across", ylabel="up")
    frame.fit(fig, axes)
    with rc_context(frame.TEXT):
        fig.canvas.draw()
    px = fig.dpi / 72
    ticks = [t.get_window_extent() for t in ax.get_yticklabels()]
    up = ax.yaxis.label.get_window_extent()
    assert up.x1 == pytest.approx(min(b.x0 for b in ticks) - ax.yaxis.labelpad * px, abs=1e-6)
    ticks = [t.get_window_extent() for t in ax.get_xticklabels()]
    across = ax.xaxis.label.get_window_extent()
    assert across.y1 == pytest.approx(min(b.y0 for b in ticks) - ax.xaxis.labelpad * px,
                                      abs=1e-6)
    assert up.x0 == pytest.approx(frame.PAD * px, abs=0.5)
