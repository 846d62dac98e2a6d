"""The preview stage on a tiny workspace: a seeded grid of the expected size, attached to the training's
MLflow run when train recorded one, drawn alone (nothing attached) before any training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.plots import grid_size
from stages import preview
from tests.conftest import make_workspace

PICTURE = Path("outputs") / "preview" / "augment.png"


def workspace(root: Path, **overrides: object) -> Path:
    """Eight images split 4/2/2 (four to augment), resized to 16x20, a preview of 3 images x 5 versions."""
    return make_workspace(
        root,
        images=8,
        stages=("split",),
        **{
            "split.fractions": {"train": 0.5, "val": 0.25, "test": 0.25},
            "data.image_size": [16, 20],
            "augment.preview": {"images": 3, "versions": 5, "seed": 0},
            **overrides,
        },
    )


def test_preview_stage_writes_a_seeded_grid_of_expected_size(tmp_path):
    params = workspace(tmp_path)
    assert preview.main(["--params", str(params)]) == 0
    with Image.open(tmp_path / PICTURE) as picture:
        picture.load()
        assert picture.format == "PNG" and picture.mode == "RGB"
        height, width = grid_size(3, 1 + 5, (16, 20))
        assert picture.size == (width, height)
        pixels = np.asarray(picture)
    assert (pixels[0] == 255).all()  # the white gap above the first row
    cells = [pixels[2 + r * 18 : 2 + r * 18 + 16, 2 : 2 + 20] for r in range(3)]
    assert len({c.tobytes() for c in cells}) == 3  # three different images
    first = (tmp_path / PICTURE).read_bytes()
    assert preview.main(["--params", str(params)]) == 0
    assert (tmp_path / PICTURE).read_bytes() == first  # seeded


def test_preview_is_attached_to_the_run_train_recorded(tmp_path):
    from mlflow import MlflowClient

    from pipeline.tracking import run as tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = workspace(tmp_path, **{"tracking.enabled": True, "tracking.uri": uri, "tracking.system_metrics": 0})
    cfg = {"enabled": True, "uri": uri, "experiment": "t", "run_name": None, "system_metrics": 0}
    with tracking.start_run(cfg, repo_root=tmp_path, run_name="train") as run:  # what train records
        run_id = run.run_id
    record = tmp_path / "outputs" / "train" / "run.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"run_id": run_id, "tracking_uri": uri}))
    assert preview.main(["--params", str(params)]) == 0
    names = {a.path for a in MlflowClient(tracking_uri=uri).list_artifacts(run_id)}
    assert "augment_preview.png" in names
