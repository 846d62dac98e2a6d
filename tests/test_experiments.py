"""DVC experiments as a user runs them, in a copy of the session's reproduced repository: `dvc exp run`
records to the default MLflow store, and the README's queue-a-grid workflow keeps git clean."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.conftest import commit_all, dvc_env, ran, sh

pytestmark = [pytest.mark.slow, pytest.mark.pipeline_runs(3)]  # real dvc exp run in a git repository


def test_exp_run_logs_to_the_default_store(clone):
    ws = clone
    assert not (ws / "mlflow.db").exists()  # a clone has no store yet: the experiment's train stage makes it
    result = sh(ws, "dvc", "exp", "run", "-S", "loss.name=focal", "-S", "train.epochs=3")
    assert "train" in ran(result.stdout)
    shown = sh(ws, "dvc", "exp", "show", "--json").stdout
    assert "focal" in shown
    db = ws / "mlflow.db"
    assert db.exists()
    with sqlite3.connect(db) as conn:
        values = {v for (v,) in conn.execute("select value from params where key = 'loss.name'")}
    assert "focal" in values


def _git_blobs_over(ws: Path, limit: int) -> list[str]:
    """Every file in the git history of ``ws`` larger than ``limit`` bytes, outside what the project
    ships (its source-task weights): what `dvc repro`, `git add -A` and experiments put in git."""
    objects = sh(ws, "git", "rev-list", "--objects", "--all").stdout.splitlines()
    paths = dict(line.split(" ", 1) for line in objects if " " in line)
    sizes = subprocess.run(
        ["git", "cat-file", "--batch-check=%(objectname) %(objecttype) %(objectsize)"],
        cwd=ws,
        env=dvc_env(),
        input="\n".join(paths),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    big = []
    for line in sizes.splitlines():
        sha, kind, size = line.split()
        if kind == "blob" and int(size) > limit and not paths[sha].startswith("weights/"):
            big.append(f"{paths[sha]} ({int(size):,} bytes)")
    return big


def test_the_experiment_workflow_keeps_git_clean(clone):
    """README's workflow: commit the run, queue a learning-rate grid, run it, compare. Git holds no
    output over 1 MB (the checkpoint and per-sample CSVs are DVC's), nothing is left untracked, and
    queued experiments leave the workspace as committed."""
    ws = clone
    sh(ws, "dvc", "repro")
    commit_all(ws)
    assert sh(ws, "git", "status", "--porcelain").stdout == ""
    assert _git_blobs_over(ws, 1_000_000) == []
    ignored = ["outputs/decode", "outputs/train/checkpoint", "outputs/evaluate/confusion.csv"]
    assert sh(ws, "git", "check-ignore", *ignored).stdout.split() == ignored
    sh(ws, "dvc", "plots", "show")  # its page is no source either
    assert (ws / "dvc_plots/index.html").exists() and sh(ws, "git", "status", "--porcelain").stdout == ""

    sh(ws, "dvc", "exp", "run", "--queue", "-S", "optimizer.lr=0.001,0.004")
    sh(ws, "dvc", "exp", "run", "--run-all", "-j", "1")  # -j 2 has hung in DVC's queue workers here
    assert sh(ws, "git", "status", "--porcelain").stdout == ""  # queued runs happen outside the workspace
    table = sh(ws, "dvc", "exp", "show", "--only-changed", "--csv").stdout.splitlines()
    header = table[0].split(",")
    lrs = {row.split(",")[header.index("optimizer.lr")] for row in table[1:]}
    assert {"0.001", "0.004"} <= lrs
    assert "data.task" not in header  # unchanged params are left out
    # The default table leads with the scores: the monitored validation score, then the test metrics,
    # then params; no counts, epochs or learning rates among the metrics.
    header = sh(ws, "dvc", "exp", "show", "--csv").stdout.splitlines()[0].split(",")
    first_param = next(i for i, h in enumerate(header) if h.startswith("data."))
    metrics = header[header.index("best_val_dice") : first_param]
    assert metrics[0] == "best_val_dice" and {"test_loss", "dice", "iou"} <= set(metrics)
    assert not {"lr", "images_per_s", "epochs_run", "best_epoch", "stopped_early", "images"} & set(metrics)
    assert _git_blobs_over(ws, 1_000_000) == []  # experiments are git refs: none of them holds a big file
