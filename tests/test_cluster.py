"""Sweeps on a Dask cluster: the same table, byte for byte, as on local processes."""
import pytest

from simdl import sweep
from simdl.cli import main
from simdl.cluster import executor
from test_cli import assert_one_clear_line
from test_sweep import write_sweep


def test_a_local_dask_cluster_gives_the_local_pools_table_byte_for_byte(tmp_path):
    pytest.importorskip("distributed", reason="Dask is the optional `cluster` extra")
    pts = sweep.points(write_sweep(tmp_path, grid={"workload.requests": [1, 2]}, seeds=2))
    with executor(None, 2) as pool:
        sweep.execute(pts, tmp_path / "local", pool)
    with executor("local:2") as dask:  # two worker processes on 127.0.0.1
        outcome = sweep.execute(pts, tmp_path / "dask", dask)
    assert (outcome.ran, outcome.failed, outcome.unfinished) == (4, 0, [])
    table = (tmp_path / "dask" / "sweep.csv").read_bytes()
    assert table == (tmp_path / "local" / "sweep.csv").read_bytes()
    assert len(table.decode().splitlines()) == 1 + 4 * 2


@pytest.mark.parametrize("argv, expect", [
    (["--cluster", "local:0"], r"^--cluster: 'local:0' is not valid; local:N with N a whole"),
    (["--cluster", "local:2", "--workers", "2"], r"^--workers: 2 is not valid; local processes"),
    (["--workers", "0"], r"^--workers: 0 is not valid; a whole number >= 1$"),
])
def test_a_bad_executor_is_one_line_and_exit_2(tmp_path, capsys, argv, expect):
    path = write_sweep(tmp_path)
    assert_one_clear_line(["sweep", str(path), "--out", str(tmp_path / "o"), *argv], expect, capsys)
