"""The experiment scripts' command lines: every flag checked before any work, no unused flags, --quick, the
runner's honest endings (NaN -> null and a failed claim, divergence -> a failed claim, exit codes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import icl
from icl.experiment import Experiment, Outcome, run_experiment, script_main
from icl.io import relative_claim
from tests.helpers import load_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["one_step_gd", "preconditioned_gd", "nonlinear_targets", "von_oswald", "multilayer_gd", "gradient_flow",
           "asymptotics"]
TRAINING = [s for s in SCRIPTS if s not in ("gradient_flow", "asymptotics")]
_MODULES: dict = {}


def script(name: str):
    """The script as a module (loaded once per session; loading runs no experiment)."""
    if name not in _MODULES:
        _MODULES[name] = load_script(ROOT / "experiments" / f"{name}.py")
    return _MODULES[name]


def parse_error(name: str, argv: list[str], capsys) -> str:
    """Parse ``argv`` for a script; assert argparse exit code 2 and return the message."""
    module = script(name)
    with pytest.raises(SystemExit) as info:
        module.SPEC.parse(argv) if name != "reproduce_all" else module.parse_args(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


BAD_FLAGS = [
    (["--eval-prompts", "0"], "eval-prompts"),
    (["--seeds", "0"], "seeds"),
    (["--seed", "-1"], "seed"),
    (["--noise", "nan"], "noise"),
    (["--noise", "-0.5"], "noise"),
    (["--init-scale", "inf"], "init-scale"),
]


@pytest.mark.parametrize("name", SCRIPTS)
@pytest.mark.parametrize("argv, flag", BAD_FLAGS)
def test_bad_shared_flags_exit_2_before_any_work_and_create_no_folder(name, argv, flag, tmp_path, capsys):
    out = tmp_path / "out"
    message = parse_error(name, [*argv, "--out", str(out)], capsys)
    assert flag in message
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", TRAINING)
@pytest.mark.parametrize("argv, flag", [(["--steps", "0"], "steps"), (["--lr", "nan"], "lr"), (["--lr", "0"], "lr"),
                                        (["--batch", "-3"], "batch"), (["--checkpoint-every", "-1"], "checkpoint"),
                                        (["--resume"], "resume")])
def test_bad_training_flags_exit_2(name, argv, flag, tmp_path, capsys):
    assert flag in parse_error(name, [*argv, "--out", str(tmp_path / "out")], capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", SCRIPTS)
def test_an_unwritable_out_exits_2_before_any_work(name, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert "--out" in parse_error(name, ["--out", str(blocker)], capsys)
    assert "--out" in parse_error(name, ["--out", str(blocker / "below")], capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


@pytest.mark.parametrize("name, flag", [("gradient_flow", "--lr"), ("gradient_flow", "--steps"),
                                        ("gradient_flow", "--batch"), ("gradient_flow", "--d"),
                                        ("gradient_flow", "--checkpoint-every"), ("preconditioned_gd", "--d"),
                                        ("multilayer_gd", "--d"), ("multilayer_gd", "--init-diag"),
                                        ("nonlinear_targets", "--steps-per-family")])
def test_flags_a_script_does_not_use_do_not_exist(name, flag, capsys):
    assert "unrecognized arguments" in parse_error(name, [flag, "1"], capsys)


def test_preconditioned_gd_runs_every_noise_level_it_is_given(tmp_path):
    args = script("preconditioned_gd").SPEC.parse(["--noise", "0.1", "0.5", "--out", str(tmp_path / "o")])
    assert args.noise == [0.1, 0.5] and args.config["noise"] == [0.1, 0.5] and args.d == 3
    grid = {"w_prior": args.w_prior, "noise": args.noise}
    from icl.sweeps import grid_points

    assert len(grid_points(grid)) == 4  # both priors x both noise levels are trained


def test_quick_sets_new_defaults_that_explicit_flags_override(tmp_path):
    spec = script("one_step_gd").SPEC
    assert spec.parse(["--quick"]).seeds == spec.quick["seeds"]
    assert spec.parse(["--quick", "--seeds", "3"]).seeds == 3
    assert spec.parse([]).seeds == spec.flags["seeds"]
    fast = script("von_oswald").SPEC.parse(["--fast"])
    assert (fast.steps, fast.schedule) == (500, "cosine")


ALL_SCRIPTS = sorted(p.stem for p in (ROOT / "experiments").glob("*.py") if p.stem != "reproduce_all")


def write_config(path: Path, name: str, config: dict) -> str:
    path.write_text(json.dumps({"experiment": name, "config": json.loads(json.dumps(config))}))
    return str(path)


@pytest.mark.parametrize("name", ALL_SCRIPTS)
@pytest.mark.parametrize("preset", [[], ["--quick"]])
def test_config_file_reproduces_every_setting_of_every_script(name, preset, tmp_path):
    spec = script(name).SPEC
    first = spec.parse([*preset, "--out", str(tmp_path / "a")])
    again = spec.parse(["--config", write_config(tmp_path / "c.json", name, first.config), "--out", str(tmp_path)])
    assert again.config == first.config and again.out_dir == tmp_path


def test_flags_beside_config_override_it_and_the_rest_comes_from_the_file(tmp_path):
    spec = script("preconditioned_gd").SPEC
    first = spec.parse(["--quick", "--noise", "0.1", "0.5", "--x-cov-eigs", "1", "0.5"])
    path = write_config(tmp_path / "c.json", "preconditioned_gd", first.config)
    again = spec.parse(["--config", path, "--seed", "9", "--x-cov-eigs", "1", "0.5", "0.25"])
    assert again.seed == 9 and again.noise == [0.1, 0.5] and again.steps == first.steps
    assert again.d == 3  # a derived setting follows the overriding flags, not the file
    summary = tmp_path / "summary.json"  # a run's summary.json is read the same way (its "config" entry)
    summary.write_text(json.dumps({"experiment": "preconditioned_gd", "config": first.config, "claims": []}))
    assert spec.parse(["--config", str(summary)]).config == first.config


@pytest.mark.parametrize("content, words", [
    ({"experiment": "von_oswald", "config": {}}, "von_oswald"),  # another experiment's configuration
    ({"experiment": "one_step_gd", "config": {"stepz": 3}}, "stepz"),  # not a setting of this script
    ({"experiment": "one_step_gd", "config": {"steps": 0}}, "steps"),  # out of range: argparse's own check
    ({"experiment": "one_step_gd", "config": {"out": "x"}}, "out"),  # not a setting
    ("not json", "JSON"),
])
def test_a_config_file_that_is_not_this_experiments_exits_2_naming_the_problem(content, words, tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    message = parse_error("one_step_gd", ["--config", str(path), "--out", str(tmp_path / "o")], capsys)
    assert words in message
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_a_run_folder_config_reruns_the_run_bit_for_bit(tmp_path):
    spec = script("one_step_gd").SPEC
    flags = ["--d", "2", "--n", "6", "--steps", "40", "--batch", "64", "--seeds", "1", "--eval-prompts", "512",
             "--noise", "0.5", "--compilation-cache", "off"]
    first = run_experiment(spec, [*flags, "--out", str(tmp_path / "a")])
    stored = json.loads((tmp_path / "a" / "config.json").read_text())
    assert stored == {"experiment": "one_step_gd", "config": first["summary"]["config"]}
    again = run_experiment(spec, ["--config", str(tmp_path / "a" / "config.json"), "--out", str(tmp_path / "b")])
    assert again["summary"]["claims"] == first["summary"]["claims"]
    untimed = [[{k: v for k, v in run.items() if k != "train_seconds"} for run in r["summary"]["runs"]]
               for r in (first, again)]
    assert untimed[0] == untimed[1]  # every number but the wall time


def test_the_default_folder_depends_on_the_config_and_the_precision():
    import jax

    spec = script("one_step_gd").SPEC
    a, b = spec.parse([]).out_dir, spec.parse(["--d", "4"]).out_dir
    with jax.enable_x64(True):
        c = spec.parse([]).out_dir
    assert a.parent == b.parent == Path("results") and len({a, b, c}) == 3


def test_reproduce_all_rejects_an_unknown_experiment_naming_the_valid_ones(capsys):
    message = parse_error("reproduce_all", ["--only", "one_step_gdd"], capsys)
    assert "one_step_gdd" in message and "one_step_gd" in message and "gradient_flow" in message


def test_a_partial_reproduce_all_never_replaces_report_md_and_embeds_only_listed_figures(tmp_path, monkeypatch):
    module = script("reproduce_all")
    (tmp_path / "REPORT.md").write_text("the committed report\n")

    class Fake:
        @staticmethod
        def main(flags):
            out = Path(flags[flags.index("--out") + 1])
            out.mkdir(parents=True)
            (out / "stale.png").write_bytes(b"\x89PNG stale")  # an old figure the run did not write
            (out / "fresh.png").write_bytes(b"\x89PNG")
            return {"claims": [relative_claim("c", 1.0, 1.0, 0.1)], "out_dir": out,
                    "summary": {"figures": ["fresh.png"]}}

    monkeypatch.setattr(module, "load", lambda name: Fake)
    module.main(["--only", "one_step_gd", "--out", str(tmp_path)])
    assert (tmp_path / "REPORT.md").read_text() == "the committed report\n"
    partial = (tmp_path / "REPORT-partial.md").read_text()
    assert "1 of 1 claims pass" in partial and "fresh.png" in partial and "stale.png" not in partial


# ---------------------------------------------------------------------------------------------------------
# The runner's endings, with toy experiments (no training)


def toy(run, name="toy", trains=False):
    return Experiment(name, "a toy experiment", {"seed": 0}, run, trains=trains)


def test_nan_results_are_written_as_null_with_a_failed_claim_and_exit_code_1(tmp_path, capsys):
    import matplotlib.pyplot as plt

    def run(args):
        fig = plt.figure()
        plt.plot([0, 1], [np.nan, 1.0])
        return Outcome([relative_claim("loss = 1", 1.0, float("nan"), 0.1)], [{"loss": np.array([np.nan, np.inf])}],
                       {"toy.png": fig})

    out = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        script_main(toy(run), ["--out", str(out), "--compilation-cache", "off"])
    assert info.value.code == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["claims"][0]["passed"] is False and summary["claims"][0]["measured"] is None
    assert summary["runs"][0]["loss"] == [None, None] and summary["all_passed"] is False
    assert summary["figures"] == ["toy.png"] and (out / "toy.png").exists()


def test_a_diverged_training_run_becomes_a_failed_claim_not_a_traceback(tmp_path):
    def run(args):
        raise icl.TrainingDivergedError("training diverged at step 3 (seed index 0)")

    result = run_experiment(toy(run), ["--out", str(tmp_path / "run"), "--compilation-cache", "off"])
    assert result["all_passed"] is False
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert "step 3" in summary["claims"][0]["detail"] and summary["figures"] == []


def test_a_passing_run_exits_0_and_records_provenance_and_config(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        script_main(toy(lambda args: Outcome([relative_claim("ok", 1.0, 1.0, 0.1)], [])),
                    ["--seed", "7", "--out", str(out), "--compilation-cache", "off"])
    assert info.value.code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"] == {"seed": 7} and summary["experiment"] == "toy"
    assert summary["provenance"]["precision"] in ("x64", "float32")


def test_the_compilation_cache_honours_the_flag_and_the_environment(tmp_path, monkeypatch):
    import jax

    from icl.experiment import enable_compilation_cache

    before = jax.config.jax_compilation_cache_dir
    try:
        monkeypatch.setenv("ICL_COMPILATION_CACHE", str(tmp_path / "env"))
        assert enable_compilation_cache() == str(tmp_path / "env") and (tmp_path / "env").is_dir()
        assert enable_compilation_cache(str(tmp_path / "flag")) == str(tmp_path / "flag")
        monkeypatch.setenv("ICL_COMPILATION_CACHE", "off")
        assert enable_compilation_cache() is None
        monkeypatch.delenv("ICL_COMPILATION_CACHE")
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert enable_compilation_cache() == str(tmp_path / "xdg" / "icl" / "jax")
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


def test_convergence_claim_fails_for_a_loss_still_falling_and_passes_for_a_flat_one():
    from types import SimpleNamespace

    from icl.experiment import convergence_claim

    rng = np.random.default_rng(0)
    steps = np.arange(400)
    falling = 2.0 * np.exp(-steps / 300) + 0.002 * rng.standard_normal((2, 400))  # cut off mid-descent
    flat = 1.0 + 0.002 * rng.standard_normal((2, 400))
    (claim, seeds), report = convergence_claim("short", SimpleNamespace(losses=falling, final_losses=None))
    assert claim.passed is False and report["still_falling"] and "still falling" in claim.detail
    assert claim.measured == report["excess_drop"] > claim.tolerance == 0  # the deciding number is shown
    (claim, seeds), report = convergence_claim("long", SimpleNamespace(losses=flat, final_losses=None))
    assert claim.passed is True and seeds.passed is True and report["converged"]
    assert claim.measured <= claim.tolerance and seeds.measured <= seeds.tolerance
