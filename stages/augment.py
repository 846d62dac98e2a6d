"""The augment stage: the offline cache of the declared training augmentation.

``python -m stages.augment`` writes ``outputs/augment/cache/`` (the offline copies, or an index saying
the cache is disabled). The augmentation itself is :mod:`pipeline.augment.augmenters`; the picture of it is
the preview stage's (:mod:`stages.preview`), so that a preview edit re-runs neither this nor train.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pipeline import outputs
from pipeline.augment import cache as augment_cache
from pipeline.augment.transform import build_transform
from pipeline.config.params import ParamsView
from pipeline.data.dataset import ManifestDataset
from pipeline.data.manifest import read_manifest
from pipeline.stage import run_stage

PARAMS = ("data.task", "data.image_size", "augment.train", "augment.random_order", "augment.offline")


def augment(view: ParamsView) -> list[Path]:
    """Write the offline cache (or its 'disabled' index); return the paths written."""
    task, size, offline = view["data.task"], view["data.image_size"], view["augment.offline"]
    root = view.root
    manifest = read_manifest(root, task)  # even for a disabled cache: its dep, so "run split first" is said here
    written = [root / outputs.AUGMENT_CACHE]
    if not offline["enabled"]:
        augment_cache.write_disabled(root / outputs.AUGMENT_CACHE)
        return written
    base = ManifestDataset(manifest, "train", root=view.resolve_path(manifest.root), image_size=size)
    transform = build_transform(view["augment.train"], task=task, random_order=view["augment.random_order"])
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
