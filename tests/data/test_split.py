"""Splitting: determinism, complete disjoint stratified splits, both layouts, every bad input."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pipeline.data.scan as scan_lib
from pipeline.atomic import write_json
from pipeline.config.errors import PipelineError
from pipeline.data.assign import deal
from pipeline.data.manifest import SPLITS
from pipeline.data.split import build_manifest
from tests.conftest import REPO

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def _save(path: Path, array: np.ndarray, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)


def _image(i: int, size: tuple[int, int] = (8, 10)) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 256, (*size, 3), dtype=np.uint8)


def make_classification(root: Path, sizes: dict[str, int]) -> Path:
    for c, (name, n) in enumerate(sorted(sizes.items())):
        for i in range(n):
            _save(root / name / f"{name}_{i:03d}.png", _image(1000 * c + i))
    return root


def make_segmentation(
    root: Path,
    n: int,
    *,
    stored: tuple[int, ...] = (0, 255),
    image_ext: str = ".png",
    mask_ext: str = ".png",
    mask_suffix: str = "",
    size: tuple[int, int] = (8, 10),
) -> Path:
    """``n`` pairs; every mask holds the values ``stored`` (cycled over its rows)."""
    for i in range(n):
        _save(root / "images" / f"im{i:03d}{image_ext}", _image(i, size))
        mask = np.zeros(size, np.uint8)
        for row, value in enumerate(stored):
            mask[row :: len(stored)] = value
        _save(root / "masks" / f"im{i:03d}{mask_suffix}{mask_ext}", mask)
    return root


def manifest(root: Path, task: str = "classification", **overrides) -> dict:
    kwargs = dict(task=task, root_as_written="data", num_classes=None, seed=42, fractions=FRACTIONS, stratify=True)
    return build_manifest(root, **{**kwargs, **overrides})


def _entries(m: dict) -> dict[str, list[str]]:
    return {s: [e["image"] for e in m["splits"][s]] for s in SPLITS}


# -- determinism and shape of the splits -------------------------------------------------------


def test_same_seed_same_bytes_other_seed_other_split(tmp_path):
    root = make_classification(tmp_path / "data", {"a": 20, "b": 14, "c": 9})
    write_json(tmp_path / "one.json", manifest(root))
    write_json(tmp_path / "two.json", manifest(root))
    write_json(tmp_path / "three.json", manifest(root, seed=43))
    assert (tmp_path / "one.json").read_bytes() == (tmp_path / "two.json").read_bytes()
    one, three = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "three.json").read_text())
    assert _entries(one) != _entries(three)
    assert one["fingerprint"] == three["fingerprint"] and one["counts"] == three["counts"]


def test_splits_are_disjoint_complete_and_sized_by_the_fractions(tmp_path):
    root = make_segmentation(tmp_path / "data", 40)
    m = manifest(root, task="segmentation", fractions={"train": 0.6, "val": 0.25, "test": 0.15})
    names = _entries(m)
    every = [n for s in SPLITS for n in names[s]]
    assert len(every) == len(set(every)) == 40
    assert set(every) == {f"images/im{i:03d}.png" for i in range(40)}
    assert [len(names[s]) for s in SPLITS] == [24, 10, 6]
    assert all(e["mask"] == e["image"].replace("images/", "masks/") for s in SPLITS for e in m["splits"][s])


def test_classification_is_stratified(tmp_path):
    sizes = {"cat": 40, "dog": 20, "eel": 10}
    root = make_classification(tmp_path / "data", sizes)
    m = manifest(root)
    assert m["class_names"] == ["cat", "dog", "eel"] and m["num_classes"] == 3
    for s in SPLITS:
        per_class = Counter(m["class_names"][e["label"]] for e in m["splits"][s])
        assert per_class == Counter(m["counts"][s])
        for name, n in sizes.items():
            assert abs(per_class[name] - FRACTIONS[s] * n) < 1, (s, name, per_class)
    for s in SPLITS:
        for e in m["splits"][s]:
            assert e["image"].split("/")[0] == m["class_names"][e["label"]]


def test_unstratified_split_ignores_classes_but_keeps_totals(tmp_path):
    root = make_classification(tmp_path / "data", {"a": 30, "b": 30})
    stratified, plain = manifest(root), manifest(root, stratify=False)
    assert [len(plain["splits"][s]) for s in SPLITS] == [42, 9, 9]
    assert _entries(plain) != _entries(stratified)


@pytest.mark.parametrize("n", [1, 7, 10, 33, 100])
def test_dealing_keeps_every_prefix_within_one_of_its_share(n):
    shares = [0.7, 0.2, 0.1]
    dealt = deal(n, shares)
    for prefix in range(1, n + 1):
        counts = Counter(dealt[:prefix])
        assert all(abs(counts[s] - shares[s] * prefix) < 1 for s in range(3)), (prefix, counts)


def test_worker_processes_give_the_same_manifest(tmp_path, monkeypatch):
    root = make_segmentation(tmp_path / "data", 12, stored=(0, 1, 2))
    inline = manifest(root, task="segmentation")
    monkeypatch.setattr(scan_lib, "PROCESS_THRESHOLD", 1)
    monkeypatch.setattr(scan_lib, "CHUNK", 2)
    assert manifest(root, task="segmentation") == inline
    (root / "masks" / "im007.png").write_bytes(b"broken")  # an error in a worker surfaces as itself
    with pytest.raises(PipelineError, match=r"masks/im007.png: not a readable mask"):
        manifest(root, task="segmentation")


# -- layouts and mask encodings ----------------------------------------------------------------


@pytest.mark.parametrize("stored", [(0, 255), (0, 1)])
def test_binary_masks_stored_either_way(tmp_path, stored):
    m = manifest(make_segmentation(tmp_path / "data", 10, stored=stored), task="segmentation")
    assert m["num_classes"] == 2 and m["class_names"] == ["background", "foreground"]
    assert sum(m["counts"][s]["foreground"] for s in SPLITS) == 10


def test_multiclass_masks_infer_and_check_num_classes(tmp_path):
    root = make_segmentation(tmp_path / "data", 9, stored=(0, 1, 3))
    m = manifest(root, task="segmentation")
    assert m["num_classes"] == 4 and m["class_names"] == ["background", "class_1", "class_2", "class_3"]
    assert sum(m["counts"][s]["class_2"] for s in SPLITS) == 0
    assert sum(m["counts"][s]["class_3"] for s in SPLITS) == 9
    assert manifest(root, task="segmentation", num_classes=6)["num_classes"] == 6
    with pytest.raises(PipelineError, match=r"data.num_classes is 3 but masks/im\d+\.png holds class 3"):
        manifest(root, task="segmentation", num_classes=3)


def test_carvana_naming_jpg_images_gif_masks(tmp_path):
    root = tmp_path / "carvana"
    for i in range(6):
        _save(root / "train" / f"car{i}_01.jpg", _image(i, (12, 18)), quality=90)
        mask = np.zeros((12, 18), np.uint8)
        mask[3:9, 4:14] = 1
        gif = Image.fromarray(mask, "L").convert("P")
        gif.putpalette([0, 0, 0, 255, 255, 255] + [0, 0, 0] * 254)
        gif.save(root / "train_masks" / f"car{i}_01_mask.gif") if (root / "train_masks").exists() else (
            (root / "train_masks").mkdir(),
            gif.save(root / "train_masks" / f"car{i}_01_mask.gif"),
        )
    m = manifest(
        root,
        task="segmentation",
        images_dir="train",
        masks_dir="train_masks",
        mask_suffix="_mask",
        fractions={"train": 0.5, "val": 0.25, "test": 0.25},
    )
    assert m["num_classes"] == 2
    assert sorted(e["mask"] for s in SPLITS for e in m["splits"][s]) == [
        f"train_masks/car{i}_01_mask.gif" for i in range(6)
    ]
    assert all(
        e["image"] == e["mask"].replace("train_masks/", "train/").replace("_mask.gif", ".jpg")
        for s in SPLITS
        for e in m["splits"][s]
    )


def test_fingerprint_follows_the_contents(tmp_path):
    root = make_classification(tmp_path / "data", {"a": 5, "b": 5})
    before = manifest(root)["fingerprint"]
    assert manifest(root, seed=1)["fingerprint"] == before
    _save(root / "a" / "a_000.png", _image(999))
    assert manifest(root)["fingerprint"] != before
    assert len(before) == 64 and int(before, 16) >= 0


def test_hidden_files_are_ignored(tmp_path):
    root = make_classification(tmp_path / "data", {"a": 5, "b": 5})
    (root / "a" / ".DS_Store").write_bytes(b"junk")
    (root / ".cache").mkdir()
    assert manifest(root)["num_classes"] == 2


def test_embedded_classification_data_splits_evenly():
    m = manifest(REPO / "data" / "shapes-cls", num_classes=3)
    assert m["class_names"] == ["circle", "square", "triangle"]
    assert m["counts"] == {s: dict.fromkeys(m["class_names"], n) for s, n in zip(SPLITS, (70, 15, 15))}


# -- bad input: a clear error naming the file or key -------------------------------------------


def test_missing_root(tmp_path):
    with pytest.raises(PipelineError, match=r"data.root: .*nowhere does not exist"):
        manifest(tmp_path / "nowhere")


def test_empty_class_folder(tmp_path):
    root = make_classification(tmp_path / "data", {"a": 5, "b": 5})
    (root / "empty").mkdir()
    with pytest.raises(PipelineError, match=r"empty: empty class folder"):
        manifest(root)


def test_images_at_root_instead_of_class_folders(tmp_path):
    _save(tmp_path / "flat" / "x.png", _image(0))
    with pytest.raises(PipelineError, match=r"no class folders \(1 images lie directly in it\)"):
        manifest(tmp_path / "flat")


def test_declared_num_classes_must_match_the_class_folders(tmp_path):
    root = make_classification(tmp_path / "data", {"a": 5, "b": 5})
    with pytest.raises(PipelineError, match=r"data.num_classes is 3 but .* has 2 class folders \(a, b\)"):
        manifest(root, num_classes=3)


def test_image_without_mask_and_mask_without_image(tmp_path):
    root = make_segmentation(tmp_path / "data", 6)
    os.remove(root / "masks" / "im002.png")
    with pytest.raises(PipelineError, match=r"1 image\(s\) without a mask .*: \S*/images/im002.png"):
        manifest(root, task="segmentation")
    root = make_segmentation(tmp_path / "data2", 6)
    os.remove(root / "images" / "im004.png")
    with pytest.raises(PipelineError, match=r"1 mask\(s\) without an image .*: \S*/masks/im004.png"):
        manifest(root, task="segmentation")


def test_wrong_mask_suffix_says_where_it_looked(tmp_path):
    root = make_segmentation(tmp_path / "data", 3, mask_suffix="_mask")
    with pytest.raises(PipelineError, match=r"3 image\(s\) without a mask \(looked for masks/<stem>\.<ext>"):
        manifest(root, task="segmentation")


def test_mask_size_differs_from_its_image(tmp_path):
    root = make_segmentation(tmp_path / "data", 4)
    _save(root / "masks" / "im001.png", np.zeros((9, 10), np.uint8))
    with pytest.raises(PipelineError, match=r"im001.png: mask is 10x9 but its image images/im001.png is 10x8"):
        manifest(root, task="segmentation")


@pytest.mark.parametrize("where", ["images/im003.png", "masks/im003.png"])
def test_corrupt_file(tmp_path, where):
    root = make_segmentation(tmp_path / "data", 5)
    (root / where).write_bytes(b"this is not an image at all")
    with pytest.raises(PipelineError, match=rf"{where}: not a readable"):
        manifest(root, task="segmentation")


def test_corrupt_jpeg_in_a_class_folder(tmp_path):
    root = make_classification(tmp_path / "data", {"a": 3, "b": 3})
    (root / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    with pytest.raises(PipelineError, match=r"b/broken.jpg: not a readable image"):
        manifest(root)


def test_unsupported_extension(tmp_path):
    root = make_classification(tmp_path / "data", {"a": 3, "b": 3})
    (root / "a" / "notes.txt").write_text("hello")
    with pytest.raises(PipelineError, match=r"a/notes.txt: unsupported file type '.txt'"):
        manifest(root)


def test_fractions_that_do_not_sum_to_one(tmp_path):
    root = make_classification(tmp_path / "data", {"a": 5, "b": 5})
    with pytest.raises(PipelineError, match=r"split.fractions: fractions must sum to 1, but train 0.7 \+ val 0.2"):
        manifest(root, fractions={"train": 0.7, "val": 0.2, "test": 0.2})


def test_fractions_that_leave_a_split_empty(tmp_path):
    root = make_classification(tmp_path / "data", {"a": 5, "b": 5})
    with pytest.raises(
        PipelineError,
        match=r"split.fractions.test = 0.04 leaves the test split empty: "
        r"10 files x 0.04 = 0.40",
    ):
        manifest(root, fractions={"train": 0.8, "val": 0.16, "test": 0.04})


def test_num_classes_disagreeing_with_binary_masks(tmp_path):
    root = make_segmentation(tmp_path / "data", 4, stored=(0, 255))
    with pytest.raises(PipelineError, match=r"data.num_classes is 3 but the masks are binary \(0/255\)"):
        manifest(root, task="segmentation", num_classes=3)


def test_lossy_masks_are_refused(tmp_path):
    root = make_segmentation(tmp_path / "data", 4, stored=(0, 7, 255))
    with pytest.raises(PipelineError, match=r"masks/im\d+.png: mask values 0, 7, 255: 255 beside other values"):
        manifest(root, task="segmentation")


def test_all_empty_masks_need_declared_classes(tmp_path):
    root = make_segmentation(tmp_path / "data", 10, stored=(0,))
    with pytest.raises(PipelineError, match=r"every mask is empty .* set data.num_classes"):
        manifest(root, task="segmentation")
    assert manifest(root, task="segmentation", num_classes=2)["num_classes"] == 2


def test_links_leading_outside_the_root_are_refused(tmp_path):
    root = make_classification(tmp_path / "data", {"a": 3, "b": 3})
    _save(tmp_path / "secret.png", _image(5))
    os.symlink(tmp_path / "secret.png", root / "a" / "leak.png")
    with pytest.raises(PipelineError, match=r"leak.png is a link to .*secret.png, outside the data root"):
        manifest(root)
    os.remove(root / "a" / "leak.png")
    os.symlink(root / "b" / "b_000.png", root / "a" / "inside.png")  # a link within the root is fine
    assert manifest(root)["counts"]["train"]["a"] >= 2


def test_folders_outside_the_root_are_refused(tmp_path):
    root = make_segmentation(tmp_path / "data", 3)
    shutil.copytree(root / "masks", tmp_path / "elsewhere")
    with pytest.raises(PipelineError, match=r"data.masks_dir: .* is outside data.root"):
        manifest(root, task="segmentation", masks_dir="../elsewhere")


def test_images_and_masks_must_live_in_separate_folders(tmp_path):
    root = make_segmentation(tmp_path / "data", 3)
    with pytest.raises(PipelineError, match=r"data.masks_dir: images and masks are both in 'images'"):
        manifest(root, task="segmentation", masks_dir="images")


def test_nested_folders_inside_a_class_folder_are_refused(tmp_path):
    root = make_classification(tmp_path / "data", {"a": 3, "b": 3})
    (root / "a" / "more").mkdir()
    with pytest.raises(PipelineError, match=r"a/more: unexpected folder among the images of class 'a'"):
        manifest(root)
