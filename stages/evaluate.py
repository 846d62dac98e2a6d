"""The evaluate stage: the trained model on the test split, with evaluation preprocessing only.

``python -m stages.evaluate`` reads the split manifest, the best weights and the MLflow run id train
wrote, and writes ``outputs/evaluate/`` (as a whole, atomically):

- ``metrics.json`` (DVC metrics): ``test_loss`` (batch losses weighted by batch size) and the task's
  headline scores from :mod:`pipeline.training.metrics` (segmentation: pooled ``dice``, ``iou``,
  ``pixel_accuracy``; classification: ``accuracy``, ``macro_f1``; multilabel: ``map``, ``macro_f1``,
  ``micro_f1``, ``exact_match`` at ``evaluate.threshold``);
- ``summary.json``: the test image count, ``class_names``, the ``confusion_matrix`` (rows = actual)
  and ``per_class`` scores (segmentation dice/iou, classification precision/recall/f1, multilabel
  ap/f1/precision/recall);
- ``per_class.csv`` (DVC plots, per_class template): those per-class scores as ``class,metric,value``;
- ``confusion.csv`` (DVC plots, confusion template): ``actual,predicted`` rows; classification one
  per test image (with its path), segmentation a deterministic every-k-th-pixel sample;
- ``confusion.png`` and ``overlays.png``: the matrix drawn, and a few test images with predictions.

Test metrics, per-class ones included, and these files go into train's MLflow run
(``outputs/train/run.json``), as ``test_*``.
The scoring pass is validation's own (:mod:`pipeline.training.scoring`); the rest of the work is in
:mod:`pipeline.training.evaluation`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from pipeline import outputs
from pipeline.atomic import atomic_dir
from pipeline.augment.transform import build_transform
from pipeline.config.errors import PipelineError
from pipeline.config.params import ParamsView, flatten
from pipeline.data.dataset import ManifestDataset, image_hw
from pipeline.data.manifest import read_manifest
from pipeline.models.file import load_model
from pipeline.models.input_contract import resolve_device
from pipeline.models.tiling import tile_settings, tiled_model
from pipeline.stage import run_stage
from pipeline.tracking import run as tracking
from pipeline.training.evaluation import class_names, mlflow_metrics, run_test_set, write_outputs
from pipeline.training.losses import build_loss
from pipeline.training.losses.auto import train_counts
from pipeline.training.multilabel_metrics import class_thresholds
from pipeline.training.precision import resolve_precision

PARAMS = (
    "data.task",
    "data.image_size",
    "data.resize",
    "data.max_side",
    "augment.eval",
    "evaluate",
    "precision",
    "loss",
)
RECORD_PARAMS = ("tracking",)  # where the test metrics are recorded, not what they are: no DVC param


def evaluate(view: ParamsView) -> dict[str, Any]:
    """Evaluate the trained model on the test split; write metrics and plots; return the metrics."""
    cfg, task, root = view["evaluate"], view["data.task"], view.root
    manifest = read_manifest(root, task)
    weights = outputs.require(root, outputs.TRAIN_BEST)
    run_id = tracking.read_run_info(outputs.require(root, outputs.TRAIN_RUN)).get("run_id")
    device = resolve_device(cfg["device"], key="evaluate.device")
    plan = resolve_precision(view["precision"], device)
    native = view["data.resize"] == "none"  # whole test images, each by tiles (evaluate.tile)
    dataset = ManifestDataset(
        manifest,
        "test",
        root=view.resolve_path(manifest.root),
        image_size=view["data.image_size"],
        transform=build_transform(view["augment.eval"], task=task),
        resize=view["data.resize"],
        max_side=view["data.max_side"],
    )
    if len(dataset) == 0:
        raise PipelineError("the test split is empty; raise split.fractions.test")
    model, info = load_model(weights, trust_code=True)  # train wrote it from params.yaml's own model
    k = manifest.num_classes
    num_outputs = int(info.config["num_outputs"])
    names = class_names(manifest.class_names, k)
    cfg = {**cfg, "threshold": class_thresholds(cfg["threshold"], task, names)}
    if num_outputs not in (k, 1 if k == 2 and task != "multilabel" else k):
        raise PipelineError(
            f"{outputs.TRAIN_BEST} has {num_outputs} outputs but the data has {k} classes "
            f"(expected {k}{' or 1' if k == 2 else ''}); check model.num_classes"
        )
    # Opened before the evaluation so an unreachable server fails at the start, not after it.
    run = (
        tracking.start_run(view["tracking"], repo_root=root, run_id=run_id, run_name=f"{task}-evaluate")
        if run_id
        else tracking.NullRun()
    )
    with run:
        # Train logged every param; a value changed since (say evaluate.threshold) lands in a
        # changed_param.* tag, so the run says which settings its test metrics came from.
        run.log_params(flatten(view.all_params()))
        model = plan.prepare_model(model.to(device)).eval()
        size = image_hw(view["data.image_size"])
        scored = tiled_model(model, tile_settings(cfg["tile"], size)) if native else model
        loss_fn = build_loss(view["loss"], task=task, num_outputs=num_outputs, counts=train_counts(manifest))
        results = run_test_set(
            scored,
            dataset,
            loss_fn,
            plan,
            device,
            {**cfg, "batch_size": 1} if native else cfg,
            task=task,
            class_names=names,
            image_hw=size,
        )
        with atomic_dir(root / outputs.EVALUATE) as staging:  # all four files, or none of them
            metrics, summary = write_outputs(staging, task, names, manifest.splits["test"], results)
        run.log_metrics(mlflow_metrics(metrics, summary["per_class"]), step=0)
        run.set_tags({"test_images": summary["images"]})  # a count, not a measurement
        for path in outputs.BY_STAGE["evaluate"]:  # at the run's root (the compare view's), named apart
            run.log_artifact(
                root / path,
                name={outputs.EVALUATE_METRICS: "test_metrics.json", outputs.EVALUATE_SUMMARY: "test_summary.json"}.get(
                    path
                ),
            )
    shown = [
        key
        for key in ("test_loss", "dice", "iou", "accuracy", "map", "macro_f1", "micro_f1")
        if metrics.get(key) is not None
    ]
    print(f"evaluate: {len(dataset)} test images: " + ", ".join(f"{key} {metrics[key]:.4f}" for key in shown))
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage("evaluate", PARAMS, evaluate, argv, records=RECORD_PARAMS)


if __name__ == "__main__":
    sys.exit(main())
