"""Shared fixtures for the icl test suite."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def REPO_ROOT() -> Path:  # noqa: N802 - the name the brief asks for
    """The repository root (the folder holding pyproject.toml and experiments/)."""
    return ROOT
