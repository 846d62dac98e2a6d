"""The whole pipeline as a user runs it: real `dvc repro` in a temporary git repository on a tiny config,
real MLflow SQLite store. Checks DVC's cache behaviour stage by stage for edits of params and code that
reach training (the data edits: tests/test_repro_data_edits.py; experiments: tests/test_experiments.py,
apart so that the two workers of the suite run them side by side)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import (  # noqa: F401 (make_repo, tiny_params: still importable from here)
    EVERY_STAGE,
    ReproducedRepo,
    commit_all,
    copy_repo,
    dvc_env,
    edit_params,
    make_repo,
    ran,
    sh,
    tiny_params,
)

pytestmark = [pytest.mark.slow, pytest.mark.pipeline_runs(4)]  # real dvc repro / dvc exp run in a git repository

_env = dvc_env  # the names tests/search/ imported from here


@pytest.fixture(scope="module")
def workspace(reproduced_repo: ReproducedRepo, tmp_path_factory) -> Path:
    """A copy of the session's reproduced repository: every stage has run once, and is committed."""
    return copy_repo(reproduced_repo.root, tmp_path_factory.mktemp("ws") / "repo")


def test_repro_then_cache_behaviour(workspace, reproduced_repo):
    ws = workspace
    first = reproduced_repo.first_repro  # the first `dvc repro` of a fresh clone, committed after it
    assert ran(first) == EVERY_STAGE, first
    metrics = yaml.safe_load((ws / "outputs/evaluate/metrics.json").read_text())
    assert 0.0 <= metrics["dice"] <= 1.0
    commit_all(ws)

    assert ran(sh(ws, "dvc", "repro").stdout) == []  # nothing changed: nothing runs

    edit_params(ws, "# The one file", "# A comment-only edit: the one file")
    assert ran(sh(ws, "dvc", "repro").stdout) == []

    edit_params(ws, "  name: dice_bce ", "  name: dice     ")  # every check first, then only what reads the loss
    # preview re-runs after every training: it attaches the picture to the new MLflow run (run.json)
    assert ran(sh(ws, "dvc", "repro").stdout) == ["validate", "train", "preview", "evaluate", "export"]
    commit_all(ws)

    loss_code = ws / "pipeline/training/losses/focal.py"  # a loss module's code: the same two stages
    loss_code.write_text(loss_code.read_text() + "\n# an edit to the loss module\n")
    trained = (ws / "outputs/train/best.safetensors").read_bytes()
    stages = ran(sh(ws, "dvc", "repro").stdout)
    # export reads the trained weights alone: retrained bit-identically (as on CPU), DVC stops at evaluate
    changed = ["export"] if (ws / "outputs/train/best.safetensors").read_bytes() != trained else []
    assert stages == ["train", "preview", "evaluate", *changed]
    commit_all(ws)


def test_invalid_params_refused_before_running(workspace):
    ws = workspace
    edit_params(ws, "  name: AdamW", "  name: AdamWW")
    try:
        result = sh(ws, "dvc", "repro", "-f", "-s", "train", check=False)
        assert result.returncode != 0
        assert "optimizer.name" in result.stdout + result.stderr
        assert "did you mean 'AdamW'" in result.stdout + result.stderr
        assert "Traceback" not in result.stdout + result.stderr
    finally:
        edit_params(ws, "  name: AdamWW", "  name: AdamW")


def test_every_problem_stops_dvc_repro_before_any_stage_works(workspace):
    """Values only building the component finds wrong (a loss argument, a scheduler's), in two
    sections at once: the validate stage lists both and nothing after it runs."""
    ws = workspace
    before = sh(ws, "git", "status", "--porcelain").stdout
    edit_params(
        ws,
        "  params: {}                    # keyword arguments of the loss",
        "  params: {smooth: high}        # keyword arguments of the loss",
    )
    edit_params(ws, "  params: {}                    # its keyword arguments", "  params: {eta_min: low}       # its")
    try:
        result = sh(ws, "dvc", "repro", check=False)
        out = result.stdout + result.stderr
        assert result.returncode != 0 and ran(result.stdout) == ["validate"], out
        assert "loss.params.smooth" in out and "scheduler.params.eta_min" in out and "Traceback" not in out
    finally:
        edit_params(
            ws,
            "  params: {smooth: high}        # keyword arguments of the loss",
            "  params: {}                    # keyword arguments of the loss",
        )
        edit_params(
            ws, "  params: {eta_min: low}       # its", "  params: {}                    # its keyword arguments"
        )
    assert sh(ws, "git", "status", "--porcelain").stdout == before
