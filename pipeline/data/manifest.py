"""The split manifest (``outputs/split/manifest.json``): which file is in which split. The split stage
writes it; every later stage reads it through :func:`load_manifest`."""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from pipeline import outputs
from pipeline.config.errors import PipelineError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Manifest:
    """The split stage's output (``outputs/split/manifest.json``): which files are in which split.

        Entries are paths relative to ``root`` (as written in params.yaml): segmentation
        ``{"image", "mask"}``, classification ``{"image", "label"}``, multilabel ``{"image", "labels"}``
    (the class indices present, possibly none), each with its ``group`` when
        ``split.group_by`` is set. ``summary``: the achieved fractions, groups per split, cross-split
        duplicates and the fold (see :func:`pipeline.data.split.describe`)."""

    task: str
    root: str
    num_classes: int
    class_names: list[str]
    splits: dict[str, list[dict[str, Any]]]
    counts: dict[str, dict[str, int]]
    fingerprint: str
    summary: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_manifest(path: str | Path) -> Manifest:
    """Read a manifest written by the split stage; a clear error if it is missing or damaged."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path}: no manifest; run the split stage first (dvc repro split)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PipelineError(f"{path}: not a readable manifest ({exc}); re-run the split stage") from None
    required = {f.name for f in fields(Manifest) if f.default is MISSING and f.default_factory is MISSING}
    if not isinstance(raw, dict) or required - set(raw):
        missing = sorted(required - set(raw)) if isinstance(raw, dict) else sorted(required)
        raise PipelineError(f"{path}: not a split manifest (missing {', '.join(missing)}); re-run the split stage")
    manifest = Manifest(**{f.name: raw[f.name] for f in fields(Manifest) if f.name in raw})
    needed = {
        "segmentation": ("image", "mask"),
        "classification": ("image", "label"),
        "multilabel": ("image", "labels"),
    }.get(manifest.task)
    if (
        needed is None
        or not isinstance(manifest.splits, dict)
        or any(
            split not in manifest.splits
            or not all(isinstance(e, dict) and all(k in e for k in needed) for e in manifest.splits[split])
            for split in SPLITS
        )
    ):
        raise PipelineError(
            f"{path}: damaged manifest (task {manifest.task!r}, splits {SPLITS} with "
            f"entries holding {needed}); re-run the split stage"
        )
    return manifest


def read_manifest(root: Path, task: str) -> Manifest:
    """The split stage's manifest under ``root``, which must be a split of ``task`` (``data.task``)."""
    manifest = load_manifest(outputs.require(root, outputs.MANIFEST))
    if manifest.task != task:
        raise PipelineError(
            f"{root / outputs.MANIFEST} is a {manifest.task} split but data.task is {task!r}; "
            "re-run the split stage (dvc repro split)"
        )
    return manifest
