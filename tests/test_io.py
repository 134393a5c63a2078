"""icl.io: claims, the atomic run folder, JSON with NaN -> null, provenance, the precision in the config hash."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
from pathlib import Path

import jax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import icl
from icl.io import (Claim, atomic_write, config_hash, per_seed_claim, provenance, relative_claim, upper_bound_claim,
                    write_run)


def mode(path) -> int:
    return os.stat(path).st_mode & 0o777


def test_a_claim_with_a_non_finite_measurement_never_passes():
    assert not relative_claim("x", 1.0, float("nan"), 0.5).passed
    assert not upper_bound_claim("x", float("inf"), 1e300).passed
    assert not Claim("forced", 0.0, float("nan"), 1.0, True).passed  # even when built as passed
    assert relative_claim("x", 2.0, 2.01, 0.01, per_seed=[2.0, 2.02], se=0.001).seeds == {
        "mean": pytest.approx(2.01), "std": pytest.approx(0.01414, rel=1e-3), "per_seed": [2.0, 2.02]}


def test_write_run_turns_nan_and_inf_into_null_fails_their_claim_and_lists_them(tmp_path):
    claims = [relative_claim("finite", 1.0, 1.0, 0.1), relative_claim("nan", 1.0, float("nan"), 0.1)]
    runs = [{"loss": {"lsa": float("nan"), "gd": 0.5}, "curve": [1.0, math.inf]}]
    written = write_run(tmp_path / "run", {"experiment": "e", "config": {}, "claims": claims, "runs": runs})
    text = (tmp_path / "run" / "summary.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    summary = json.loads(text)
    assert summary == written
    assert summary["runs"][0]["loss"]["lsa"] is None and summary["runs"][0]["curve"] == [1.0, None]
    assert [c["passed"] for c in summary["claims"]] == [True, False] and summary["claims"][1]["measured"] is None
    assert summary["all_passed"] is False
    assert set(summary["nonfinite_values"]) >= {"runs[0].loss.lsa", "runs[0].curve[1]", "claims[1].measured"}


def test_write_run_is_one_atomic_folder_with_0644_files_and_replaces_an_older_run_whole(tmp_path):
    out = tmp_path / "results" / "exp-abc"
    old_umask = os.umask(0o077)  # files must be 0644 whatever the umask
    try:
        write_run(out, {"claims": [], "runs": []}, {"old.png": b"\x89PNG old"})
        written = write_run(out, {"claims": [relative_claim("c", 1, 1, 0.1)], "runs": []},
                            {"new.png": lambda: b"\x89PNG new", "broken.png": lambda: 1 / 0})
    finally:
        os.umask(old_umask)
    assert sorted(p.name for p in out.iterdir()) == ["new.png", "summary.json"]  # nothing of the old run is left
    assert written["figures"] == ["new.png"] and "ZeroDivisionError" in written["figure_errors"]["broken.png"]
    assert (out / "new.png").read_bytes()[:4] == b"\x89PNG"
    assert mode(out / "summary.json") == mode(out / "new.png") == 0o644
    assert sorted(p.name for p in out.parent.iterdir()) == ["exp-abc"]  # no temporary left beside it


def test_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    (tmp_path / f".exp.icl-tmp-{dead_pid}-abcd").mkdir()
    (tmp_path / f".exp.icl-tmp-{dead_pid}-abcd" / "fig.png").write_bytes(b"partial")
    (tmp_path / ".fig.png.x1y2.tmp").write_bytes(b"left by an older version")
    (tmp_path / f".other.icl-tmp-{os.getpid()}-ef01").mkdir()  # this process: alive
    atomic_write(tmp_path / "REPORT.md", "# report\n")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["REPORT.md", f".other.icl-tmp-{os.getpid()}-ef01"])
    assert mode(tmp_path / "REPORT.md") == 0o644


def test_the_precision_is_in_the_config_hash_and_in_the_provenance():
    config = {"d": 5, "n": 10}
    plain = config_hash(config)
    with jax.enable_x64(True):
        wide = config_hash(config)
        assert provenance()["precision"] == "x64"
    assert plain != wide and config_hash(config) == plain
    info = provenance()
    assert info["precision"] == ("x64" if jax.config.jax_enable_x64 else "float32")
    assert set(info["versions"]) == {"jax", "jaxlib", "flax", "optax", "numpy"}
    assert info["versions"]["jax"] == jax.__version__
    assert info["device_kind"] and "git_commit" in info


def test_public_names_are_exported():
    for name in ("Claim", "relative_claim", "upper_bound_claim", "lower_bound_claim", "write_run", "provenance"):
        assert getattr(icl, name) is getattr(icl.io, name)


def test_concurrent_writers_of_one_run_folder_never_fail_and_leave_one_complete_run(tmp_path):
    out, writers, count = tmp_path / "exp-abc", 4, 150
    errors, mismatches, stop = [], [], threading.Event()

    def write(k):
        for i in range(count):
            try:  # every writer's figures name it, so a mix of two runs shows
                write_run(out, {"claims": [], "runs": [], "writer": k, "i": i},
                          {"fig.png": f"{k}-{i}".encode(), f"writer{k}.png": b"\x89PNG"})
                atomic_write(tmp_path / "REPORT.md", f"# writer {k}, write {i}\n" * 50)
            except Exception as err:
                errors.append(f"writer {k}, write {i}: {type(err).__name__}: {err}")

    def read_in(folder_fd: int, name: str) -> bytes:
        with open(os.open(name, os.O_RDONLY, dir_fd=folder_fd), "rb") as handle:
            return handle.read()

    def read():  # both files from one folder (opened once), whatever is renamed meanwhile
        while not stop.is_set():
            try:
                fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:
                continue
            try:
                summary, fig = json.loads(read_in(fd, "summary.json")), read_in(fd, "fig.png")
            except FileNotFoundError:  # a replaced folder being deleted
                continue
            finally:
                os.close(fd)
            if fig != f"{summary['writer']}-{summary['i']}".encode():
                mismatches.append((summary["writer"], summary["i"], fig))

    threads = [threading.Thread(target=write, args=(k,)) for k in range(writers)]
    reader = threading.Thread(target=read)
    reader.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    reader.join()
    assert errors == [] and mismatches == []
    summary = json.loads((out / "summary.json").read_text())
    k = summary["writer"]
    assert summary["i"] == count - 1 and summary["figures"] == ["fig.png", f"writer{k}.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(["summary.json", "fig.png", f"writer{k}.png"])
    assert (out / "fig.png").read_bytes() == f"{k}-{count - 1}".encode()
    assert (tmp_path / "REPORT.md").read_text().startswith("# writer ") and len(
        set((tmp_path / "REPORT.md").read_text().splitlines())) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["REPORT.md", "exp-abc"]  # no temporary is left


def test_a_failed_rename_into_place_keeps_the_previous_run(tmp_path, monkeypatch):
    out = tmp_path / "exp"
    write_run(out, {"claims": [], "runs": [], "version": 1})
    real_rename, tries = os.rename, []

    def rename(src, dst):  # the first try meets the old run (moved aside); the second one fails
        if str(src).startswith(str(tmp_path / ".exp.icl-tmp-")) and Path(dst) == out:
            tries.append(src)
            if len(tries) == 2:
                raise PermissionError(13, "denied")
        return real_rename(src, dst)

    monkeypatch.setattr(icl.io.os, "rename", rename)
    with pytest.raises(PermissionError):
        write_run(out, {"claims": [], "runs": [], "version": 2})
    monkeypatch.undo()
    assert len(tries) == 3 and tries[0] == tries[1] != tries[2]  # the third: the old run put back
    assert json.loads((out / "summary.json").read_text())["version"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]


def _seed_passes(v, tol, theory, kind):
    return abs(v - theory) <= tol * abs(theory) if kind == "relative" else v <= tol if kind == "upper" else v >= tol


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=8),
       tol=st.floats(0.0, 2.0), theory=st.floats(-1e3, 1e3).filter(lambda t: abs(t) > 1e-3),
       kind=st.sampled_from(["relative", "upper", "lower"]))
def test_a_per_seed_claim_passes_exactly_when_every_seed_passes_and_shows_the_deciding_seed(values, tol, theory,
                                                                                              kind):
    # Catches the old rule (judging the mean of the seeds): [0.96, 1.04] around theory 1 at 3% passes on the mean.
    claim = per_seed_claim("q", values, tol, theory, kind=kind)
    assert claim.passed == all(_seed_passes(v, tol, theory, kind) for v in values)
    assert claim.measured in values and claim.passed == _seed_passes(claim.measured, tol, theory, kind)
    assert claim.seeds["per_seed"] == values


def test_a_per_seed_claim_names_a_systematic_offset_and_fails_on_a_nan_seed():
    assert not per_seed_claim("eta", [0.96, 1.04], 0.03, 1.0).passed  # the mean (1.0) would pass
    biased = per_seed_claim("eta", [1.021, 1.025, 1.019, 1.023], 0.03, 1.0)
    assert biased.passed and "systematic offset: all 4 seeds above theory" in biased.detail
    assert biased.seeds["systematic_offset"] == pytest.approx(0.022)
    assert "systematic" not in per_seed_claim("eta", [0.99, 1.01, 1.005], 0.03, 1.0).detail  # straddles theory
    nan = per_seed_claim("eta", [1.0, float("nan")], 0.03, 1.0)
    assert not nan.passed and math.isnan(nan.measured)
    with pytest.raises(ValueError, match="kind"):
        per_seed_claim("eta", [1.0], 0.03, 1.0, kind="mean")
    with pytest.raises(ValueError, match="theory"):
        per_seed_claim("eta", [1.0], 0.03)
