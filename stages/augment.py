"""The augment stage: the preview grid of the declared training augmentation, and the offline cache.

``python -m stages.augment`` writes ``outputs/augment/preview.png`` (each row: a training image, then
augmented versions, masks overlaid) and ``outputs/augment/cache/`` (the offline copies, or an index
saying the cache is disabled). The augmentation itself is :mod:`pipeline.augment.augmenters`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pipeline import outputs, plots
from pipeline.augment import cache as augment_cache
from pipeline.augment.preview import preview_rows
from pipeline.augment.transform import build_transform
from pipeline.config.params import ParamsView
from pipeline.data.dataset import ManifestDataset, image_hw
from pipeline.data.manifest import read_manifest
from pipeline.stage import run_stage

PARAMS = ("data.task", "data.image_size", "augment")


def augment(view: ParamsView) -> list[Path]:
    """Write the augmentation preview grid and the offline cache (or its 'disabled' index); return
    the paths written."""
    task, size, cfg = view["data.task"], view["data.image_size"], view["augment"]
    root = view.root
    manifest = read_manifest(root, task)
    base = ManifestDataset(manifest, "train", root=view.resolve_path(manifest.root), image_size=size)
    transform = build_transform(cfg["train"], task=task, random_order=cfg["random_order"])
    shown = cfg["preview"]
    rows = preview_rows(
        base,
        transform,
        images=shown["images"],
        versions=shown["versions"],
        seed=shown["seed"],
        segmentation=task == "segmentation",
    )
    plots.save_png(root / outputs.AUGMENT_PREVIEW, plots.render_grid(rows, image_hw(size)))
    print(f"augment: wrote {outputs.AUGMENT_PREVIEW} ({len(rows)} images x {shown['versions']} versions)")
    written = [root / outputs.AUGMENT_PREVIEW, root / outputs.AUGMENT_CACHE]
    offline = cfg["offline"]
    if not offline["enabled"]:
        augment_cache.write_disabled(root / outputs.AUGMENT_CACHE)
        return written
    started = time.perf_counter()
    index = augment_cache.write_cache(
        root / outputs.AUGMENT_CACHE,
        base,
        transform,
        task=task,
        copies=offline["copies"],
        shard_size=offline["shard_size"],
        seed=offline["seed"],
        meta={
            "num_classes": manifest.num_classes,
            "class_names": manifest.class_names,
            "manifest_fingerprint": manifest.fingerprint,
        },
    )
    seconds = time.perf_counter() - started
    print(
        f"augment: wrote {outputs.AUGMENT_CACHE}: {index['samples']} images x {index['copies']} copies in "
        f"{len(index['shards'])} shard(s), {index['samples'] * index['copies'] / seconds:.0f} images/s"
    )
    return written


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage("augment", PARAMS, augment, argv)


if __name__ == "__main__":
    sys.exit(main())
