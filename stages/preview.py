"""The preview stage: the grid of the declared training augmentation, attached to the training's run.

``python -m stages.preview`` writes ``outputs/preview/augment.png`` (each row: a training image, then
augmented versions, masks overlaid) and, when train has recorded an MLflow run (``outputs/train/
run.json``), logs it there as ``augment_preview.png``.

Why a stage of its own, after train: ``augment.preview`` (how many images, versions, the seed) decides
a picture and nothing that is trained. Drawn by the augment stage and logged by train, the picture was
a dep of train, so showing five images instead of four re-ran training (with identical weights). Here
no training input depends on it: a preview edit re-runs this stage alone, and the picture still lands
in the training's run. Before any training, ``python -m stages.preview`` draws it and attaches nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline import outputs, plots
from pipeline.augment.preview import preview_rows
from pipeline.augment.transform import build_transform
from pipeline.config.params import ParamsView
from pipeline.data.dataset import ManifestDataset, image_hw
from pipeline.data.manifest import read_manifest
from pipeline.stage import run_stage
from pipeline.tracking import run as tracking

PARAMS = ("data.task", "data.image_size", "augment.train", "augment.random_order", "augment.preview")
RECORD_PARAMS = ("tracking",)  # where the picture is recorded, not what it shows: no DVC param


def preview(view: ParamsView) -> Path:
    """Draw the augmentation preview grid; attach it to train's MLflow run when there is one."""
    task, size, shown = view["data.task"], view["data.image_size"], view["augment.preview"]
    root = view.root
    manifest = read_manifest(root, task)
    base = ManifestDataset(manifest, "train", root=view.resolve_path(manifest.root), image_size=size)
    transform = build_transform(view["augment.train"], task=task, random_order=view["augment.random_order"])
    rows = preview_rows(
        base,
        transform,
        images=shown["images"],
        versions=shown["versions"],
        seed=shown["seed"],
        segmentation=task == "segmentation",
    )
    out = root / outputs.AUGMENT_PREVIEW
    plots.save_png(out, plots.render_grid(rows, image_hw(size)))
    print(f"preview: wrote {outputs.AUGMENT_PREVIEW} ({len(rows)} images x {shown['versions']} versions)")
    record = root / outputs.TRAIN_RUN
    run_id = tracking.read_run_info(record).get("run_id") if record.exists() else None
    if run_id:
        with tracking.start_run(view["tracking"], repo_root=root, run_id=run_id) as run:
            run.log_artifact(out, name="augment_preview.png")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage("preview", PARAMS, preview, argv, records=RECORD_PARAMS)


if __name__ == "__main__":
    sys.exit(main())
