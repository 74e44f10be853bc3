"""Executes notebooks/quickstart.ipynb, then notebooks/analysis.ipynb on the workdir it trained.

The notebooks read HTAKL_QUICK=1 (one training epoch, few evaluation images) and HTAKL_WORKDIR.
The kernel runs on one CPU device (XLA_FLAGS cleared) from the repository root.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def execute(name: str) -> nbformat.NotebookNode:
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute()  # raises CellExecutionError naming the failing cell
    return nb


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("quickstart")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HTAKL_QUICK", "1")
        mp.setenv("HTAKL_WORKDIR", str(workdir))
        mp.setenv("JAX_PLATFORMS", "cpu")
        mp.setenv("XLA_FLAGS", "")
        nb = execute("quickstart.ipynb")
        yield nb, workdir


def outputs_text(nb) -> str:
    return "\n".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )


def test_quickstart_notebook_runs(quickstart):
    nb, workdir = quickstart
    text = outputs_text(nb)
    assert "HTA-KL" in text and "student accuracy by T" in text
    assert "overall firing rate" in text
    assert (workdir / "results.json").is_file()
    pngs = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(pngs) == 2  # accuracy vs T and firing rates


def test_analysis_notebook_runs_on_the_quickstart_workdir(quickstart):
    _, workdir = quickstart
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HTAKL_QUICK", "1")
        mp.setenv("HTAKL_WORKDIR", str(workdir))
        mp.setenv("JAX_PLATFORMS", "cpu")
        mp.setenv("XLA_FLAGS", "")
        nb = execute("analysis.ipynb")
    out = workdir / "analysis"
    for name in (
        "analysis.json",
        "energy.md",
        "firing_rates.png",
        "tsne.png",
        "accuracy.md",
        "training_curves.png",
    ):
        assert (out / name).is_file(), name
    assert "| Teacher ANN |" in (out / "energy.md").read_text()
    assert "before the classifier" in outputs_text(nb)
    assert os.path.getsize(out / "tsne.png") > 1000


@pytest.mark.parametrize("name", ["quickstart.ipynb", "analysis.ipynb"])
def test_committed_notebooks_are_executed_with_one_setting_and_no_placeholder(name):
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    setup = code[0].source
    assert 'REPO_URL = ""' in setup and "<" not in setup.split("REPO_URL = ")[1].split("\n")[0]
    assert all(c.get("execution_count") for c in code), "commit the notebook executed"
    assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs), "no figure"
