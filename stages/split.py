"""The split stage: scan the dataset once, check it, and deal its files into train/val/test.

``python -m stages.split`` writes ``outputs/split/manifest.json``; the work is
:func:`pipeline.data.split.build_manifest`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from pipeline import outputs
from pipeline.atomic import write_json
from pipeline.config.params import ParamsView
from pipeline.data.split import build_manifest, describe
from pipeline.stage import run_stage

PARAMS = (
    "data.task",
    "data.root",
    "data.num_classes",
    "data.images_dir",
    "data.masks_dir",
    "data.mask_suffix",
    "data.labels",
    "split",
)


def split(view: ParamsView) -> dict[str, Any]:
    """Split the dataset into train/val/test; write and return the manifest."""
    root, cfg = view.resolve_path(view["data.root"]), view["split"]
    labels = view["data.labels"]
    manifest = build_manifest(
        root,
        task=view["data.task"],
        root_as_written=view["data.root"],
        num_classes=view["data.num_classes"],
        images_dir=view["data.images_dir"],
        masks_dir=view["data.masks_dir"],
        mask_suffix=view["data.mask_suffix"],
        labels_csv=root / labels if labels else None,
        seed=cfg["seed"],
        fractions=cfg["fractions"],
        stratify=cfg["stratify"],
        group_by=cfg["group_by"],
        folds=cfg["folds"],
        fold=cfg["fold"],
        duplicates=cfg["duplicates"],
    )
    write_json(view.root / outputs.MANIFEST, manifest)
    print(f"split: {describe(manifest)} -> {outputs.MANIFEST}")
    pairs = manifest["summary"]["duplicates"]["pairs"]
    if pairs and cfg["duplicates"] == "warn":
        print(
            f"split: warning: {manifest['summary']['duplicates']['across_splits']} image(s) are byte-identical "
            f"to one in another split (split.duplicates: drop removes them, error refuses): "
            + "; ".join(pairs[:5])
            + (" ..." if len(pairs) > 5 else ""),
            file=sys.stderr,
        )
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage("split", PARAMS, split, argv)


if __name__ == "__main__":
    sys.exit(main())
