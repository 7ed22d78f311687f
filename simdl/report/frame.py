"""The skeleton every report figure shares: a Figure at a fixed dpi, its axes placed
by margins measured from their own texts, and its PNG.

Why not matplotlib's constrained or tight layout: both find the margins by asking
every artist for its bounding box, ticks and all, which costs about as much as
drawing the figure. Here each
margin is the measured extent of the texts that sit in it: tick labels, axis
labels, titles, a legend beside the axes, the figure's title. Same margins, read
off the strings once.
"""
from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import offset_copy
from PIL import Image

from simdl.report.store import atomic_write

DPI = 100
#: Clear space (points) between neighbouring panels' texts, and from the figure's edges.
PAD = 5.0
EDGE = PAD / 2  # beside the PAD / 2 every text's reach carries
#: Intervals on a value axis (`value_ticks`).
VALUE_TICKS = 5
#: The least share of the figure's width (height) a cell keeps, however long its labels.
MIN_CELL = 0.2
#: Text drawn without FreeType's hinting: a quarter less time per figure than the
#: default (a figure's time is mostly its texts), equally legible at these sizes.
#: Set around the measuring (`fit`) and the drawing (`png`) only, never globally.
TEXT = {"text.hinting": "no_hinting"}
#: zlib level of the PNGs: files about a sixth larger than level 6, deflated in under
#: half the time.
COMPRESS_LEVEL = 1


def new(width: float, height: float, rows: int = 1, cols: int = 1, **subplots: object
        ) -> tuple[Figure, np.ndarray]:
    """A figure of `width` x `height` inches at DPI and its rows x cols axes (an array
    of that shape; `subplots` as `Figure.subplots` takes them), to be placed by `fit`."""
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas; its renderer measures texts
    axes = fig.subplots(rows, cols, squeeze=False, **subplots)
    return fig, axes


#: Numbers per bar, as a list or an array.
Values = Sequence[float] | np.ndarray


def hbars(ax: Axes, rows: Values, starts: Values | float, ends: Values,
          height: float | np.ndarray, **style: object) -> PolyCollection:
    """Horizontal bars as one collection (Axes.barh makes an artist per bar, each
    costing about as much to add as to draw): bar i spans x from starts[i] (or one
    `starts` for all) to ends[i], centred on y = rows[i], height (or height[i]) tall. The axes'
    limits are the caller's to set; no edges unless `style` gives them, as barh."""
    y = np.asarray(rows, dtype=float)
    x0 = np.broadcast_to(np.asarray(starts, dtype=float), y.shape)
    x1 = np.asarray(ends, dtype=float)
    y0, y1 = y - height / 2, y + height / 2
    corners = np.stack([np.stack([x0, y0], -1), np.stack([x0, y1], -1),
                        np.stack([x1, y1], -1), np.stack([x1, y0], -1)], axis=1)
    bars = PolyCollection(corners, **({"linewidths": 0.0} | style))
    ax.add_collection(bars, autolim=False)
    return bars


def value_ticks(axis: Axis) -> None:
    """At most VALUE_TICKS + 1 round ticks on a value axis: each tick is a few artists
    (its label, marks and grid line), and half a dozen read as well as ten."""
    axis.set_major_locator(MaxNLocator(nbins=VALUE_TICKS, steps=[1, 2, 2.5, 5, 10]))


def _points(renderer: RendererAgg, text: Text) -> tuple[float, float]:
    """(width, height) in points of `text` as drawn (rotated, every line counted);
    its metrics are cached for the draw."""
    box = text.get_window_extent(renderer)
    return box.width * 72.0 / renderer.dpi, box.height * 72.0 / renderer.dpi


def _extent(renderer: RendererAgg, texts: Sequence[Text]) -> tuple[float, float]:
    """The widest and tallest of the visible, non-empty `texts`, in points."""
    sizes = [_points(renderer, t) for t in texts if _visible(t)]
    return (max((w for w, _ in sizes), default=0.0), max((h for _, h in sizes), default=0.0))


def _tick_reach(axis: Axis, extent: float) -> float:
    """Points from the axes' edge to the far side of tick labels `extent` deep."""
    if not extent:
        return 0.0
    tick = axis.get_major_ticks()[0]
    return extent + tick.get_pad() + tick.get_tick_padding()


def _visible(text: Text) -> bool:
    return text.get_visible() and bool(text.get_text())


