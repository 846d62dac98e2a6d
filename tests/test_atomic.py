"""Outputs appear whole or not at all."""
from __future__ import annotations

import json

import pytest

from pipeline.atomic import atomic_dir, atomic_path, write_json


def test_write_json_is_stable_and_complete(tmp_path):
    target = tmp_path / "sub" / "m.json"
    write_json(target, {"b": 1, "a": [1, 2]})
    assert target.read_text() == json.dumps({"a": [1, 2], "b": 1}, indent=2, sort_keys=True) + "\n"
    assert [p.name for p in target.parent.iterdir()] == ["m.json"]


def test_failure_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "m.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_nan_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError):
        write_json(tmp_path / "m.json", {"x": float("nan")})
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_whole_directory(tmp_path):
    target = tmp_path / "cache"
    target.mkdir()
    (target / "stale").write_text("x")
    with atomic_dir(target) as tmp:
        (tmp / "new").write_text("y")
    assert sorted(p.name for p in target.iterdir()) == ["new"]
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "partial").write_text("z")
            raise RuntimeError("boom")
    assert sorted(p.name for p in target.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_outputs_get_the_usual_permissions(tmp_path):
    import os
    umask = os.umask(0o022)
    os.umask(umask)
    write_json(tmp_path / "m.json", {})
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o666 & ~umask
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "f").write_text("x")
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~umask
