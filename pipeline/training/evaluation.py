"""The evaluate stage's library: the test-set pass (the shared :func:`~pipeline.training.scoring.score`
plus what only evaluate keeps: confusion-plot samples and overlay images), the files it writes, and
what it reads from train (``run.json``) and logs to MLflow."""

from __future__ import annotations

import csv
import io
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from pipeline import outputs, plots
from pipeline.atomic import write_json, write_text
from pipeline.processes import dying_with_parent
from pipeline.training.metrics import confusion_counts, make_meter, predict, segmentation_metrics
from pipeline.training.scoring import score
from pipeline.training.threads import resolve_workers


def mlflow_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The measurements of ``metrics.json`` (losses and scores, all floats) as MLflow metrics, prefixed
    ``test_`` (train logs ``val_*``). Whole numbers there are counts (``images``), which MLflow would
    chart as if measured: evaluate logs them as tags."""
    return {
        key if key.startswith("test_") else f"test_{key}": float(value)
        for key, value in metrics.items()
        if isinstance(value, float)
    }


def class_names(names: Sequence[str] | None, num_classes: int) -> list[str]:
    """The manifest's class names, or the class indices as text when it has none."""
    return [str(n) for n in names] if names else [str(i) for i in range(num_classes)]


class TestSamples:
    """What evaluate keeps of each batch beside the meter: the confusion-plot rows (classification
    every image, segmentation every ``stride``-th pixel of the whole test set) and, for segmentation,
    each image's pixel confusion (its Dice, to draw the worst first); all kept on the device until the
    end, so no per-batch host sync."""

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(self, task: str, *, threshold: float, stride: int, num_classes: int):
        self.task, self.threshold, self.stride, self.num_classes = task, threshold, stride, num_classes
        self.offset = 0  # pixels seen so far: the stride runs across batch boundaries
        self.actual: list[torch.Tensor] = []
        self.predicted: list[torch.Tensor] = []
        self.per_image: list[torch.Tensor] = []  # segmentation: [N, K*K] pixel confusion of each image

    def __call__(self, images: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        pred = predict(logits, self.threshold)
        if self.task == "classification":
            self.actual.append(y)
            self.predicted.append(pred)
            return
        start = (-self.offset) % self.stride
        self.actual.append(y.reshape(-1)[start :: self.stride])
        self.predicted.append(pred.reshape(-1)[start :: self.stride])
        self.offset += y.numel()
        self.per_image.append(image_confusions(y, pred, self.num_classes))


def image_confusions(target: torch.Tensor, pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[N, K*K]`` pixel confusion counts of each image of a batch (as :func:`confusion_counts`, on the
    device: out-of-range targets counted in a discarded bin)."""
    k, n = num_classes, target.shape[0]
    target, pred = target.reshape(n, -1).long(), pred.reshape(n, -1).long()
    valid = (target >= 0) & (target < k)
    index = torch.where(valid, target * k + pred, torch.full_like(target, k * k))
    counts = torch.zeros(n, k * k + 1, dtype=torch.int64, device=target.device)
    counts.scatter_add_(1, index, torch.ones_like(index))
    return counts[:, : k * k]


def round_robin(groups: Sequence[Sequence[int]]) -> list[int]:
    """The first of each group, then the second of each, ...: ``[[0, 3], [1], [2, 4]]`` -> 0 1 2 3 4."""
    longest = max((len(g) for g in groups), default=0)
    return [g[i] for i in range(longest) for g in groups if i < len(g)]


def classification_overlay_order(actual: Sequence[int], predicted: Sequence[int], count: int) -> list[int]:
    """The test images to draw: the misclassified first, then the right ones, each part taking the
    classes in turn (by true class), so the grid shows the mistakes and a mix of classes, not the
    manifest's first files (all of one class)."""
    classes = sorted(set(actual))
    pairs = list(enumerate(zip(actual, predicted)))
    wrong = round_robin([[i for i, (a, p) in pairs if a == c and p != c] for c in classes])
    right = round_robin([[i for i, (a, p) in pairs if a == c and p == c] for c in classes])
    return (wrong + right)[:count]


def segmentation_overlay_order(dice: Sequence[float], count: int) -> list[int]:
    """The test images to draw: the worst Dice first (ties in test order)."""
    return sorted(range(len(dice)), key=lambda i: (dice[i], i))[:count]


def run_test_set(
    model: Any,
    dataset: Any,
    loss_fn: Any,
    plan: Any,
    device: torch.device,
    cfg: dict[str, Any],
    *,
    task: str,
    class_names: list[str],
    image_hw: tuple[int, int],
) -> dict[str, Any]:
    """One pass over the test set (``model`` in eval mode): the loss, the confusion meter, the
    confusion-plot rows, and ``cfg["overlays"]`` images with their predictions (``drawn``: their test
    indices): classification the mistakes first then the classes in turn, segmentation the worst Dice first."""
    loader = DataLoader(
        dataset,
        batch_size=cfg["batch_size"],
        shuffle=False,
        num_workers=resolve_workers(cfg["workers"]),
        pin_memory=device.type == "cuda",
        worker_init_fn=dying_with_parent(),
    )  # no worker outlives a killed stage
    meter = make_meter(task, len(class_names), threshold=cfg["threshold"], class_names=class_names)
    pixels = len(dataset) * image_hw[0] * image_hw[1]
    samples = TestSamples(
        task,
        threshold=cfg["threshold"],
        stride=max(1, math.ceil(pixels / cfg["confusion_sample"])),
        num_classes=len(class_names),
    )
    loss = score(model, loader, loss_fn, meter, plan, on_batch=samples)
    actual = torch.cat(samples.actual).cpu().tolist()
    predicted = torch.cat(samples.predicted).cpu().tolist()
    if task == "classification":
        chosen = classification_overlay_order(actual, predicted, cfg["overlays"])
    else:
        k = len(class_names)
        per_image = torch.cat(samples.per_image).cpu() if samples.per_image else torch.zeros(0, k * k)
        dice = [segmentation_metrics(c.view(k, k))["dice"] for c in per_image]
        chosen = segmentation_overlay_order(dice, cfg["overlays"])
    return {
        "meter": meter,
        "loss": loss.mean(),
        "count": loss.count,
        "actual": actual,
        "predicted": predicted,
        "drawn": chosen,
        **drawn_samples(model, dataset, chosen, loss_fn, plan, cfg, task=task, num_classes=len(class_names)),
    }


def drawn_samples(
    model: Any,
    dataset: Any,
    indices: Sequence[int],
    loss_fn: Any,
    plan: Any,
    cfg: dict[str, Any],
    *,
    task: str,
    num_classes: int,
) -> dict[str, list[np.ndarray]]:
    """The images ``indices`` of ``dataset`` with their targets and predictions, for the overlays: a
    second pass over those few through the same :func:`score` (the first kept no images)."""
    drawn: dict[str, list[np.ndarray]] = {"images": [], "targets": [], "preds": []}

    def keep(images: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        drawn["images"] += [im.permute(1, 2, 0).numpy() for im in images]
        drawn["targets"] += [t.numpy() for t in targets]
        drawn["preds"] += [p.numpy() for p in predict(logits, cfg["threshold"]).cpu()]

    if indices:
        loader = DataLoader(Subset(dataset, list(indices)), batch_size=cfg["batch_size"], shuffle=False)
        score(model, loader, loss_fn, make_meter(task, num_classes, threshold=cfg["threshold"]), plan, on_batch=keep)
    return drawn


def write_outputs(
    out: Path, task: str, names: list[str], test_entries: Sequence[Any], results: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write metrics.json, summary.json, confusion.csv, confusion.png and overlays.png into ``out``;
    return (metrics, summary). metrics.json holds scores only (what `dvc metrics show` and `dvc exp
    show` list); the count, class names and confusion matrix go to summary.json."""
    meter = results["meter"]
    k = len(names)
    matrix = meter.confusion_matrix()
    loss = results["loss"]
    if not math.isfinite(loss):  # JSON has no NaN; DVC shows a missing value instead
        print(f"evaluate: warning: the test loss is {loss}; written as null", file=sys.stderr)
    metrics: dict[str, Any] = {"test_loss": loss if math.isfinite(loss) else None, **meter.compute()}
    summary = {"images": results["count"], "class_names": names, "confusion_matrix": matrix}
    pairs = zip(results["actual"], results["predicted"])
    if task == "classification":
        rows = [(entry["image"], names[a], names[p]) for entry, (a, p) in zip(test_entries, pairs)]
        header: tuple[str, ...] = ("image", "actual", "predicted")
    else:
        rows = [(names[a], names[p]) for a, p in pairs if 0 <= a < k]
        header = ("actual", "predicted")
    write_text(out / outputs.EVALUATE_CONFUSION_CSV.name, _csv_text(header, rows))
    unit = "test images" if task == "classification" else "test pixels"
    plots.save_png(
        out / outputs.EVALUATE_CONFUSION_PNG.name,
        plots.draw_confusion(matrix, names, title=f"confusion matrix, {unit}"),
    )
    if task == "classification":
        drawn = plots.draw_classification_overlays(
            results["images"], [names[int(t)] for t in results["targets"]], [names[int(p)] for p in results["preds"]]
        )
    else:
        captions = [
            f"{Path(entry['image']).name}: dice {image_dice(t, p, k):.3f}"
            for entry, t, p in zip([test_entries[i] for i in results["drawn"]], results["targets"], results["preds"])
        ]
        drawn = plots.draw_segmentation_overlays(results["images"], results["targets"], results["preds"], captions)
    plots.save_png(out / outputs.EVALUATE_OVERLAYS.name, drawn)
    write_json(out / outputs.EVALUATE_SUMMARY.name, summary)
    write_json(out / outputs.EVALUATE_METRICS.name, metrics)
    return metrics, summary


def image_dice(target: np.ndarray, pred: np.ndarray, num_classes: int) -> float:
    """One image's Dice (the caption of its overlay row)."""
    counts = confusion_counts(torch.from_numpy(target), torch.from_numpy(pred), num_classes)
    return segmentation_metrics(counts)["dice"]


def _csv_text(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()
