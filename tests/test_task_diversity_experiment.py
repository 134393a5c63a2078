"""experiments/task_diversity.py (Raventós et al. 2023): flags are checked before any work (exit 2)."""

from __future__ import annotations

import importlib.util

import pytest

SCRIPT = "experiments/task_diversity.py"


def load_script(repo_root):
    spec = importlib.util.spec_from_file_location("task_diversity_script", repo_root / SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The end-to-end test of this script's claims at --quick is not here yet: its claims do not pass at the CPU
# budgets (issue 12 stays open; see the README's experiments table).


@pytest.mark.parametrize("flags, word", [(["--noise", "0"], "noise"), (["--d", "8", "--n", "4"], "n")])
def test_bad_flags_exit_2_before_any_work(REPO_ROOT, flags, word, capsys):
    module = load_script(REPO_ROOT)
    with pytest.raises(SystemExit) as info:
        module.SPEC.parse(flags)
    assert info.value.code == 2 and word in capsys.readouterr().err
