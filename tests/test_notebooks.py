"""The tutorial notebooks (docs/notebooks/) execute top to bottom at tiny size, and are committed without
outputs (what a reader sees is what their own run prints, not a stale copy)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "docs" / "notebooks").glob("*.ipynb"))


def test_there_are_tutorials():
    assert [p.name for p in NOTEBOOKS] == ["01_prune_your_own_snn.ipynb", "02_compress_and_export.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name}: clear the outputs"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("SPIKEPRUNE_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    # each notebook ends on its check: the pruned SpikingJelly net / the NIR round trip
    expected = {"01_prune_your_own_snn": "weights are exact zeros", "02_compress_and_export":
                "same output after the round trip: True"}[path.stem]
    assert expected in text, text[-2000:]
