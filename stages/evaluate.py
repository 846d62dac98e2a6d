"""The evaluate stage: the trained model on the test split, with evaluation preprocessing only.

``python -m stages.evaluate`` reads the split manifest, the best weights and the MLflow run id train
wrote, and writes ``outputs/evaluate/`` (as a whole, atomically):

- ``metrics.json`` (DVC metrics): ``test_loss`` (batch losses weighted by batch size), the task's
  metrics from :mod:`pipeline.training.metrics` (segmentation: pooled ``dice``, ``iou``, ``pixel_accuracy`` and
  per class; classification: ``accuracy``, per-class precision/recall/F1, ``macro_f1``), the
  ``confusion_matrix`` (rows = actual) and ``class_names``;
- ``confusion.csv`` (DVC plots, confusion template): ``actual,predicted`` rows; classification one
  per test image (with its path), segmentation a deterministic every-k-th-pixel sample;
- ``confusion.png`` and ``overlays.png``: the matrix drawn, and a few test images with predictions.

Test metrics and these files go into train's MLflow run (``outputs/train/run.json``), as ``test_*``.
"""
from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from pipeline.tracking import run as tracking
from pipeline import outputs
from pipeline.atomic import atomic_dir, write_json, write_text
from pipeline.config.params import ParamsView, flatten
from pipeline.config.errors import PipelineError
from pipeline.stage import run_stage
from pipeline import plots
from pipeline.augment.transform import build_transform
from pipeline.data.dataset import ManifestDataset, image_hw
from pipeline.data.manifest import read_manifest
from pipeline.training.device import resolve_device, to_device
from pipeline.training.loss import build_loss
from pipeline.training.metrics import confusion_counts, make_meter, predict, segmentation_metrics
from pipeline.models.file import load_model
from pipeline.training.precision import resolve_precision

PARAMS = ("data.task", "data.image_size", "augment.eval", "evaluate", "precision", "loss", "tracking")
MANIFEST = outputs.MANIFEST
WEIGHTS = outputs.TRAIN_BEST
RUN_INFO = outputs.TRAIN_RUN
OUT = outputs.EVALUATE


def read_run_info(path: Path) -> dict[str, Any]:
    """train's ``run.json``: ``{"run_id": str | null, "tracking_uri": str | null}``."""
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PipelineError(f"{path} is not valid JSON ({exc}); re-run the train stage") from None
    if not isinstance(info, dict) or not isinstance(info.get("run_id"), (str, type(None))):
        raise PipelineError(f"{path}: expected {{\"run_id\": string or null, ...}}; re-run the train stage")
    return info


