"""configs/multilabel.yaml as a user runs it: `python -m pipeline init` over params.yaml in a git + DVC
repository holding the project and the embedded data/shapes-multi, shrunk to seconds, then `dvc
repro` and `python -m pipeline predict` on the trained model."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from tests.conftest import REPO, write_params
from tests.test_end_to_end import ran, sh

pytestmark = [pytest.mark.slow, pytest.mark.pipeline_runs(1)]


def test_the_multilabel_example_runs_end_to_end(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    for name in ("pipeline", "stages", "schemas", "configs", "plots", "weights"):
        shutil.copytree(REPO / name, ws / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "data" / "shapes-multi", ws / "data" / "shapes-multi")
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(REPO / name, ws / name)
    sh(ws, "python", "-m", "pipeline", "init", "configs/multilabel.yaml", "--out", "params.yaml")
    write_params(
        ws / "params.yaml",
        ws / "params.yaml",
        **{
            "train.epochs": 2,
            "train.workers": 0,
            "train.batch_size": 16,
            "evaluate.workers": 0,
            "data.image_size": [32, 32],
            "model.name": "test_resnet",
            "evaluate.threshold": {"circle": 0.4, "triangle": 0.6},
            "tracking.enabled": False,
        },
    )
    sh(ws, "git", "init", "-q")
    sh(ws, "dvc", "init", "-q")
    shutil.copy(REPO / ".dvc/config", ws / ".dvc/config")
    shutil.copytree(REPO / ".dvc/plots", ws / ".dvc/plots")
    sh(ws, "git", "add", "-A")
    sh(ws, "git", "commit", "-qm", "init")

    stages = ran(sh(ws, "dvc", "repro").stdout)
    assert {"split", "train", "evaluate"} <= set(stages)
    manifest = json.loads((ws / "outputs/split/manifest.json").read_text())
    assert manifest["task"] == "multilabel" and manifest["class_names"] == ["circle", "square", "triangle"]
    assert sum(len(v) for v in manifest["splits"].values()) == 120
    metrics = json.loads((ws / "outputs/evaluate/metrics.json").read_text())
    for key in ("map", "macro_f1", "micro_f1", "exact_match", "test_loss"):
        assert 0.0 <= metrics[key] <= (1.0 if key != "test_loss" else 10.0), key
    assert not any("/" in key for key in metrics)  # per-class scores stay out of dvc exp show
    summary = json.loads((ws / "outputs/evaluate/summary.json").read_text())
    for name, score in (("circle", "ap"), ("square", "f1")):
        assert 0.0 <= summary["per_class"][name][score] <= 1.0, (name, score)
    assert summary["thresholds"] == {"circle": 0.4, "square": 0.5, "triangle": 0.6}
    assert sum(summary["positives"].values()) == sum(
        len(e["labels"]) for e in manifest["splits"]["test"]
    )  # every true label of the test set is counted once
    history = (ws / "outputs/train/history.csv").read_text().splitlines()
    assert "val_map" in history[0].split(",")

    images = ws / "data/shapes-multi/images"
    sh(
        ws,
        "python",
        "-m",
        "pipeline",
        "predict",
        str(images / "scene_0000.png"),
        str(images / "scene_0001.png"),
        "--out",
        "predicted",
    )
    with open(ws / "predicted/predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["path", "p_circle", "p_square", "p_triangle", "labels"]
    for row in rows:
        chosen = {n for n in ("circle", "square", "triangle") if float(row[f"p_{n}"]) > 0.5}
        assert set(filter(None, row["labels"].split(";"))) == chosen  # the recipe's threshold: 0.5
