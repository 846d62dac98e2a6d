"""What predict reads: files, folders (recursively) and globs, each image once and in order; a name that
matches nothing is an error naming it; a broken link inside a folder is listed with its reason."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from pipeline.config.errors import PipelineError
from pipeline.inference.images import find_inputs


def _png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4)).save(path)
    return path


def test_files_folders_and_globs_each_once_in_order(tmp_path):
    a, b, c = _png(tmp_path / "in/a.png"), _png(tmp_path / "in/sub/b.PNG"), _png(tmp_path / "other/c.png")
    (tmp_path / "in/notes.txt").write_text("not an image")
    found = find_inputs([str(c), str(tmp_path / "in"), str(tmp_path / "*/c.png"), str(a)])
    assert found == [c, a, b]


def test_a_name_that_matches_nothing_is_named(tmp_path):
    with pytest.raises(PipelineError, match=r"missing\.png: no such file or folder"):
        find_inputs([str(tmp_path / "missing.png")])
    with pytest.raises(PipelineError, match=r"\*\.jpg: no file matches this pattern"):
        find_inputs([str(tmp_path / "*.jpg")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match="no images found in"):
        find_inputs([str(tmp_path / "empty")])


def test_a_broken_link_in_a_folder_is_listed_with_its_reason(tmp_path):
    good = _png(tmp_path / "in/good.png")
    os.symlink(tmp_path / "gone.png", tmp_path / "in/broken.png")
    failed: list[tuple[str, str]] = []
    assert find_inputs([str(tmp_path / "in")], failed) == [good]
    assert failed == [(str(tmp_path / "in/broken.png"), f"a broken link (to {tmp_path / 'gone.png'})")]
