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
from pipeline.training.metrics import confusion_counts, make_meter, predict, segmentation_metrics, split_per_class
from pipeline.training.multilabel_metrics import thresholds_for
from pipeline.training.scoring import score
from pipeline.training.threads import resolve_workers


def mlflow_metrics(metrics: dict[str, Any], per_class: dict[str, dict[str, float]] | None = None) -> dict[str, float]:
    """The measurements of ``metrics.json`` (losses and scores, all floats) and the per-class scores of
    summary.json (as ``<score>/<class>``) as MLflow metrics, prefixed ``test_`` (train logs ``val_*``).
    MLflow keeps the per-class scores that `dvc exp show` leaves out: a run's page lists them one per
    row and its charts compare them across runs, with no table to widen. Whole numbers are counts
    (``images``), which MLflow would chart as if measured: evaluate logs them as tags."""
    scores = {
        **metrics,
        **{f"{score}/{name}": v for name, row in (per_class or {}).items() for score, v in row.items()},
    }
    return {
        key if key.startswith("test_") else f"test_{key}": float(value)
        for key, value in scores.items()
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

    def __init__(self, task: str, *, threshold: Any, stride: int, num_classes: int, class_names: Sequence[str] = ()):
        self.task, self.threshold, self.stride, self.num_classes = task, threshold, stride, num_classes
        self.limits = multilabel_limits(threshold, class_names) if task == "multilabel" else None
        self.offset = 0  # pixels seen so far: the stride runs across batch boundaries
        self.actual: list[torch.Tensor] = []
        self.predicted: list[torch.Tensor] = []
        self.per_image: list[torch.Tensor] = []  # segmentation: [N, K*K] pixel confusion of each image

    def __call__(self, images: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        pred = predicted_of(logits, self.threshold, self.limits)
        if self.task == "multilabel":
            pass  # the meter keeps every probability and target
        elif self.task == "classification":
            self.actual.append(y)
            self.predicted.append(pred)
            return
        start = (-self.offset) % self.stride
        self.actual.append(y.reshape(-1)[start :: self.stride])
        self.predicted.append(pred.reshape(-1)[start :: self.stride])
        self.offset += y.numel()
        self.per_image.append(image_confusions(y, pred, self.num_classes))


def multilabel_limits(threshold: Any, class_names: Sequence[str]) -> torch.Tensor:
    """Multilabel's per-class thresholds (``evaluate.threshold``: a number or a per-class mapping)."""
    return torch.tensor(thresholds_for(threshold, list(class_names)))


def predicted_of(logits: torch.Tensor, threshold: Any, limits: torch.Tensor | None = None) -> torch.Tensor:
    """The predictions of a batch: multilabel (``limits`` given) a 0/1 vector per image, the class
    present where its sigmoid probability passes its own threshold; else :func:`predict`'s classes."""
    if limits is not None:
        return (torch.sigmoid(logits) > limits.to(logits.device)).to(torch.uint8)
    return predict(logits, threshold)


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


def multilabel_overlay_order(
    actual: Sequence[Sequence[int]], predicted: Sequence[Sequence[int]], count: int
) -> list[int]:
    """The test images to draw: those whose predicted set differs from the true one first, then the
    rest, each part in test order."""
    wrong = [i for i, (a, p) in enumerate(zip(actual, predicted)) if list(a) != list(p)]
    right = [i for i, (a, p) in enumerate(zip(actual, predicted)) if list(a) == list(p)]
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
        class_names=class_names,
    )
    loss = score(model, loader, loss_fn, meter, plan, on_batch=samples)
    if task == "multilabel":
        probs, targets = meter.stacked()  # type: ignore[union-attr]
        limits = torch.tensor(meter.thresholds, dtype=torch.float64)  # type: ignore[union-attr]
        actual, predicted = targets.tolist(), (probs.double() > limits).to(torch.uint8).tolist()
        chosen = multilabel_overlay_order(actual, predicted, cfg["overlays"])
    else:
        actual = torch.cat(samples.actual).cpu().tolist()
        predicted = torch.cat(samples.predicted).cpu().tolist()
    if task == "classification":
        chosen = classification_overlay_order(actual, predicted, cfg["overlays"])
    elif task == "segmentation":
        k = len(class_names)
        per_image = torch.cat(samples.per_image).cpu() if samples.per_image else torch.zeros(0, k * k)
        dice = [segmentation_metrics(c.view(k, k))["dice"] for c in per_image]
        chosen = segmentation_overlay_order(dice, cfg["overlays"])
    return {
        "meter": meter,
        "loss": loss.mean(),
        "count": loss.samples,
        "actual": actual,
        "predicted": predicted,
        "drawn": chosen,
        **drawn_samples(model, dataset, chosen, loss_fn, plan, cfg, task=task, class_names=class_names),
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
    class_names: Sequence[str],
) -> dict[str, list[np.ndarray]]:
    """The images ``indices`` of ``dataset`` with their targets and predictions, for the overlays: a
    second pass over those few through the same :func:`score` (the first kept no images)."""
    drawn: dict[str, list[np.ndarray]] = {"images": [], "targets": [], "preds": []}
    limits = multilabel_limits(cfg["threshold"], class_names) if task == "multilabel" else None

    def keep(images: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        drawn["images"] += [im.permute(1, 2, 0).numpy() for im in images]
        drawn["targets"] += [t.numpy() for t in targets]
        drawn["preds"] += [p.numpy() for p in predicted_of(logits, cfg["threshold"], limits).cpu()]

    if indices:
        loader = DataLoader(Subset(dataset, list(indices)), batch_size=cfg["batch_size"], shuffle=False)
        meter = make_meter(task, len(class_names), threshold=cfg["threshold"], class_names=class_names)
        score(model, loader, loss_fn, meter, plan, on_batch=keep)
    return drawn


def write_outputs(
    out: Path, task: str, names: list[str], test_entries: Sequence[Any], results: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write metrics.json, summary.json, per_class.csv, confusion.csv, confusion.png and overlays.png
    into ``out``; return (metrics, summary). metrics.json holds the headline scores only (what `dvc
    metrics show` and `dvc exp show` list, one column each); the count, class names, confusion matrix
    and per-class scores go to summary.json, the per-class scores also to per_class.csv (a DVC plot:
    one bar per class and score, so a 10-class run adds no 30 table columns)."""
    if task == "multilabel":
        return _write_multilabel(out, names, test_entries, results)
    meter = results["meter"]
    k = len(names)
    matrix = meter.confusion_matrix()
    loss = results["loss"]
    if not math.isfinite(loss):  # JSON has no NaN; DVC shows a missing value instead
        print(f"evaluate: warning: the test loss is {loss}; written as null", file=sys.stderr)
    headline, per_class = split_per_class(meter.compute())
    metrics: dict[str, Any] = {"test_loss": loss if math.isfinite(loss) else None, **headline}
    summary = {"images": results["count"], "class_names": names, "confusion_matrix": matrix, "per_class": per_class}
    write_text(out / outputs.EVALUATE_PER_CLASS.name, per_class_csv(per_class))
    pairs = zip(results["actual"], results["predicted"])
    if task == "classification":
        rows: list[tuple[str, ...]] = [
            (entry["image"], names[a], names[p]) for entry, (a, p) in zip(test_entries, pairs)
        ]
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


NONE, MISSED = "(none)", "(missed)"  # the multilabel matrix's extra row (false positives) and column


def label_pairs(actual: Sequence[int], predicted: Sequence[int], names: Sequence[str]) -> list[tuple[str, str]]:
    """One image's multilabel outcome as (actual, predicted) pairs for a confusion matrix: a class both
    true and predicted is (c, c), a missed one (c, "(missed)"), a false alarm ("(none)", c)."""
    pairs = []
    for c, name in enumerate(names):
        if actual[c] and predicted[c]:
            pairs.append((name, name))
        elif actual[c]:
            pairs.append((name, MISSED))
        elif predicted[c]:
            pairs.append((NONE, name))
    return pairs


def _write_multilabel(
    out: Path, names: list[str], test_entries: Sequence[Any], results: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Multilabel's evaluate files: metrics.json (mAP, F1s), summary.json (thresholds, per-class scores
    and counts), per_class.csv (the per-class scores, as for the other tasks), confusion.csv (one row per image and label: true positives on the diagonal,
    misses in the "(missed)" column, false alarms in the "(none)" row), confusion.png (that matrix
    above the per-class AP/F1 bars) and overlays.png (true and predicted sets)."""
    meter, loss = results["meter"], results["loss"]
    if not math.isfinite(loss):
        print(f"evaluate: warning: the test loss is {loss}; written as null", file=sys.stderr)
    scores = meter.compute()
    headline, per_class = split_per_class(scores)
    metrics: dict[str, Any] = {"test_loss": loss if math.isfinite(loss) else None, **headline}
    write_text(out / outputs.EVALUATE_PER_CLASS.name, per_class_csv(per_class))
    rows = [
        (entry["image"], a, p)
        for entry, actual, predicted in zip(test_entries, results["actual"], results["predicted"])
        for a, p in label_pairs(actual, predicted, names)
    ]
    axis = [*names, NONE]
    columns = [*names, MISSED]
    matrix = [[0] * len(columns) for _ in axis]
    for _, a, p in rows:
        matrix[axis.index(a)][columns.index(p)] += 1
    summary = {
        "images": results["count"],
        "class_names": names,
        "thresholds": dict(zip(names, meter.thresholds)),
        "per_class": per_class,
        "positives": {n: sum(int(a[c]) for a in results["actual"]) for c, n in enumerate(names)},
        "predicted": {n: sum(int(p[c]) for p in results["predicted"]) for c, n in enumerate(names)},
        "label_matrix": {"rows": axis, "columns": columns, "counts": matrix},
    }
    write_text(out / outputs.EVALUATE_CONFUSION_CSV.name, _csv_text(("image", "actual", "predicted"), rows))
    # K+1 square: row K is "(none)" (false alarms), column K "(missed)"; their shared cell stays 0
    drawn_matrix = plots.draw_confusion(matrix, [*names, f"{NONE}/{MISSED}"], title="labels: actual vs predicted")
    bars = plots.draw_per_class(
        names,
        {"AP": [scores.get(f"ap/{n}") for n in names], "F1": [scores[f"f1/{n}"] for n in names]},
        title=f"per class, test images (mAP {metrics['map']:.3f}, macro F1 {metrics['macro_f1']:.3f})",
    )
    plots.save_png(out / outputs.EVALUATE_CONFUSION_PNG.name, plots.stack([drawn_matrix, bars]))

    def label_set(hot: Any) -> str:
        return ";".join(n for n, v in zip(names, hot) if int(v)) or NONE

    drawn = plots.draw_classification_overlays(
        results["images"], [label_set(t) for t in results["targets"]], [label_set(p) for p in results["preds"]]
    )
    plots.save_png(out / outputs.EVALUATE_OVERLAYS.name, drawn)
    write_json(out / outputs.EVALUATE_SUMMARY.name, summary)
    write_json(out / outputs.EVALUATE_METRICS.name, metrics)
    return metrics, summary


def image_dice(target: np.ndarray, pred: np.ndarray, num_classes: int) -> float:
    """One image's Dice (the caption of its overlay row)."""
    counts = confusion_counts(torch.from_numpy(target), torch.from_numpy(pred), num_classes)
    return segmentation_metrics(counts)["dice"]


def per_class_csv(per_class: dict[str, dict[str, float]]) -> str:
    """The per-class scores in long form, ``class,metric,value``: one DVC plot (the per_class template)
    draws them whatever the task's scores are called."""
    rows = [(name, score, repr(value)) for name, row in per_class.items() for score, value in row.items()]
    return _csv_text(("class", "metric", "value"), rows)


def _csv_text(header: tuple[str, ...], rows: Sequence[tuple[Any, ...]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()
