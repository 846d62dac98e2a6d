"""Every example in configs/ runs end to end at tiny size: split, decode, augment, model, train and
evaluate through the stages' own entry points, on the embedded data the example names (one epoch at
32 px on the CPU), and writes test metrics of its task."""

from __future__ import annotations

import importlib
import json

import pytest
import yaml

from tests.conftest import REPO, write_params

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
TINY_RUN = {
    "data.image_size": [32, 32],
    "train.epochs": 1,
    "train.workers": 0,
    "train.device": "cpu",
    "scheduler.warmup.epochs": 0,
    "precision.dtype": "fp32",
    "evaluate.workers": 0,
    "evaluate.device": "cpu",
    "evaluate.overlays": 4,
    "tracking.enabled": False,
}


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_the_example_runs_end_to_end_at_tiny_size(config, tmp_path):
    params = write_params(tmp_path / "params.yaml", config, link=True, **TINY_RUN)
    for stage in ("split", "decode", "augment", "model", "train", "evaluate"):
        assert importlib.import_module(f"stages.{stage}").main(["--params", str(params)]) == 0, stage
    task = yaml.safe_load(config.read_text())["data"]["task"]
    metrics = json.loads((tmp_path / "outputs/evaluate/metrics.json").read_text())
    score = {"segmentation": "dice", "classification": "accuracy"}.get(task, "macro_f1")
    assert 0.0 <= metrics[score] <= 1.0
    assert (tmp_path / "outputs/evaluate/overlays.png").stat().st_size > 0
