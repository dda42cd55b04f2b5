"""The course notebooks (notebooks/*.ipynb): each one runs top to bottom in a fresh kernel (its asserts check every
hand-written piece against llm's own), and each is committed as a course should be: without outputs, a sentence of
why before every code cell, and a last cell naming the studio tab that does the same at scale."""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
STUDIO_TAB = re.compile(r"\*\*\d · [A-Z][a-z-]+")  # a tab as the studio labels it: **8 · Inside**


def by_name(path: Path) -> str:
    return path.stem


def test_the_course_is_six_numbered_notebooks():
    assert [p.name[:3] for p in NOTEBOOKS] == ["01_", "02_", "03_", "04_", "05_", "06_"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=by_name)
def test_committed_without_outputs(path: Path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for number, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{path.name}, cell {number} has outputs: clear them before committing "
                f"(jupyter nbconvert --clear-output --inplace notebooks/*.ipynb)"
            )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=by_name)
def test_reads_as_a_course(path: Path):
    cells = nbformat.read(path, as_version=4).cells
    assert cells[0].cell_type == "markdown" and cells[0].source.startswith("# "), "it opens with its title"
    for before, cell in zip(cells, cells[1:], strict=False):
        assert cell.cell_type == "markdown" or before.cell_type == "markdown", (
            f"{path.name}: a sentence of why before each code cell, none before\n{cell.source[:200]}"
        )
    code = "\n".join(cell.source for cell in cells if cell.cell_type == "code")
    assert re.search(r"^assert .*", code, re.MULTILINE), "at least one check of a hand-written piece"
    assert "from llm." in code, "it checks its pieces against llm's"
    assert cells[-1].cell_type == "markdown" and STUDIO_TAB.search(cells[-1].source), (
        "it ends with the studio tab that does the same at scale"
    )


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=by_name)
def test_runs_top_to_bottom(path: Path, tmp_path: Path):
    notebook = nbformat.read(path, as_version=4)
    # The kernel runs in notebooks/, as under `jupyter lab notebooks/`; its scratch files go to this test's tmp_path.
    # One torch thread, as the rest of the suite: another process on these two cores slows a two-thread one 10x.
    env = {**os.environ, "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK_DIR)}}
    )
    client.execute(env=env)  # a failing cell raises CellExecutionError with the cell and its traceback
