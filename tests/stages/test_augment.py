"""The augment stage on a tiny workspace: the disabled cache's index or the offline cache training
reads, and a clear refusal before the split stage has run."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.augment.cache import OfflineCacheDataset
from stages import augment
from tests.conftest import make_workspace


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


def test_augment_stage_writes_a_disabled_cache_and_no_preview(tmp_path):
    """The preview is the preview stage's (tests/stages/test_preview.py): a preview edit re-runs no training input."""
    params = workspace(tmp_path)
    assert augment.main(["--params", str(params)]) == 0
    index = (tmp_path / "outputs" / "augment" / "cache" / "index.json").read_text()
    assert '"enabled": false' in index
    assert sorted(p.name for p in (tmp_path / "outputs" / "augment").iterdir()) == ["cache"]


def test_augment_stage_refuses_a_missing_manifest(tmp_path, capsys):
    params = workspace(tmp_path)
    (tmp_path / "outputs" / "split" / "manifest.json").unlink()
    assert augment.main(["--params", str(params)]) == 2
    assert "run the split stage first" in capsys.readouterr().err
    assert not (tmp_path / "outputs" / "augment").exists()


def test_augment_stage_writes_the_cache_training_reads(tmp_path):
    params = workspace(
        tmp_path, **{"augment.offline.enabled": True, "augment.offline.copies": 3, "augment.offline.shard_size": 5}
    )
    assert augment.main(["--params", str(params)]) == 0
    cache = tmp_path / "outputs" / "augment" / "cache"
    index = json.loads((cache / "index.json").read_text())
    assert (index["samples"], index["copies"], len(index["shards"])) == (4, 3, 3)
    assert index["image_shape"] == [3, 16, 20] and index["class_names"] == ["background", "foreground"]
    dataset = OfflineCacheDataset(cache)
    dataset.set_epoch(2)
    image, mask = dataset[3]
    assert image.shape == (3, 16, 20) and mask.shape == (16, 20) and set(mask.unique().tolist()) <= {0, 1}
