"""The README's main job and the weights demo run end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("script", ["train_workflow.py", "weights_demo.py"])
def test_example_runs(script):
    pytest.importorskip("sklearn")
    done = subprocess.run([sys.executable, str(EXAMPLES / script)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    if script == "train_workflow.py":
        assert "identical outputs: True" in done.stdout and "after resuming" in done.stdout


@pytest.mark.parametrize("notebook", sorted((EXAMPLES.parent / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_executes(notebook, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("sklearn")
    corpus = EXAMPLES.parents[1] / "shared" / "corpus"  # ../shared/corpus from the repository root
    if "TKIO_CORPUS" in notebook.read_text() and not corpus.is_dir():
        pytest.skip("../shared/corpus is absent")
    monkeypatch.setenv("TKIO_CORPUS", str(corpus))  # the kernel runs in tmp_path: tell it where the corpus is
    nb = nbformat.read(notebook, as_version=4)
    nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"
    ]
    assert not errors
