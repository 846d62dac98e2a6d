"""The manifest file the split stage writes: it round-trips, and a missing or damaged one says what to do."""

from __future__ import annotations

import json

import pytest

from pipeline.atomic import write_json
from pipeline.config.errors import PipelineError
from pipeline.data.manifest import load_manifest
from tests.data.test_dataset import classification_manifest


def test_manifest_round_trip(tmp_path):
    manifest = classification_manifest(tmp_path / "data")
    write_json(tmp_path / "manifest.json", manifest.to_dict())
    loaded = load_manifest(tmp_path / "manifest.json")
    assert loaded == manifest


def test_missing_or_damaged_manifest_says_what_to_do(tmp_path):
    with pytest.raises(PipelineError, match=r"no manifest; run the split stage"):
        load_manifest(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PipelineError, match=r"bad\.json: not a readable manifest"):
        load_manifest(tmp_path / "bad.json")
    (tmp_path / "partial.json").write_text(json.dumps({"task": "segmentation", "root": "x"}))
    with pytest.raises(PipelineError, match=r"missing class_names, counts, fingerprint, num_classes, splits"):
        load_manifest(tmp_path / "partial.json")
    manifest = classification_manifest(tmp_path / "data").to_dict()
    manifest["splits"]["val"] = [{"image": "class0/0.png"}]  # no label
    write_json(tmp_path / "damaged.json", manifest)
    with pytest.raises(PipelineError, match="damaged manifest"):
        load_manifest(tmp_path / "damaged.json")
