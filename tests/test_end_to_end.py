"""The whole pipeline as a user runs it: real `dvc repro` and `dvc exp run` in a temporary git
repository on a tiny config, real MLflow SQLite store. Checks DVC's cache behaviour stage by stage."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import (  # noqa: F401 (make_repo, tiny_params: still importable from here)
    ReproducedRepo,
    copy_repo,
    dvc_env,
    make_repo,
    ran,
    sh,
    tiny_params,
    write_params,
)

pytestmark = pytest.mark.slow  # real dvc repro / dvc exp run in a git repository

_env = dvc_env  # the names tests/search/ imported from here


@pytest.fixture(scope="module")
def workspace(reproduced_repo: ReproducedRepo, tmp_path_factory) -> Path:
    """A copy of the session's reproduced repository: every stage has run once, and is committed."""
    return copy_repo(reproduced_repo.root, tmp_path_factory.mktemp("ws") / "repo")


@pytest.fixture
def clone(reproduced_repo: ReproducedRepo, tmp_path: Path) -> Path:
    """A copy of the reproduced repository of this test's own: up to date and committed, whatever the
    tests before it left in ``workspace``."""
    return copy_repo(reproduced_repo.root, tmp_path / "repo")


def _edit(ws: Path, old: str, new: str) -> None:
    write_params(ws / "params.yaml", ws / "params.yaml", replace={old: new})


def _commit(ws: Path) -> None:
    sh(ws, "git", "add", "-A")
    sh(ws, "git", "commit", "-qm", "step", check=False)


def test_repro_then_cache_behaviour(workspace, reproduced_repo):
    ws = workspace
    first = reproduced_repo.first_repro  # the first `dvc repro` of a fresh clone, committed after it
    assert ran(first) == [
        "validate",
        "split",
        "decode",
        "augment",
        "model",
        "train",
        "preview",
        "evaluate",
        "export",
    ], first
    metrics = yaml.safe_load((ws / "outputs/evaluate/metrics.json").read_text())
    assert 0.0 <= metrics["dice"] <= 1.0
    _commit(ws)

    assert ran(sh(ws, "dvc", "repro").stdout) == []  # nothing changed: nothing runs

    _edit(ws, "# The one file", "# A comment-only edit: the one file")
    assert ran(sh(ws, "dvc", "repro").stdout) == []

    _edit(ws, "  name: dice_bce ", "  name: dice     ")  # every check first, then only what reads the loss
    # preview re-runs after every training: it attaches the picture to the new MLflow run (run.json)
    assert ran(sh(ws, "dvc", "repro").stdout) == ["validate", "train", "preview", "evaluate", "export"]
    _commit(ws)

    loss_code = ws / "pipeline/training/losses/focal.py"  # a loss module's code: the same two stages
    loss_code.write_text(loss_code.read_text() + "\n# an edit to the loss module\n")
    trained = (ws / "outputs/train/best.safetensors").read_bytes()
    stages = ran(sh(ws, "dvc", "repro").stdout)
    # export reads the trained weights alone: retrained bit-identically (as on CPU), DVC stops at evaluate
    changed = ["export"] if (ws / "outputs/train/best.safetensors").read_bytes() != trained else []
    assert stages == ["train", "preview", "evaluate", *changed]
    _commit(ws)

    _edit(ws, "- Fliplr: {p: 0.5}", "- Fliplr: {p: 0.1}")
    trained = (ws / "outputs/train/best.safetensors").read_bytes()
    stages = ran(sh(ws, "dvc", "repro").stdout)
    # Each sample's flip is drawn from its own seed: only the draws between 0.1 and 0.5 change, and when
    # the best epoch's weights come out the same, DVC rightly stops before export (as for the loss above).
    changed = ["export"] if (ws / "outputs/train/best.safetensors").read_bytes() != trained else []
    assert stages == ["validate", "augment", "train", "preview", "evaluate", *changed]
    _commit(ws)

    _edit(ws, "  seed: 42 ", "  seed: 43 ")
    assert set(ran(sh(ws, "dvc", "repro").stdout)) == {
        "validate",
        "split",
        "decode",
        "augment",
        "model",
        "train",
        "preview",
        "evaluate",
        "export",
    }
    _commit(ws)

    # Without the decoded cache training decodes the files: the same samples, so the same weights on CPU
    trained = (ws / "outputs/train/best.safetensors").read_bytes()
    _edit(ws, "  cache: decoded ", "  cache: none    ")
    stages = ran(sh(ws, "dvc", "repro").stdout)
    changed = ["export"] if (ws / "outputs/train/best.safetensors").read_bytes() != trained else []
    assert stages == ["validate", "decode", "train", "preview", "evaluate", *changed]
    _edit(ws, "  cache: none    ", "  cache: decoded ")
    _commit(ws)


def test_invalid_params_refused_before_running(workspace):
    ws = workspace
    _edit(ws, "  name: AdamW", "  name: AdamWW")
    try:
        result = sh(ws, "dvc", "repro", "-f", "-s", "train", check=False)
        assert result.returncode != 0
        assert "optimizer.name" in result.stdout + result.stderr
        assert "did you mean 'AdamW'" in result.stdout + result.stderr
        assert "Traceback" not in result.stdout + result.stderr
    finally:
        _edit(ws, "  name: AdamWW", "  name: AdamW")


def test_every_problem_stops_dvc_repro_before_any_stage_works(workspace):
    """Values only building the component finds wrong (a loss argument, a scheduler's), in two
    sections at once: the validate stage lists both and nothing after it runs."""
    ws = workspace
    before = sh(ws, "git", "status", "--porcelain").stdout
    _edit(
        ws,
        "  params: {}                    # keyword arguments of the loss",
        "  params: {smooth: high}        # keyword arguments of the loss",
    )
    _edit(ws, "  params: {}                    # its keyword arguments", "  params: {eta_min: low}       # its")
    try:
        result = sh(ws, "dvc", "repro", check=False)
        out = result.stdout + result.stderr
        assert result.returncode != 0 and ran(result.stdout) == ["validate"], out
        assert "loss.params.smooth" in out and "scheduler.params.eta_min" in out and "Traceback" not in out
    finally:
        _edit(
            ws,
            "  params: {smooth: high}        # keyword arguments of the loss",
            "  params: {}                    # keyword arguments of the loss",
        )
        _edit(ws, "  params: {eta_min: low}       # its", "  params: {}                    # its keyword arguments")
    assert sh(ws, "git", "status", "--porcelain").stdout == before


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
    _commit(ws)
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
