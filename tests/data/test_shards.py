"""The shard format both caches share: shards sized and listed, samples located in them, the index read
back, and a missing index named with the stage that writes it."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config.errors import PipelineError
from pipeline.data.shards import INDEX, allocate_shards, locate, read_index, write_disabled


@pytest.mark.parametrize("segmentation", [True, False])
def test_shards_hold_every_sample_once(tmp_path, segmentation):
    shards: list[dict] = []
    arrays = allocate_shards(tmp_path, shards, (4, 6), 5, 2, segmentation)
    assert [(s["start"], s["count"]) for s in shards] == [(0, 2), (2, 2), (4, 1)]
    images, targets = arrays[2]
    assert images.shape == (1, 3, 4, 6) and images.dtype == np.uint8
    assert targets.shape == ((1, 4, 6) if segmentation else (1,))
    assert targets.dtype == (np.uint8 if segmentation else np.int64)
    starts = [s["start"] for s in shards]
    assert [locate(starts, i) for i in range(5)] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(s[k] for s in shards for k in ("images", "targets"))


def test_a_disabled_cache_is_an_index_that_says_why(tmp_path):
    written = write_disabled(tmp_path / "cache", reason="off for a test", format_version=7)
    assert (
        read_index(tmp_path / "cache", stage="decode")
        == written
        == {
            "enabled": False,
            "format": 7,
            "reason": "off for a test",
        }
    )
    assert (tmp_path / "cache" / INDEX).is_file()


def test_a_missing_or_broken_index_names_the_stage_to_run(tmp_path):
    with pytest.raises(PipelineError, match=r"index.json not found: run the augment stage first \(dvc repro augment\)"):
        read_index(tmp_path, stage="augment")
    (tmp_path / INDEX).write_text("{not json")
    with pytest.raises(PipelineError, match=r"not a readable index .*dvc repro decode"):
        read_index(tmp_path, stage="decode")
