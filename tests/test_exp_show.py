"""`dvc exp show` as a user reads it after a learning-rate grid on the classification example: a real
git + DVC repository (tests/test_end_to_end.py's), params.yaml from configs/classification.yaml by
`python -m pipeline init`, shrunk to seconds, and two real `dvc exp run -S optimizer.lr=...`. The
table has one column per headline score; the per-class scores are a plot, not 3 x classes columns."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, write_params
from tests.test_end_to_end import make_repo, sh

WIDTH = 200  # characters: a table a terminal shows whole
TINY = {  # the example shrunk to a CPU and seconds; the same in every experiment, so never a changed column
    "data.image_size": [32, 32],
    "model.name": "test_resnet",
    "train.epochs": 2,
    "train.batch_size": 8,
    "train.workers": 0,
    "train.device": "cpu",
    "evaluate.workers": 0,
    "evaluate.device": "cpu",
    "evaluate.overlays": 2,
    "precision.dtype": "fp32",
}


@pytest.mark.slow  # three pipeline runs through dvc: minutes on 2 cores
@pytest.mark.pipeline_runs(4)  # and a fresh repository's first
def test_exp_show_after_an_lr_grid_on_the_classification_example_fits_a_terminal(tmp_path):
    """README's workflow: run and commit the example, run a two-point grid, compare with `--only-changed`.
    What differs between the rows: the scores, optimizer.lr, and the hashes of the trained weights and
    of the MLflow run's record (run.json), which evaluate and export read."""
    from pipeline.data.synthetic import generate_classification

    ws = make_repo(tmp_path)
    shutil.copytree(REPO / "configs", ws / "configs")
    sh(ws, "python", "-m", "pipeline", "init", "configs/classification.yaml", "--force")
    write_params(ws / "params.yaml", ws / "params.yaml", **TINY)
    generate_classification(ws / "data/shapes-cls", n_per_class=12, size=32, seed=2)
    sh(ws, "dvc", "repro")
    sh(ws, "git", "add", "-A")
    sh(ws, "git", "commit", "-qm", "the classification example, run")
    for lr in ("0.0001", "0.03"):  # far apart: the second changes the predictions, so the scores differ
        sh(ws, "dvc", "exp", "run", "-S", f"optimizer.lr={lr}")
    classes = json.loads((ws / "outputs/evaluate/summary.json").read_text())["class_names"]
    assert classes == ["circle", "square", "triangle"]

    rows = list(csv.DictReader(io.StringIO(sh(ws, "dvc", "exp", "show", "--only-changed", "--csv").stdout)))
    assert {"0.0001", "0.03"} <= {row["optimizer.lr"] for row in rows}, rows  # the grid's two experiments
    assert {"best_val_accuracy", "accuracy", "macro_f1", "test_loss"} <= set(rows[0]), list(rows[0])
    assert not [column for column in rows[0] if "/" in column and column.split("/")[-1] in classes], list(rows[0])
    # As a terminal far wider than the table shows it: nothing wrapped or cut to fit, the table's own width
    shown = subprocess.run(
        ["dvc", "exp", "show", "--only-changed", "--no-pager"],
        cwd=ws,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "COLUMNS": "1000"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "macro_f1" in shown and "…" not in shown, shown  # whole: no column left out
    width = max(len(line) for line in shown.splitlines())
    assert width < WIDTH, f"{width} characters wide:\n{shown}"