def margins(ax: Axes, renderer: RendererAgg) -> tuple[float, float, float, float]:
    """(left, right, bottom, top) in points: how far the axes' texts reach out of its
    box. Left: the y tick labels and the y label; bottom: the x tick labels, the x
    label and an offset text ("1e6"); top: the title; right: a legend anchored outside
    (at x >= 1 of the axes), else half the last x tick label.

    Pins each axis label where matplotlib would put it, labelpad beyond the tick
    labels: else every draw measures all tick labels again to find that place."""
    x, y, fig = ax.xaxis, ax.yaxis, ax.get_figure(root=True)
    left = _tick_reach(y, _extent(renderer, y.get_ticklabels())[0])
    if _visible(y.label):
        y.set_label_coords(0.0, 0.5, offset_copy(ax.transAxes, fig,
                                                 x=-(left + y.labelpad), units="points"))
        left += _points(renderer, y.label)[0] + y.labelpad
    tick_w, tick_h = _extent(renderer, x.get_ticklabels())
    bottom = _tick_reach(x, tick_h)
    if _visible(x.label):
        x.set_label_coords(0.5, 0.0, offset_copy(ax.transAxes, fig,
                                                 y=-(bottom + x.labelpad), units="points"))
    lines = [t for t in (x.label, x.get_offset_text()) if _visible(t)]
    if lines:
        bottom += sum(_points(renderer, t)[1] for t in lines) + x.labelpad
    left = max(left, tick_w / 2)
    right = tick_w / 2
    # Above the box: the title (titlepad above it), else the y axis's offset text.
    top = 0.0
    for above in (ax.title, y.get_offset_text()):
        if _visible(above):
            pad = ax.titleOffsetTrans.get_matrix()[1, 2] * 72.0 / DPI if above is ax.title else 2
            top = max(top, _points(renderer, above)[1] + pad)
    legend = ax.get_legend()
    if legend is not None and legend.get_bbox_to_anchor().x0 >= ax.bbox.x1 - 1:
        gap = legend.borderaxespad * legend.prop.get_size_in_points()
        right = max(right, gap + legend.get_window_extent(renderer).width * 72.0 / renderer.dpi)
    return left, right, bottom, top


def fit(fig: Figure, axes: np.ndarray, title: str = "") -> None:
    """Give `fig` its `title` (centred at the top) and place `axes` (as `new` made them:
    a rows x cols grid of equal cells) so that every text just fits, PAD points apart
    and from the figure's edges. Call it once everything is drawn onto the axes.
    Labels too long for the figure keep each cell at least MIN_CELL of it (and may
    then be cut), rather than fail a run."""
    renderer = fig.canvas.get_renderer()
    rows, cols = axes.shape
    with rc_context(TEXT):
        reach = np.array([[margins(ax, renderer) for ax in row] for row in axes]) + PAD / 2
    width, height = (v * 72.0 for v in fig.get_size_inches())
    head = 0.0
    if title:
        text = fig.suptitle(title, va="top", y=1.0 - PAD / height)
        with rc_context(TEXT):
            head = _points(renderer, text)[1] + PAD
    # Each column keeps room for the widest reach of its cells; the cells share the rest.
    left, right = reach[:, :, 0].max(axis=0), reach[:, :, 1].max(axis=0)
    bottom, top = reach[:, :, 2].max(axis=1), reach[:, :, 3].max(axis=1)
    cell_w = max((width - 2 * EDGE - left.sum() - right.sum()) / cols, MIN_CELL * width)
    cell_h = max((height - 2 * EDGE - head - bottom.sum() - top.sum()) / rows,
                 MIN_CELL * height)
    x0 = EDGE + left + np.concatenate([[0.0], np.cumsum(left + cell_w + right)[:-1]])
    y1 = height - EDGE - head - top - np.concatenate([[0.0],
                                                       np.cumsum(top + cell_h + bottom)[:-1]])
    for r in range(rows):
        for c in range(cols):
            axes[r, c].set_position([x0[c] / width, (y1[r] - cell_h) / height,
                                     cell_w / width, cell_h / height])


def png(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Draw `fig` once, at DPI, and write it atomically as an 8-bit RGB PNG (PIL) at zlib
    level COMPRESS_LEVEL, with no text or time chunk: the bytes depend on the picture
    only. (`savefig` would draw a figure with a layout engine twice.)"""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    if fig.dpi != DPI:
        fig.set_dpi(DPI)
    with rc_context(TEXT):
        canvas.draw()
    rgb = np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[..., :3])
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="png", compress_level=COMPRESS_LEVEL,
                              dpi=(DPI, DPI))
    return atomic_write(path, buffer.getvalue())
