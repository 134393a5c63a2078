"""Execute every notebook in notebooks/ top to bottom (quick settings) so that none of them can rot.

Each notebook runs in a fresh Jupyter kernel (nbclient, the ``python3`` kernel of the interpreter running the
tests) with ``ICL_NOTEBOOK_QUICK=1`` in the kernel's environment, which shrinks training steps and evaluation
prompts, and with notebooks/ as the working directory. A cell that raises fails the test and the message names
the cell. The stored notebooks are not modified. Slow: the four take a few minutes together on a 2-core CPU.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 300  # per cell; quick mode needs well under a minute for the slowest cell


def test_the_four_notebooks_exist():
    names = [p.name for p in NOTEBOOKS]
    for expected in ("01_quickstart.ipynb", "02_one_step_gd_theorems.ipynb", "03_extend_the_sandbox.ipynb",
                     "04_depth_and_dynamics.ipynb"):
        assert expected in names, f"missing notebooks/{expected}; found {names}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_stored_notebook_is_small_and_has_outputs(path):
    assert path.stat().st_size < 1_000_000, f"{path.name} is {path.stat().st_size} bytes (limit 1 MB)"
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert nb.cells[0].cell_type == "markdown" and "arXiv" in nb.cells[0].source, "intro must name its paper"
    assert any('os.environ.get("ICL_NOTEBOOK_QUICK") == "1"' in c.source for c in code), "no QUICK parameter cell"
    assert all(c.get("outputs") is not None for c in code)
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
               for c in code for o in c.outputs), f"{path.name} is stored without figures"
    errors = [o for c in code for o in c.outputs if o.get("output_type") == "error"]
    assert not errors, f"{path.name} is stored with an error output: {errors[0].get('ename')}"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes_in_quick_mode(path, monkeypatch):
    monkeypatch.setenv("ICL_NOTEBOOK_QUICK", "1")  # inherited by the kernel process
    monkeypatch.delenv("MPLBACKEND", raising=False)  # let the kernel pick its inline backend
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    start = time.perf_counter()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as err:
        pytest.fail(f"{path.name} failed in quick mode:\n{err}")
    seconds = time.perf_counter() - start
    print(f"{path.name}: executed in quick mode in {seconds:.1f}s")
    assert any(o.get("output_type") == "display_data" for c in nb.cells if c.cell_type == "code" for o in c.outputs)
