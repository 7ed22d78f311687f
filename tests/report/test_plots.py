"""Each figure renders once to a real PNG, without pyplot or a global backend."""
import ast
import inspect

import pandas as pd
import pytest

from simdl.report import plots, result, store
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
    assert_png(plots.timeline(events, tmp_path / "timeline.png", title="demo"))


def test_timeline_of_an_empty_log_still_renders(tmp_path):
    assert_png(plots.timeline(pd.DataFrame(columns=list(COLUMNS)), tmp_path / "empty.png"))


def test_utilisation_draws_one_bar_per_device(tmp_path):
    assert_png(plots.utilisation(DEVICES, tmp_path / "utilisation.png"))


def test_comparison_draws_four_small_multiples(tmp_path):
    assert_png(plots.comparison(COMPARE, tmp_path / "comparison.png"))


@pytest.mark.parametrize("module", [plots, store, result])
def test_report_never_imports_pyplot_nor_sets_the_global_backend(module):
    tree = ast.parse(inspect.getsource(module))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {"matplotlib.pyplot", "pylab"} & imported
    calls = [n.func for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert not [f for f in calls if isinstance(f, ast.Attribute) and f.attr == "use"]