def _confusion_csv(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def evaluate(view: ParamsView) -> dict[str, Any]:
    """Evaluate the trained model on the test split; write metrics and plots; return the metrics."""
    cfg = view["evaluate"]
    task = view["data.task"]
    root = view.root
    manifest = read_manifest(root, task)
    weights = outputs.require(root, WEIGHTS)
    run_id = read_run_info(outputs.require(root, RUN_INFO)).get("run_id")
    device = resolve_device(cfg["device"], key="evaluate.device")
    plan = resolve_precision(view["precision"], device)
    dataset = ManifestDataset(manifest, "test", root=view.resolve_path(manifest.root),
                              image_size=view["data.image_size"],
                              transform=build_transform(view["augment.eval"], task=task))
    if len(dataset) == 0:
        raise PipelineError("the test split is empty; raise split.fractions.test")
    model, info = load_model(weights)
    k = manifest.num_classes
    num_outputs = int(info.config["num_outputs"])
    if num_outputs not in (k, 1 if k == 2 else k):
        raise PipelineError(f"{WEIGHTS} has {num_outputs} outputs but the data has {k} classes "
                            f"(expected {k}{' or 1' if k == 2 else ''}); check model.num_classes")
    # Opened before the evaluation so an unreachable server fails at the start, not after it.
    run = (tracking.start_run(view["tracking"], repo_root=root, run_id=run_id, run_name=f"{task}-evaluate")
           if run_id else tracking.NullRun())
    with run:
        # Train logged every param; a value changed since (say evaluate.threshold) lands in a
        # changed_param.* tag, so the run says which settings its test metrics came from.
        run.log_params(flatten(view.all_params()))
        model = plan.prepare_model(model.to(device)).eval()
        loss_fn = build_loss(view["loss"], task=task, num_outputs=num_outputs)
        names = _class_names(manifest.class_names, k)
        results = _run_test_set(model, dataset, loss_fn, plan, device, cfg, task=task,
                                class_names=names, image_hw=image_hw(view["data.image_size"]))
        with atomic_dir(root / OUT) as staging:  # all four files, or none of them
            metrics = _write_outputs(staging, task, names, manifest.splits["test"], results)
        run.log_metrics(mlflow_metrics(metrics), step=0)
        for name in ("metrics.json", "confusion.csv", "confusion.png", "overlays.png"):
            run.log_artifact(root / OUT / name, "evaluate")
    shown = [key for key in ("test_loss", "dice", "iou", "accuracy", "macro_f1") if metrics.get(key) is not None]
    print(f"evaluate: {len(dataset)} test images: " + ", ".join(f"{key} {metrics[key]:.4f}" for key in shown))
    return metrics


def mlflow_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers of ``metrics.json`` as MLflow metrics, prefixed ``test_`` (train logs ``val_*``)."""
    return {key if key.startswith("test_") else f"test_{key}": float(value)
            for key, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def _class_names(names: Sequence[str] | None, num_classes: int) -> list[str]:
    return [str(n) for n in names] if names else [str(i) for i in range(num_classes)]


def _run_test_set(model: torch.nn.Module, dataset: ManifestDataset, loss_fn: Any, plan: Any,
                  device: torch.device, cfg: dict[str, Any], *, task: str, class_names: list[str],
                  image_hw: tuple[int, int]) -> dict[str, Any]:
    """One pass over the test set: the loss, the confusion meter, the confusion-plot rows (kept on
    the device until the end: no per-batch host sync) and the first ``cfg["overlays"]`` images with
    their predictions."""
    loader = DataLoader(dataset, batch_size=cfg["batch_size"], shuffle=False,
                        num_workers=cfg["workers"], pin_memory=device.type == "cuda")
    meter = make_meter(task, len(class_names), threshold=cfg["threshold"], class_names=class_names)
    total_loss = torch.zeros((), device=device)
    count = 0
    pixels = len(dataset) * image_hw[0] * image_hw[1]
    stride = max(1, math.ceil(pixels / cfg["confusion_sample"]))
    offset = 0
    actual: list[torch.Tensor] = []
    predicted: list[torch.Tensor] = []
    overlay: dict[str, list[np.ndarray]] = {"images": [], "targets": [], "preds": []}
    with torch.no_grad(), plan.autocast():
        for images, targets in loader:
            x, y = to_device(images, targets, device, channels_last=plan.channels_last)
            logits = model(x)
            total_loss += loss_fn(logits, y).detach().float() * x.shape[0]
            count += x.shape[0]
            logits = logits.float()
            meter.update(logits, y)
            pred = predict(logits, cfg["threshold"])
            if task == "classification":  # every image
                actual.append(y)
                predicted.append(pred)
            else:  # every stride-th pixel of the whole test set
                start = (-offset) % stride
                actual.append(y.reshape(-1)[start::stride])
                predicted.append(pred.reshape(-1)[start::stride])
                offset += y.numel()
            need = cfg["overlays"] - len(overlay["images"])
            if need > 0:
                overlay["images"] += [im.permute(1, 2, 0).numpy() for im in images[:need]]
                overlay["targets"] += [t.numpy() for t in targets[:need]]
                overlay["preds"] += [p.numpy() for p in pred[:need].cpu()]
    return {"meter": meter, "loss": total_loss.item() / count, "count": count,
            "actual": torch.cat(actual).cpu().tolist(), "predicted": torch.cat(predicted).cpu().tolist(),
            **overlay}


def _write_outputs(out: Path, task: str, names: list[str], test_entries: Sequence[Any],
                   results: dict[str, Any]) -> dict[str, Any]:
    """Write metrics.json, confusion.csv, confusion.png and overlays.png into ``out``."""
    meter = results["meter"]
    k = len(names)
    matrix = meter.confusion_matrix()
    loss = results["loss"]
    if not math.isfinite(loss):  # JSON has no NaN; DVC shows a missing value instead
        print(f"evaluate: warning: the test loss is {loss}; written as null", file=sys.stderr)
    metrics: dict[str, Any] = {"test_loss": loss if math.isfinite(loss) else None, "images": results["count"]}
    metrics |= meter.compute()
    metrics |= {"confusion_matrix": matrix, "class_names": names}
    pairs = zip(results["actual"], results["predicted"])
    if task == "classification":
        rows = [(entry["image"], names[a], names[p]) for entry, (a, p) in zip(test_entries, pairs)]
        header: tuple[str, ...] = ("image", "actual", "predicted")
    else:
        rows = [(names[a], names[p]) for a, p in pairs if 0 <= a < k]
        header = ("actual", "predicted")
    write_text(out / "confusion.csv", _confusion_csv(rows, header))
    unit = "test images" if task == "classification" else "test pixels"
    plots.save_png(out / "confusion.png", plots.draw_confusion(matrix, names, title=f"confusion matrix, {unit}"))
    if task == "classification":
        drawn = plots.draw_classification_overlays(
            results["images"], [names[int(t)] for t in results["targets"]],
            [names[int(p)] for p in results["preds"]])
    else:
        captions = [f"{Path(entry['image']).name}: dice {_image_dice(t, p, k):.3f}"
                    for entry, t, p in zip(test_entries, results["targets"], results["preds"])]
        drawn = plots.draw_segmentation_overlays(results["images"], results["targets"], results["preds"], captions)
    plots.save_png(out / "overlays.png", drawn)
    write_json(out / "metrics.json", metrics)
    return metrics


def _image_dice(target: np.ndarray, pred: np.ndarray, num_classes: int) -> float:
    """One image's Dice (the caption of its overlay row)."""
    counts = confusion_counts(torch.from_numpy(target), torch.from_numpy(pred), num_classes)
    return segmentation_metrics(counts)["dice"]


def _body(view: ParamsView) -> None:
    """Evaluate the trained model on the test split: metrics, confusion matrix, overlays."""
    evaluate(view)


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage("evaluate", PARAMS, _body, argv)


if __name__ == "__main__":
    sys.exit(main())
