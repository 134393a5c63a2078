"""The notebooks in notebooks/: stored with real outputs, on the current API, and executable top to bottom.

Every ``notebooks/*.ipynb`` is checked (01-04 must exist; later ones are picked up by the glob). Fast tests
read the stored files: small, with figures and no error output, every code cell executed, only names that
``icl`` exports in the code, and no ``DeprecationWarning`` in the outputs. The slow test executes each notebook in a fresh Jupyter kernel
(nbclient, the ``python3`` kernel of the interpreter running the tests) with ``ICL_NOTEBOOK_QUICK=1`` in the
kernel's environment, which shrinks training steps and evaluation prompts, with notebooks/ as the working
directory. A cell that raises fails the test and the message names the cell. The stored notebooks are not modified.
"""

from __future__ import annotations

import ast
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
REQUIRED = ("01_quickstart.ipynb", "02_one_step_gd_theorems.ipynb", "03_extend_the_sandbox.ipynb",
            "04_depth_and_dynamics.ipynb")
CELL_TIMEOUT_S = 300  # per cell; quick mode needs well under a minute for the slowest cell


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def _python(source: str) -> str:
    """A code cell's source without IPython magics and shell escapes (so that ``ast`` can parse it)."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def missing_icl_names(source: str, public: set[str]) -> list[str]:
    """``icl.X`` attributes and ``from icl import X`` names in ``source`` that ``icl`` does not export."""
    found = []
    for node in ast.walk(ast.parse(_python(source))):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "icl":
            if node.attr not in public:
                found.append(f"icl.{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module == "icl":
            found += [f"from icl import {a.name}" for a in node.names if a.name not in public]
    return found


def test_notebooks_01_to_04_exist_and_later_ones_are_found():
    names = [p.name for p in NOTEBOOKS]
    for expected in REQUIRED:
        assert expected in names, f"missing notebooks/{expected}; found {names}"
    assert all(p.name[:2].isdigit() for p in NOTEBOOKS), f"notebooks should be numbered NN_name.ipynb: {names}"


def test_missing_name_detector_flags_unknown_icl_names_only():
    public = {"optimal_step_size", "plotting"}
    assert missing_icl_names("import icl\nicl.isotropic_optimal_step_size(5, 10, 0.5)", public) == [
        "icl.isotropic_optimal_step_size"]
    assert missing_icl_names("from icl import multistep\n%matplotlib inline", public) == ["from icl import multistep"]
    assert missing_icl_names("icl.optimal_step_size(task, 10)\nfrom icl.plotting import gamma_heatmap", public) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_stored_notebook_is_small_and_has_outputs(path):
    assert path.stat().st_size < 1_000_000, f"{path.name} is {path.stat().st_size} bytes (limit 1 MB)"
    nb = nbformat.read(path, as_version=4)
    code = _code_cells(nb)
    assert nb.cells[0].cell_type == "markdown" and "arXiv" in nb.cells[0].source, "intro must name its paper"
    assert any('os.environ.get("ICL_NOTEBOOK_QUICK") == "1"' in c.source for c in code), "no QUICK parameter cell"
    unexecuted = [i for i, c in enumerate(code) if c.get("execution_count") is None]
    assert not unexecuted, f"{path.name} is stored with unexecuted code cells (code cells {unexecuted})"
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
               for c in code for o in c.outputs), f"{path.name} is stored without figures"
    errors = [o for c in code for o in c.outputs if o.get("output_type") == "error"]
    assert not errors, f"{path.name} is stored with an error output: {errors[0].get('ename')}"
    warned = [o.get("text", "") for c in code for o in c.outputs
              if o.get("output_type") == "stream" and "DeprecationWarning" in o.get("text", "")]
    assert not warned, f"{path.name} is stored with a DeprecationWarning in its output: {warned[0][:300]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_code_uses_only_names_icl_exports(path):
    import icl

    public = set(icl.__all__) | {"plotting", "experiment", "theory", "models", "tasks", "predictors", "evaluate"}
    nb = nbformat.read(path, as_version=4)
    uses = {i: missing_icl_names(c.source, public) for i, c in enumerate(nb.cells) if c.cell_type == "code"}
    uses = {i: u for i, u in uses.items() if u}
    assert not uses, f"{path.name} uses names icl does not export (cell index: names): {uses}"


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
    code = _code_cells(nb)
    assert any(o.get("output_type") == "display_data" for c in code for o in c.outputs)
    warned = [o.get("text", "") for c in code for o in c.outputs
              if o.get("output_type") == "stream" and "DeprecationWarning" in o.get("text", "")]
    assert not warned, f"{path.name} printed a DeprecationWarning: {warned[0][:300]}"
