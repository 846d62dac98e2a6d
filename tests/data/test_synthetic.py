"""The embedded default datasets: committed files = what the generator makes, and they are usable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data.synthetic import (
    CLASS_NAMES,
    CLASSIFICATION_DEFAULTS,
    REPO_DATA,
    SEGMENTATION_DEFAULTS,
    classification_scene,
    generate_classification,
    generate_segmentation,
    segmentation_scene,
)

SEG = REPO_DATA / "shapes-seg"
CLS = REPO_DATA / "shapes-cls"


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def _seg_arrays() -> tuple[np.ndarray, np.ndarray]:
    names = sorted(p.name for p in (SEG / "images").iterdir())
    return (
        np.stack([_pixels(SEG / "images" / n) for n in names]),
        np.stack([_pixels(SEG / "masks" / n) for n in names]),
    )


def test_committed_segmentation_matches_the_generator_pixel_for_pixel():
    cfg = SEGMENTATION_DEFAULTS
    names = sorted(p.name for p in (SEG / "images").iterdir())
    assert names == [f"shape_{i:04d}.png" for i in range(cfg["n"])]
    assert sorted(p.name for p in (SEG / "masks").iterdir()) == names
    for i, name in enumerate(names):
        image, mask = segmentation_scene(cfg["seed"], i, cfg["size"])
        np.testing.assert_array_equal(_pixels(SEG / "images" / name), image, err_msg=name)
        np.testing.assert_array_equal(_pixels(SEG / "masks" / name), mask, err_msg=name)


def test_committed_classification_matches_the_generator_pixel_for_pixel():
    cfg = CLASSIFICATION_DEFAULTS
    assert sorted(p.name for p in CLS.iterdir()) == list(CLASS_NAMES)
    for class_index, name in enumerate(CLASS_NAMES):
        files = sorted((CLS / name).iterdir())
        assert [f.name for f in files] == [f"{name}_{i:04d}.png" for i in range(cfg["n_per_class"])]
        for i, file in enumerate(files):
            expected = classification_scene(cfg["seed"], class_index, i, cfg["size"])
            np.testing.assert_array_equal(_pixels(file), expected, err_msg=str(file))


def test_committed_datasets_stay_small_in_git():
    total = sum(p.stat().st_size for p in REPO_DATA.rglob("*.png"))
    assert total < 4_000_000, f"{total} bytes of PNG under data/"


def test_segmentation_is_not_a_single_channel_threshold():
    """Objects must differ from the background by colour and texture *within* a scene: no global
    threshold on R, G, B or grey gets near a learned model (a small U-Net reaches Dice > 0.9)."""
    images, masks = _seg_arrays()
    assert set(np.unique(masks)) == {0, 255}
    foreground = masks > 0
    assert 0.05 < foreground.mean() < 0.3
    best = 0.0
    channels = [images[..., 0], images[..., 1], images[..., 2], images.mean(-1).astype(np.uint8)]
    for channel in channels:
        in_fg = np.bincount(channel[foreground], minlength=256)
        every = np.bincount(channel.ravel(), minlength=256)
        for fg, al in ((in_fg, every), (in_fg[::-1], every[::-1])):  # predict fg above / below t
            tp, predicted = np.cumsum(fg[::-1])[::-1], np.cumsum(al[::-1])[::-1]
            best = max(best, float((2 * tp / (predicted + foreground.sum())).max()))
    assert best < 0.4, best


def test_generators_write_the_user_layout_deterministically(tmp_path):
    generate_segmentation(tmp_path / "a", n=6, size=24, seed=7)
    generate_segmentation(tmp_path / "b", n=6, size=24, seed=7)
    generate_segmentation(tmp_path / "c", n=6, size=24, seed=8)
    names = sorted(p.name for p in (tmp_path / "a" / "images").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "a" / "masks").iterdir()) and len(names) == 6
    for name in names:
        image, mask = _pixels(tmp_path / "a" / "images" / name), _pixels(tmp_path / "a" / "masks" / name)
        assert image.shape == (24, 24, 3) and image.dtype == np.uint8
        assert mask.shape == (24, 24) and set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(image, _pixels(tmp_path / "b" / "images" / name))
    assert any(
        not np.array_equal(_pixels(tmp_path / "a" / "images" / n), _pixels(tmp_path / "c" / "images" / n))
        for n in names
    )

    generate_classification(tmp_path / "cls", n_per_class=2, size=20, seed=1)
    assert {p.relative_to(tmp_path / "cls").as_posix() for p in (tmp_path / "cls").rglob("*.png")} == {
        f"{c}/{c}_{i:04d}.png" for c in CLASS_NAMES for i in range(2)
    }


def test_generation_replaces_the_folder_whole(tmp_path):
    root = tmp_path / "seg"
    generate_segmentation(root, n=3, size=16, seed=0)
    (root / "images" / "stray.png").write_bytes(b"old")
    generate_segmentation(root, n=2, size=16, seed=0)
    assert sorted(p.name for p in (root / "images").iterdir()) == ["shape_0000.png", "shape_0001.png"]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_each_class_image_holds_one_shape_in_a_distinct_colour(index):
    image = classification_scene(CLASSIFICATION_DEFAULTS["seed"], index, 0, 64).astype(float)
    corners = image[[0, 0, -1, -1], [0, -1, 0, -1]]
    centre_distance = np.sqrt(((image - corners.mean(0)) ** 2).sum(-1))
    assert (centre_distance > 60).mean() > 0.05  # some pixels clearly off the background colour


def test_committed_multilabel_matches_the_generator_and_lists_what_is_drawn():
    from pipeline.data.synthetic import MULTILABEL_DEFAULTS, multilabel_scene

    cfg, root = MULTILABEL_DEFAULTS, REPO_DATA / "shapes-multi"
    lines = (root / "labels.csv").read_text().splitlines()
    assert lines[0] == "path,labels" and len(lines) == cfg["n"] + 1
    sets = []
    for i, line in enumerate(lines[1:]):
        image, present = multilabel_scene(cfg["seed"], i, cfg["size"])
        assert line == f"images/scene_{i:04d}.png,{';'.join(present)}"
        np.testing.assert_array_equal(_pixels(root / "images" / f"scene_{i:04d}.png"), image)
        sets.append(present)
    assert () in sets and any(len(s) == 3 for s in sets)  # images with none and with all three
    assert {name for s in sets for name in s} == set(CLASS_NAMES)
