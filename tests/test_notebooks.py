"""Every notebook runs top to bottom in a Jupyter kernel and fails the suite on any error.

Notebooks are jupytext percent-format `.py` files (no outputs in git, plain diffs); each is
converted to a notebook and executed by nbclient with notebooks/ as working directory. Their own
`assert` cells check the story they tell against the fixture tapes.
"""

from __future__ import annotations

import pytest

from conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS][:3] == ["01_incident_forensics.py", "02_cross_zone_cost.py", "03_baseline_vs_regressed.py"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, monkeypatch):
    import jupytext  # a test dependency (pyproject [test]): missing is an error, not a skip
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel draws inline (PNG outputs), no display needed
    nb = jupytext.read(path)
    assert sum(c.cell_type == "markdown" for c in nb.cells) >= 5 and sum(c.cell_type == "code" for c in nb.cells) >= 8
    client = NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    except CellExecutionError as e:  # the failing cell and its traceback, without the kernel's noise
        pytest.fail(f"{path.name}: {str(e)[-3000:]}")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    # the plots were drawn: at least one image output per notebook
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, f"{path.name} drew no figure"
