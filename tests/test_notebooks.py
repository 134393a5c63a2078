"""The notebooks in notebooks/: stored with real outputs, on the current API, and executable top to bottom.

Every ``notebooks/*.ipynb`` is checked (01-04 must exist; later ones are picked up by the glob). Fast tests
read the stored files: small, with figures and no error output, every code cell executed, and no deprecated
``icl`` name in the code (static check against ``icl``'s deprecation tables and the old shim modules) nor a
``DeprecationWarning`` in the outputs. The slow test executes each notebook in a fresh Jupyter kernel
(nbclient, the ``python3`` kernel of the interpreter running the tests) with ``ICL_NOTEBOOK_QUICK=1`` in the
kernel's environment, which shrinks training steps and evaluation prompts, with notebooks/ as the working
directory, and with every ``DeprecationWarning`` raised by a deprecated ``icl`` name turned into an error. A
cell that raises fails the test and the message names the cell. The stored notebooks are not modified.
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
# Old modules kept as deprecation shims for one release (every attribute access warns).
SHIM_MODULES = {"algorithms", "analysis", "multistep", "nonlinear", "population", "prefix", "tracking", "uniform"}
# Turns a deprecated icl name into an error inside the kernel (the messages read "icl.X is deprecated; use ...",
# "icl.uniform.X is deprecated; ..." or "TargetMoments.eta is deprecated; ...").
DEPRECATION_GUARD = ('import warnings\nwarnings.filterwarnings("error", category=DeprecationWarning, '
                     'message=r"(icl|TargetMoments)\\.\\S* is deprecated")')


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def _python(source: str) -> str:
    """A code cell's source without IPython magics and shell escapes (so that ``ast`` can parse it)."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def deprecated_uses(source: str, deprecated: set[str]) -> list[str]:
    """Deprecated ``icl`` names that ``source`` uses: ``icl.old_name``, a shim module, or imports from one."""
    found = []
    for node in ast.walk(ast.parse(_python(source))):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "icl":
            if node.attr in deprecated or node.attr in SHIM_MODULES:
                found.append(f"icl.{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "icl":
            parts = node.module.split(".")
            if len(parts) > 1 and parts[1] in SHIM_MODULES:
                found.append(f"from {node.module} import ...")
            elif node.module == "icl":
                found += [f"from icl import {a.name}" for a in node.names
                          if a.name in deprecated or a.name in SHIM_MODULES]
        elif isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names
                      if a.name.split(".")[0] == "icl" and len(a.name.split(".")) > 1
                      and a.name.split(".")[1] in SHIM_MODULES]
    return found


def test_notebooks_01_to_04_exist_and_later_ones_are_found():
    names = [p.name for p in NOTEBOOKS]
    for expected in REQUIRED:
        assert expected in names, f"missing notebooks/{expected}; found {names}"
    assert all(p.name[:2].isdigit() for p in NOTEBOOKS), f"notebooks should be numbered NN_name.ipynb: {names}"


def test_deprecated_use_detector_flags_old_names_and_shim_modules():
    old = {"isotropic_optimal_step_size"}
    assert deprecated_uses("import icl\nicl.isotropic_optimal_step_size(5, 10, 0.5)", old) == [
        "icl.isotropic_optimal_step_size"]
    assert deprecated_uses("from icl import multistep, tracking\n%matplotlib inline", old) == [
        "from icl import multistep", "from icl import tracking"]
    assert deprecated_uses("from icl.uniform import iid_optimal_step_size", old) == ["from icl.uniform import ..."]
    assert deprecated_uses("import icl.nonlinear", old) == ["import icl.nonlinear"]
    assert deprecated_uses("icl.optimal_step_size(task, 10)\nfrom icl.plotting import gamma_heatmap", old) == []


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
def test_notebook_code_uses_no_deprecated_icl_name(path):
    import icl

    deprecated = set(icl._DEPRECATED)
    nb = nbformat.read(path, as_version=4)
    uses = {i: deprecated_uses(c.source, deprecated) for i, c in enumerate(nb.cells) if c.cell_type == "code"}
    uses = {i: u for i, u in uses.items() if u}
    assert not uses, f"{path.name} uses deprecated names (cell index: names): {uses}"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes_in_quick_mode_without_deprecation_warnings(path, monkeypatch):
    monkeypatch.setenv("ICL_NOTEBOOK_QUICK", "1")  # inherited by the kernel process
    monkeypatch.delenv("MPLBACKEND", raising=False)  # let the kernel pick its inline backend
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(DEPRECATION_GUARD))  # in this in-memory copy only
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    start = time.perf_counter()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as err:
        pytest.fail(f"{path.name} failed in quick mode (a deprecated icl name raises here):\n{err}")
    seconds = time.perf_counter() - start
    print(f"{path.name}: executed in quick mode in {seconds:.1f}s")
    code = _code_cells(nb)
    assert any(o.get("output_type") == "display_data" for c in code for o in c.outputs)
    warned = [o.get("text", "") for c in code for o in c.outputs
              if o.get("output_type") == "stream" and "DeprecationWarning" in o.get("text", "")]
    assert not warned, f"{path.name} printed a DeprecationWarning: {warned[0][:300]}"
