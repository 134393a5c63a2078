"""MkDocs hook: one page per experiment script (its docstring and its ``--help``), the benchmarks log and the
changelog, generated at build time from the files they live in, so the site never copies them by hand."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = ROOT / "experiments"


def _docstring(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text())) or ""


def _help(path: Path) -> str:
    out = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True, cwd=ROOT,
                         timeout=300, env={**os.environ, "COLUMNS": "100", "MPLBACKEND": "Agg"})
    if out.returncode != 0:
        raise RuntimeError(f"{path.name} --help failed: {out.stderr[-2000:]}")
    return out.stdout


def _markdown(text: str) -> str:
    """A docstring as Markdown: ``code`` to `code`, a literal block after ``::`` to a fenced block."""
    lines, out, block = text.splitlines(), [], False
    for line in lines:
        if block and line.strip() and not line.startswith(" "):
            out.append("```")
            block = False
        if line.rstrip().endswith("::") and not block:
            out.append(line.rstrip()[:-1] if not line.rstrip().endswith(" ::") else line.rstrip()[:-3])
            out.append("")
            out.append("```")
            block = True
            continue
        if not block and line.startswith("    python "):  # a usage line
            out += ["```bash", line.strip(), "```"]
            continue
        out.append(line[4:] if block and line.startswith("    ") else line)
    if block:
        out.append("```")
    text = re.sub(r":(?:func|class|meth|mod|attr|data|obj|exc):`~?([^`]+)`", r"`\1`", "\n".join(out))
    return re.sub(r"``([^`]+)``", r"`\1`", text)


def experiment_page(path: Path) -> str:
    doc = _docstring(path)
    title, _, body = doc.partition("\n")
    body = _markdown(body.strip("\n"))
    return (f"# `{path.name}`\n\n**{title.strip()}**\n\n{body}\n\n## Flags\n\n"
            f"```text\n{_help(path)}```\n\nSource: `experiments/{path.name}`.\n")


def on_config(config):
    """The Experiments and Notebooks sections of the navigation list every script and notebook there is."""
    scripts = sorted(p.stem for p in EXPERIMENTS.glob("*.py"))
    notebooks = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    for i, entry in enumerate(config["nav"]):
        if isinstance(entry, dict) and "Experiments" in entry:
            config["nav"][i] = {"Experiments": [{"Overview": "experiments/index.md"}]
                                + [{s: f"experiments/{s}.md"} for s in scripts]}
        if isinstance(entry, dict) and "Notebooks" in entry:
            config["nav"][i] = {"Notebooks": [{n[:-6]: f"notebooks/{n}"} for n in notebooks]}
    return config


def on_post_build(config):
    """Every public name of the modules the API pages render (their ``::: module`` lines) has a rendered entry (an
    anchor) in the API reference."""
    import importlib

    ids = set()
    for page in Path(config["site_dir"], "api").rglob("*.html"):
        ids |= set(re.findall(r'id="(icl\.[A-Za-z0-9_.]+)"', page.read_text()))
    import types

    rendered = [m for page in sorted((ROOT / "docs" / "api").glob("*.md"))
                for m in re.findall(r"^::: (\S+)$", page.read_text(), re.MULTILINE)]
    missing = []
    for name in rendered:
        try:
            module = importlib.import_module(name)
        except ImportError:  # a single object rendered on its own (e.g. icl.predictors.lasso.lasso)
            continue
        if not isinstance(module, types.ModuleType):
            continue
        for member in getattr(module, "__all__", []):
            canonical = getattr(getattr(module, member), "__module__", None)
            if f"{name}.{member}" not in ids and f"{canonical}.{member}" not in ids:
                missing.append(f"{name}.{member}")
    if missing:
        raise RuntimeError(f"public names without a rendered docstring in the API reference: {missing}")


def on_files(files, config):
    for path in sorted(EXPERIMENTS.glob("*.py")):
        files.append(File.generated(config, f"experiments/{path.stem}.md", content=experiment_page(path)))
    bench = (ROOT / "benchmarks" / "README.md").read_text()
    bench = re.sub(r"\[([^\]]+)\]\((?!https?:)([^)]+)\)", r"\1", bench)  # repository files, not site pages
    files.append(File.generated(config, "benchmarks.md", content=bench))
    files.append(File.generated(config, "changelog.md", content=(ROOT / "CHANGELOG.md").read_text()))
    return files
