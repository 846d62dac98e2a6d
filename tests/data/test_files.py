"""Reading files: the mask convention (every mode PIL opens, binary and multi-class), and the data
checks `python -m pipeline validate` runs (data.root and the segmentation folders)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from pipeline.config.errors import ConfigError, PipelineError
from pipeline.config.params import load_params
from pipeline.data.files import mask_array, mask_to_classes, mask_values
from tests.conftest import REPO, write_params

# -- masks -------------------------------------------------------------------------------------


def test_mask_modes_give_stored_values():
    values = np.array([[0, 1], [2, 3]], np.uint8)
    palette = Image.fromarray(values, "L").convert("P")
    assert mask_array(palette, "m").tolist() == values.tolist()
    assert mask_values(palette, "m") == (0, 1, 2, 3)
    assert mask_values(Image.fromarray(values * 85), "m") == (0, 85, 170, 255)
    assert mask_array(Image.fromarray(values > 1), "m").tolist() == [[0, 0], [1, 1]]
    assert mask_values(Image.fromarray(values > 1), "m") == (0, 1)
    assert mask_array(Image.fromarray(np.stack([values * 80] * 3, -1)), "m").tolist() == [[0, 80], [160, 240]]
    assert mask_array(Image.fromarray(values * 80).convert("RGBA"), "m").tolist() == [[0, 80], [160, 240]]
    assert mask_array(Image.fromarray(values * 80).convert("LA"), "m").tolist() == [[0, 80], [160, 240]]
    assert mask_array(Image.fromarray(values.astype(np.uint16)), "m").tolist() == values.tolist()
    assert mask_values(Image.fromarray(values.astype(np.int32)), "m") == (0, 1, 2, 3)


def test_colour_masks_and_out_of_range_values_are_refused():
    colour = np.zeros((2, 2, 3), np.uint8)
    colour[0, 0] = (255, 0, 0)
    with pytest.raises(PipelineError, match=r"m\.png: a colour mask"):
        mask_array(Image.fromarray(colour), "m.png")
    with pytest.raises(PipelineError, match=r"class indices 0\.\.255"):
        mask_array(Image.fromarray(np.array([[0, 300]], np.int32)), "m.png")


def test_binary_masks_map_to_zero_one_and_multiclass_masks_stay():
    stored = np.array([0, 255, 0, 1], np.uint8)
    assert mask_to_classes(stored, 2).tolist() == [0, 1, 0, 1]
    assert mask_to_classes(np.array([0, 2, 1]), 3).tolist() == [0, 2, 1]


# -- semantic checks (python -m pipeline validate) ---------------------------------------------


def test_validate_reports_a_missing_data_root_by_key(tmp_path):
    path = write_params(tmp_path / "params.yaml", replace={"root: data/shapes-seg": "root: no/such/folder"})
    text = path.read_text()
    with pytest.raises(ConfigError) as info:
        load_params(path)
    problems = {p.key: p.message for p in info.value.problems}
    assert "does not exist" in problems["data.root"] and "no/such/folder" in problems["data.root"]
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "no/such/folder" in t)
    assert next(p.line for p in info.value.problems if p.key == "data.root") == line


def test_validate_reports_missing_and_escaping_segmentation_folders(tmp_path):
    (tmp_path / "d" / "images").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    path = write_params(
        tmp_path / "params.yaml",
        replace={"root: data/shapes-seg": "root: d", "masks_dir: masks": "masks_dir: ../outside"},
    )
    with pytest.raises(ConfigError) as info:
        load_params(path)
    problems = {p.key: p.message for p in info.value.problems}
    assert "outside data.root" in problems["data.masks_dir"]
    assert "data.images_dir" not in problems
    shutil.rmtree(tmp_path / "d" / "images")
    with pytest.raises(ConfigError) as info:
        load_params(write_params(path, replace={"root: data/shapes-seg": "root: d"}))
    assert {p.key for p in info.value.problems if p.key.startswith("data.")} == {"data.images_dir", "data.masks_dir"}


def test_repo_params_validate_with_the_embedded_data():
    params = load_params(REPO / "params.yaml")
    assert params.resolve_path(params.get("data.root")).is_dir()
