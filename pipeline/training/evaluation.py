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
from torch.utils.data import DataLoader

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
    every image, segmentation every ``stride``-th pixel of the whole test set; kept on the device
    until the end, so no per-batch host sync) and the first ``overlays`` images with predictions."""

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(self, task: str, *, threshold: Any, stride: int, overlays: int, class_names: Sequence[str] = ()):
        self.task, self.threshold, self.stride, self.overlays = task, threshold, stride, overlays
        if task == "multilabel":  # per-class thresholds, compared with the sigmoid probabilities
            self.limits = torch.tensor(thresholds_for(threshold, list(class_names)))
        self.offset = 0  # pixels seen so far: the stride runs across batch boundaries
        self.actual: list[torch.Tensor] = []
        self.predicted: list[torch.Tensor] = []
        self.drawn: dict[str, list[np.ndarray]] = {"images": [], "targets": [], "preds": []}

    def __call__(self, images: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        if self.task == "multilabel":
            pred = (torch.sigmoid(logits) > self.limits.to(logits.device)).to(torch.uint8)
        else:
            pred = predict(logits, self.threshold)
        if self.task == "multilabel":
            pass  # the meter keeps every probability and target
        elif self.task == "classification":
            self.actual.append(y)
            self.predicted.append(pred)
        else:
            start = (-self.offset) % self.stride
            self.actual.append(y.reshape(-1)[start :: self.stride])
            self.predicted.append(pred.reshape(-1)[start :: self.stride])
            self.offset += y.numel()
        need = self.overlays - len(self.drawn["images"])
        if need > 0:
            self.drawn["images"] += [im.permute(1, 2, 0).numpy() for im in images[:need]]
            self.drawn["targets"] += [t.numpy() for t in targets[:need]]
            self.drawn["preds"] += [p.numpy() for p in pred[:need].cpu()]


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
    confusion-plot rows and the first ``cfg["overlays"]`` images with their predictions."""
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
        overlays=cfg["overlays"],
        stride=max(1, math.ceil(pixels / cfg["confusion_sample"])),
        class_names=class_names,
    )
    loss = score(model, loader, loss_fn, meter, plan, on_batch=samples)
    if task == "multilabel":
        probs, targets = meter.stacked()  # type: ignore[union-attr]
        limits = torch.tensor(meter.thresholds, dtype=torch.float64)  # type: ignore[union-attr]
        return {
            "meter": meter,
            "loss": loss.mean(),
            "count": loss.count,
            "actual": targets.tolist(),
            "predicted": (probs.double() > limits).to(torch.uint8).tolist(),
            **samples.drawn,
        }
    return {
        "meter": meter,
        "loss": loss.mean(),
        "count": loss.samples,
        "actual": torch.cat(samples.actual).cpu().tolist(),
        "predicted": torch.cat(samples.predicted).cpu().tolist(),
        **samples.drawn,
    }


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
            for entry, t, p in zip(test_entries, results["targets"], results["preds"])
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
