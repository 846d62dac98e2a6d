"""The tracking tests' fixtures: no tracking setting leaks in from outside, one migrated SQLite store
for the session, and throw-away git repositories."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

OUTSIDE_ENV = ("MLFLOW_TRACKING_URI", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "MLFLOW_ALLOW_FILE_STORE")


@pytest.fixture(autouse=True)
def _no_outside_tracking_env(monkeypatch):
    for name in OUTSIDE_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> Path:
    """A repo root with a migrated sqlite store (creating one costs seconds, so tests share it)."""
    from pipeline.tracking import run as tracking

    root = tmp_path_factory.mktemp("repo")
    with pytest.MonkeyPatch.context() as patch:
        for name in OUTSIDE_ENV:
            patch.delenv(name, raising=False)
        tracking.start_run(
            {"enabled": True, "uri": "sqlite:///mlflow.db", "experiment": "tests", "run_name": None}, repo_root=root
        ).end()
    return root


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def git_repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q")
    git(path, "config", "user.email", "t@example.com")
    git(path, "config", "user.name", "t")
    return path
