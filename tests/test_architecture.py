"""The shape of the package: modules use each other's public names only, import no cycles, and the closed forms
sit below training and evaluation. Static checks of the source (``ast``), so they hold for imports inside
functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "icl"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """``(module, names, line)`` of every ``icl`` import in ``path`` (``names`` empty for ``import icl.x``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "icl":
            found.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "icl"]
    return found


def private_imports(source_module: str, path: Path) -> list[str]:
    bad = []
    for module, names, line in imports(path):
        if any(part.startswith("_") for part in module.split(".")):
            bad.append(f"{source_module}:{line} imports the private module {module}")
        for name in names:
            if name.startswith("_") and not name.startswith("__"):
                bad.append(f"{source_module}:{line} imports the private name {module}.{name}")
    return bad


def edges(source_module: str, path: Path) -> set[str]:
    """The ``icl`` modules ``source_module`` imports (a ``from pkg import sub`` of a submodule is an edge to it)."""
    out = set()
    for module, names, _ in imports(path):
        subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
        out.update(subs or [module])
        if len(subs) < len(names):
            out.add(module)
    out.discard(source_module)
    return {m for m in out if m in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def package_graph() -> dict[str, set[str]]:
    # the root package imports every module to export its names; an edge into ``icl`` itself is an edge to all
    graph = {m: edges(m, p) for m, p in MODULES.items() if m != "icl"}
    for m, targets in graph.items():
        if "icl" in targets:
            raise AssertionError(f"{m} imports the root package icl (import the module that defines the name)")
    return graph


def test_no_module_imports_a_private_name_or_a_private_module():
    bad = [b for m, p in MODULES.items() for b in private_imports(m, p)]
    assert not bad, "\n".join(bad)


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(package_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("lower, upper", [("icl.theory", "icl.training"), ("icl.theory", "icl.evaluate"),
                                          ("icl.theory", "icl.models"), ("icl.tasks", "icl.theory"),
                                          ("icl.predictors", "icl.training"), ("icl.models", "icl.training")])
def test_lower_layers_import_nothing_from_upper_ones(lower, upper):
    graph = package_graph()
    bad = [f"{m} -> {t}" for m, ts in graph.items() if m.startswith(lower) for t in ts if t.startswith(upper)]
    assert not bad, bad


def test_the_checks_catch_what_they_are_for(tmp_path):
    """The detectors themselves: a private import, a private module and a cycle are each found."""
    f = tmp_path / "a.py"
    f.write_text("from icl.evaluate import _split\nimport icl._secret\ndef g():\n    from icl.models import _x\n")
    found = private_imports("icl.fake", f)
    assert len(found) == 3 and "icl.evaluate._split" in found[0] and "icl._secret" in found[1]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_icl_lists_its_public_names_explicitly_and_each_resolves():
    import icl

    source = (PACKAGE / "__init__.py").read_text()
    assert "importlib.import_module" not in source, "icl.__all__ must be an explicit list, not built by a loop"
    assert len(icl.__all__) == len(set(icl.__all__)), "duplicate names in icl.__all__"
    missing = [n for n in icl.__all__ if not hasattr(icl, n)]
    assert not missing, missing
    assert not [n for n in icl.__all__ if n.startswith("_")]


def test_version_is_single_sourced_from_the_package_metadata():
    import tomllib

    import icl

    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]
    assert icl.__version__ == project["version"]
    assert project["version"] not in (PACKAGE / "__init__.py").read_text()


def test_no_source_file_cites_an_issue_number():
    import re

    pattern = re.compile(r"\bissue[\s_-]*#?\d+", re.IGNORECASE)
    roots = [PACKAGE, PACKAGE.parent / "experiments", PACKAGE.parent / "benchmarks", PACKAGE.parent / "docs",
             PACKAGE.parent / "tests"]
    bad = [f"{p}:{i + 1}" for root in roots for p in sorted(root.rglob("*")) if p.suffix in (".py", ".md")
           and p.name != "test_architecture.py"
           for i, line in enumerate(p.read_text().splitlines()) if pattern.search(line)]
    assert not bad, bad
