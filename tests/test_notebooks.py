"""Every notebook in notebooks/ runs top to bottom without an error, draws at least one
figure and checks the conclusion it states with an `assert` cell (so a wrong result
fails here); each is kept as a stripped .ipynb paired with a jupytext percent .py
holding the same cells."""
import functools
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

FOLDER = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(FOLDER.glob("*.ipynb"))
IDS = [p.stem for p in NOTEBOOKS]


@functools.cache
def executed(path: Path) -> nbformat.NotebookNode:
    """The notebook run top to bottom with notebooks/ as its working folder (once per
    session: two tests read the same run)."""
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb


def code_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.cell_type == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_the_notebook_runs(path):
    errors = [o for c in code_cells(executed(path)) for o in c.get("outputs", [])
              if o.output_type == "error"]
    assert not errors


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_the_notebook_asserts_its_conclusion_and_draws_a_figure(path):
    nb = executed(path)
    asserting = [c for c in code_cells(nb)
                 if any(line.startswith("assert ") for line in c.source.splitlines())]
    assert asserting and asserting[-1] is code_cells(nb)[-1], "the last cell checks the claim"
    assert nb.cells[-2].cell_type == "markdown" and "Conclusion" in nb.cells[-2].source
    images = [o for c in code_cells(nb) for o in c.outputs if "image/png" in o.get("data", {})]
    assert images


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_the_notebook_is_stored_without_outputs(path):
    for cell in code_cells(nbformat.read(path, as_version=4)):
        assert cell.outputs == [] and cell.execution_count is None


def test_every_notebook_has_its_plain_text_twin():
    assert NOTEBOOKS
    assert {p.stem for p in FOLDER.glob("*.py")} == {p.stem for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_the_notebook_and_its_py_hold_the_same_cells(path):
    jupytext = pytest.importorskip("jupytext", reason="jupytext (dev extra) pairs the .py")
    paired = jupytext.read(path.with_suffix(".py"))
    stored = nbformat.read(path, as_version=4)
    assert ([(c.cell_type, c.source) for c in paired.cells]
            == [(c.cell_type, c.source) for c in stored.cells])
