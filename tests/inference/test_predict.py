"""``python -m pipeline predict``: the trained model on new images, prepared exactly as evaluate
prepares them, so predict on the test split gives evaluate's predictions and scores."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.cli import main as cli
from pipeline.data.files import mask_array, mask_to_classes
from pipeline.training.metrics import confusion_counts, segmentation_metrics
from stages import evaluate as evaluate_stage
from stages import train as train_stage
from tests.conftest import make_workspace

TRAINED = {"train.epochs": 1, "augment.eval": []}


pytestmark = pytest.mark.slow  # every test reads a model trained and evaluated for it


@pytest.fixture(scope="module")
def segmentation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    params = make_workspace(tmp_path_factory.mktemp("seg"), images=24, **TRAINED)
    assert train_stage.main(["--params", str(params)]) == 0
    assert evaluate_stage.main(["--params", str(params)]) == 0
    return params.parent


@pytest.fixture(scope="module")
def classification(tmp_path_factory: pytest.TempPathFactory) -> Path:
    params = make_workspace(tmp_path_factory.mktemp("cls"), task="classification", images=8, **TRAINED)
    assert train_stage.main(["--params", str(params)]) == 0
    assert evaluate_stage.main(["--params", str(params)]) == 0
    return params.parent


def _test_entries(ws: Path) -> list[dict]:
    return json.loads((ws / "outputs/split/manifest.json").read_text())["splits"]["test"]


def test_segmentation_predictions_score_exactly_what_evaluate_scored(segmentation: Path, tmp_path: Path, capsys):
    ws, out = segmentation, tmp_path / "pred"
    entries = _test_entries(ws)
    images = [str(ws / "data" / e["image"]) for e in entries]
    assert cli(["predict", *images, "--model", str(ws / "outputs/train/best.safetensors"), "--out", str(out)]) == 0
    assert f"predict: {len(entries)} image(s)" in capsys.readouterr().out
    counts = torch.zeros(2, 2, dtype=torch.int64)
    for entry in entries:
        predicted = np.asarray(Image.open(out / "masks" / f"{Path(entry['image']).stem}.png"))
        truth = mask_to_classes(mask_array(Image.open(ws / "data" / entry["mask"]), entry["mask"]), 2)
        assert predicted.shape == truth.shape and set(np.unique(predicted)) <= {0, 1}
        counts += confusion_counts(torch.from_numpy(truth), torch.from_numpy(predicted.copy()), 2)
    evaluated = json.loads((ws / "outputs/evaluate/metrics.json").read_text())
    assert counts.tolist() == json.loads((ws / "outputs/evaluate/summary.json").read_text())["confusion_matrix"]
    assert segmentation_metrics(counts)["dice"] == evaluated["dice"]


def test_classification_predictions_are_evaluates(classification: Path, tmp_path: Path):
    ws, out = classification, tmp_path / "pred"
    assert (
        cli(
            [
                "predict",
                str(ws / "data"),
                "--model",
                str(ws / "outputs/train/best.safetensors"),
                "--out",
                str(out),
                "--batch-size",
                "5",
            ]
        )
        == 0
    )
    with open(out / "predictions.csv", newline="") as fh:
        rows = {Path(r["path"]).relative_to(ws / "data").as_posix(): r for r in csv.DictReader(fh)}
    names = json.loads((ws / "outputs/split/manifest.json").read_text())["class_names"]
    assert len(rows) == sum(len(list((ws / "data" / n).iterdir())) for n in names)  # the folder, recursively
    first = next(iter(rows.values()))
    assert list(first) == ["path", "predicted", "probability", *(f"p_{n}" for n in names)]
    with open(ws / "outputs/evaluate/confusion.csv", newline="") as fh:
        evaluated = {r["image"]: r["predicted"] for r in csv.DictReader(fh)}
    assert evaluated and all(rows[image]["predicted"] == label for image, label in evaluated.items())
    for row in rows.values():
        probs = [float(row[f"p_{n}"]) for n in names]
        assert sum(probs) == pytest.approx(1.0, abs=1e-5) and float(row["probability"]) == max(probs)


def test_masks_come_back_at_each_inputs_size_and_bad_inputs_are_listed(segmentation: Path, tmp_path: Path, capsys):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (37, 50, 3), dtype=np.uint8)).save(tmp_path / "wide.png")
    Image.fromarray(rng.integers(0, 256, (90, 20), dtype=np.uint8)).save(tmp_path / "tall.jpg")  # greyscale
    (tmp_path / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "pred"
    status = cli(
        [
            "predict",
            str(tmp_path / "*.*g"),
            "--model",
            str(segmentation / "outputs/train/best.safetensors"),
            "--out",
            str(out),
            "--tta",
            "--overlays",
        ]
    )
    err = capsys.readouterr().err
    assert status == 1 and f"could not read {tmp_path / 'broken.png'}: cannot decode image" in err
    assert "Traceback" not in err
    assert Image.open(out / "masks" / "wide.png").size == (50, 37)
    assert Image.open(out / "masks" / "tall.png").size == (20, 90)
    assert Image.open(out / "overlays" / "wide.png").size == (32, 32)
    assert not list(out.rglob(".*.tmp"))  # written atomically: no temporary file left


def test_predict_errors_name_what_is_wrong(segmentation: Path, tmp_path: Path, capsys):
    assert (
        cli(
            [
                "predict",
                str(tmp_path / "nothing-here.png"),
                "--model",
                str(segmentation / "outputs/train/best.safetensors"),
            ]
        )
        == 2
    )
    assert "nothing-here.png: no such file or folder" in capsys.readouterr().err
    assert cli(["predict", str(tmp_path), "--model", str(tmp_path / "none.safetensors")]) == 2
    assert "none.safetensors: no such model file" in capsys.readouterr().err
