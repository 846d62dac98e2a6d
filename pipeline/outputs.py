"""Where each stage writes, declared once (relative to the params file's folder, the repo root).

``dvc.yaml`` lists the same paths as the stages' ``outs``/``metrics``/``plots``; a test holds the two
in step. A stage that reads another's output asks :func:`require` for it, so "run stage X first"
is said one way everywhere.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config.errors import PipelineError

VALIDATED = Path("outputs/validate/valid.json")

MANIFEST = Path("outputs/split/manifest.json")

DECODE = Path("outputs/decode")  # the decoded cache: index.json and per-split shards

AUGMENT_PREVIEW = Path("outputs/preview/augment.png")  # the preview stage's, so no training input
AUGMENT_CACHE = Path("outputs/augment/cache")

MODEL_INIT = Path("outputs/model/init.safetensors")
MODEL_SUMMARY = Path("outputs/model/summary.json")

TRAIN = Path("outputs/train")
TRAIN_BEST = TRAIN / "best.safetensors"
TRAIN_HISTORY = TRAIN / "history.csv"
TRAIN_HISTORY_PNG = TRAIN / "history.png"
TRAIN_VALIDATION = TRAIN / "validation.csv"  # the validation scores in long form, for `dvc plots`
TRAIN_PARAMS = TRAIN / "params.resolved.yaml"
TRAIN_RUN = TRAIN / "run.json"
TRAIN_CHECKPOINT = TRAIN / "checkpoint"
TRAIN_METRICS = TRAIN / "metrics.json"
TRAIN_SUMMARY = TRAIN / "summary.json"

EVALUATE = Path("outputs/evaluate")
EVALUATE_METRICS = EVALUATE / "metrics.json"
EVALUATE_SUMMARY = EVALUATE / "summary.json"
EVALUATE_PER_CLASS = EVALUATE / "per_class.csv"  # the per-class scores in long form, for `dvc plots`
EVALUATE_CONFUSION_CSV = EVALUATE / "confusion.csv"
EVALUATE_CONFUSION_PNG = EVALUATE / "confusion.png"
EVALUATE_OVERLAYS = EVALUATE / "overlays.png"

EXPORT_ONNX = Path("outputs/export/model.onnx")

# What each stage writes, as dvc.yaml declares it (outs, metrics and plots together).
BY_STAGE: dict[str, tuple[Path, ...]] = {
    "validate": (VALIDATED,),
    "split": (MANIFEST,),
    "decode": (DECODE,),
    "augment": (AUGMENT_CACHE,),
    "model": (MODEL_INIT, MODEL_SUMMARY),
    "train": (
        TRAIN_BEST,
        TRAIN_HISTORY,
        TRAIN_HISTORY_PNG,
        TRAIN_VALIDATION,
        TRAIN_PARAMS,
        TRAIN_RUN,
        TRAIN_CHECKPOINT,
        TRAIN_METRICS,
        TRAIN_SUMMARY,
    ),
    "evaluate": (
        EVALUATE_METRICS,
        EVALUATE_SUMMARY,
        EVALUATE_PER_CLASS,
        EVALUATE_CONFUSION_CSV,
        EVALUATE_CONFUSION_PNG,
        EVALUATE_OVERLAYS,
    ),
    "export": (EXPORT_ONNX,),
    "preview": (AUGMENT_PREVIEW,),
}


def producer(path: Path) -> str:
    """The stage that writes ``path`` (relative, as in :data:`BY_STAGE`)."""
    for stage, paths in BY_STAGE.items():
        if any(path == p or p in path.parents for p in paths):
            return stage
    raise ValueError(f"{path} is no stage output")


def require(root: Path, path: Path) -> Path:
    """``root / path``, which another stage wrote; if it is missing, say which stage to run."""
    full = root / path
    if not full.exists():
        stage = producer(path)
        raise PipelineError(f"{full} not found; run the {stage} stage first (dvc repro {stage})")
    return full
