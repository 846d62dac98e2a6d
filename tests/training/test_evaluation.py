"""The evaluate stage's test-set pass (pipeline.training.evaluation) against models with known answers:
a perfect model scores perfectly, an all-background one as counted by hand (and the sampled confusion
pixels), a non-finite loss is written as null, and only prefixed numbers go to MLflow. The stage end to
end is in tests/stages/test_evaluate.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline.models.input_contract import MEAN, STD
from pipeline.training import evaluation
from pipeline.training.losses import build_loss
from pipeline.training.precision import resolve_precision

SIZE = 32
FP32 = {"dtype": "fp32", "channels_last": False, "tf32": False, "compile": False}
CFG = {"batch_size": 3, "workers": 0, "device": "cpu", "threshold": 0.5, "overlays": 2, "confusion_sample": 10_000}


class RedThreshold(torch.nn.Module):
    """Predicts foreground exactly where the red channel exceeds 128 (undoing the normalisation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = x[:, :1] * STD[0] + MEAN[0]
        return (red - 128.5 / 255) * 1000


def red_dataset(n: int = 5) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Images whose red channel is 255 inside a mask (the target) and 0 elsewhere."""
    gen = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(n):
        mask = (torch.rand(SIZE, SIZE, generator=gen) > 0.6).to(torch.uint8)
        image = torch.randint(0, 256, (3, SIZE, SIZE), generator=gen, dtype=torch.uint8)
        image[0] = mask * 255
        samples.append((image, mask))
    return samples


def run_loop(model: torch.nn.Module, data: list, **cfg: object) -> dict:
    device = torch.device("cpu")
    loss = build_loss({"name": "dice_bce", "params": {}, "terms": []}, task="segmentation", num_outputs=1)
    return evaluation.run_test_set(
        model,
        data,
        loss,
        resolve_precision(FP32, device),
        device,
        {**CFG, **cfg},
        task="segmentation",
        class_names=["background", "foreground"],
        image_hw=(SIZE, SIZE),
    )


def test_loop_scores_a_perfect_model_perfectly():
    data = red_dataset()
    results = run_loop(RedThreshold(), data)
    foreground = sum(int(mask.sum()) for _, mask in data)
    assert results["meter"].confusion_matrix() == [[5 * SIZE * SIZE - foreground, 0], [0, foreground]]
    metrics = results["meter"].compute()
    assert metrics["dice"] == 1.0 and metrics["pixel_accuracy"] == 1.0
    assert results["count"] == 5
    assert len(results["images"]) == 2 and results["images"][0].shape == (SIZE, SIZE, 3)
    assert (results["preds"][1] == data[1][1].numpy()).all()


def test_loop_scores_an_all_background_model_by_hand():
    data = red_dataset()
    results = run_loop(lambda x: torch.full_like(x[:, :1], -5.0), data, confusion_sample=1000)
    foreground = sum(int(mask.sum()) for _, mask in data)
    metrics = results["meter"].compute()
    assert metrics["dice"] == 0.0
    assert metrics["pixel_accuracy"] == pytest.approx(1 - foreground / (5 * SIZE * SIZE))
    # every ceil(5120 / 1000) = 6th pixel of the whole test set, across batch boundaries
    flat = torch.cat([mask.reshape(-1) for _, mask in data]).long()
    assert results["actual"] == flat[::6].tolist()
    assert results["predicted"] == [0] * len(flat[::6])


def test_a_non_finite_loss_is_written_as_null_not_invalid_json(tmp_path: Path, capsys):
    data = red_dataset(3)
    results = run_loop(lambda x: torch.full_like(x[:, :1], float("nan")), data)
    entries = [{"image": f"images/{i}.png", "mask": f"masks/{i}.png"} for i in range(3)]
    metrics, summary = evaluation.write_outputs(
        tmp_path, "segmentation", ["background", "foreground"], entries, results
    )
    assert metrics["test_loss"] is None and "written as null" in capsys.readouterr().err
    assert json.loads((tmp_path / "metrics.json").read_text())["dice"] == 0.0  # NaN logit: background
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "confusion.csv",
        "confusion.png",
        "metrics.json",
        "overlays.png",
        "per_class.csv",
        "summary.json",
    ]
    assert json.loads((tmp_path / "summary.json").read_text()) == summary and summary["images"] == 3


def test_mlflow_metrics_are_prefixed_scores_only():
    """Counts (the number of test images) are no measurements to chart: a tag, not a metric."""
    got = evaluation.mlflow_metrics(
        {
            "test_loss": 0.5,
            "dice": 0.8,
            "dice/foreground": 0.8,
            "images": 3,
            "confusion_matrix": [[1]],
            "class_names": ["a"],
            "iou": None,
        }
    )
    assert got == {"test_loss": 0.5, "test_dice": 0.8, "test_dice/foreground": 0.8}


def test_mlflow_metrics_keep_the_per_class_scores_dvc_exp_show_leaves_out():
    got = evaluation.mlflow_metrics(
        {"test_loss": 0.5, "accuracy": 0.75},
        {"circle": {"precision": 0.5, "recall": 1.0}, "square": {"precision": 1.0, "recall": 0.25}},
    )
    assert got == {
        "test_loss": 0.5,
        "test_accuracy": 0.75,
        "test_precision/circle": 0.5,
        "test_recall/circle": 1.0,
        "test_precision/square": 1.0,
        "test_recall/square": 0.25,
    }


def test_per_class_scores_leave_metrics_json_for_summary_json_and_the_plot(tmp_path: Path):
    """metrics.json, which `dvc exp show` lists, holds the headline scores; each class's scores go to
    summary.json and per_class.csv (long form for the per_class plot), the same numbers in both."""
    data = red_dataset(3)
    results = run_loop(lambda x: torch.full_like(x[:, :1], -5.0), data)  # all background
    entries = [{"image": f"images/{i}.png", "mask": f"masks/{i}.png"} for i in range(3)]
    names = ["background", "foreground"]
    metrics, summary = evaluation.write_outputs(tmp_path, "segmentation", names, entries, results)
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert sorted(metrics) == ["dice", "iou", "pixel_accuracy", "test_loss"]
    foreground = sum(int(mask.sum()) for _, mask in data)
    background = 3 * SIZE * SIZE - foreground  # all predicted right; the foreground pixels are its false positives
    dice = 2 * background / (2 * background + foreground)
    iou = background / (background + foreground)
    assert summary["per_class"] == {
        "background": {"dice": pytest.approx(dice), "iou": pytest.approx(iou)},
        "foreground": {"dice": 0.0, "iou": 0.0},
    }
    assert json.loads((tmp_path / "summary.json").read_text())["per_class"] == summary["per_class"]
    assert (tmp_path / "per_class.csv").read_text() == (
        f"class,metric,value\nbackground,dice,{dice!r}\nbackground,iou,{iou!r}\n"
        "foreground,dice,0.0\nforeground,iou,0.0\n"
    )


def test_classification_overlays_show_the_mistakes_first_then_the_classes_in_turn():
    # the manifest's order: all of class 0 first; two mistakes (test images 2 and 9)
    actual = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2]
    predicted = [0, 0, 1, 0, 0, 0, 0, 0, 1, 2, 1, 2, 2]
    order = evaluation.classification_overlay_order(actual, predicted, 8)
    assert order == [2, 9, 0, 8, 11, 1, 10, 12]
    assert {actual[i] for i in order} == {0, 1, 2}  # not the first eight files, all of class 0
    assert evaluation.classification_overlay_order(actual, predicted, 0) == []


def test_segmentation_overlays_show_the_worst_dice_first():
    data = red_dataset()
    for worst, wrong_pixels in ((3, slice(0, 32)), (1, slice(0, 4))):
        mask = data[worst][1].clone()
        mask[wrong_pixels] = 1 - mask[wrong_pixels]  # the target no longer matches the red channel
        data[worst] = (data[worst][0], mask)
    results = run_loop(RedThreshold(), data, overlays=3)
    assert results["drawn"] == [3, 1, 0]  # image 3 wholly wrong, image 1 partly, then the perfect in order
    assert all((t == data[i][1].numpy()).all() for t, i in zip(results["targets"], results["drawn"]))
    assert (results["preds"][0] == (data[3][0][0] > 128).numpy()).all()
