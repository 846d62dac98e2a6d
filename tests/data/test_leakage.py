"""Data you can trust: grouped splits (a group never crosses splits), cross-split duplicates reported or
dropped, labels from a CSV with located errors, and k-fold cross-validation around a fixed test set."""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config.errors import PipelineError
from pipeline.data.manifest import SPLITS
from pipeline.data.split import build_manifest, describe
from tests.conftest import problems_by_key, write_params

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}
CARVANA = r"^(.+)_\d+$"


def _png(path: Path, seed: int, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (8, 8, 3) if mode == "RGB" else (8, 8)
    values = rng.integers(0, 256, shape, dtype=np.uint8) if mode == "RGB" else (rng.random(shape) > 0.5) * 255
    Image.fromarray(values.astype(np.uint8), mode).save(path)


@pytest.fixture(scope="module")
def carvana(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 cars x 16 views, named as Carvana names them: <car>_<view>.png with <car>_<view>_mask.png."""
    root = tmp_path_factory.mktemp("carvana")
    for car in range(20):
        for view in range(1, 17):
            _png(root / "images" / f"car{car:02d}_{view:02d}.png", car * 100 + view)
            _png(root / "masks" / f"car{car:02d}_{view:02d}_mask.png", car * 100 + view, "L")
    return root


def _carvana_manifest(root: Path, **split: object) -> dict:
    return build_manifest(
        root,
        task="segmentation",
        root_as_written=str(root),
        num_classes=None,
        mask_suffix="_mask",
        seed=0,
        fractions=FRACTIONS,
        stratify=True,
        **split,
    )


def _groups_by_split(manifest: dict) -> dict[str, set[str]]:
    found: dict[str, set[str]] = defaultdict(set)
    for split in SPLITS:
        for entry in manifest["splits"][split]:
            found[entry["image"].split("/")[-1].rsplit("_", 1)[0]].add(split)
    return found


def test_views_of_one_car_never_cross_splits_and_the_achieved_fractions_are_reported(carvana: Path):
    manifest = _carvana_manifest(carvana, group_by=CARVANA)
    assert all(len(splits) == 1 for splits in _groups_by_split(manifest).values())
    assert {e["group"] for s in SPLITS for e in manifest["splits"][s]} == {f"car{c:02d}" for c in range(20)}
    summary = manifest["summary"]
    assert summary["groups"] == {"train": 14, "val": 3, "test": 3}  # 20 groups of 16: the fractions exactly
    assert summary["fractions"] == {"train": 0.7, "val": 0.15, "test": 0.15}
    assert "train 224 (70.0%, 14 groups)" in describe(manifest)
    ungrouped = _carvana_manifest(carvana)
    assert any(len(splits) > 1 for splits in _groups_by_split(ungrouped).values())  # the leak it prevents


def test_uneven_groups_meet_the_fractions_as_closely_as_they_allow(tmp_path: Path):
    sizes = [9, 7, 5, 5, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1]  # 40 files
    for group, size in enumerate(sizes):
        for view in range(size):
            _png(tmp_path / "images" / f"g{group}_{view}.png", group * 50 + view)
            _png(tmp_path / "masks" / f"g{group}_{view}.png", group * 50 + view, "L")
    manifest = build_manifest(
        tmp_path,
        task="segmentation",
        root_as_written="d",
        num_classes=None,
        seed=3,
        fractions={"train": 0.6, "val": 0.2, "test": 0.2},
        stratify=False,
        group_by=CARVANA,
    )
    sizes_by_split = {s: len(manifest["splits"][s]) for s in SPLITS}
    assert sizes_by_split == {"train": 24, "val": 8, "test": 8}  # 40 x (0.6, 0.2, 0.2), met exactly
    assert all(len(splits) == 1 for splits in _groups_by_split(manifest).values())


def test_classification_stays_stratified_as_far_as_the_groups_allow(tmp_path: Path):
    for label in ("cat", "dog"):
        for subject in range(10):
            for shot in range(4):
                _png(tmp_path / label / f"{label}{subject}_{shot}.png", hash((label, subject, shot)) % 10**6)
    manifest = build_manifest(
        tmp_path,
        task="classification",
        root_as_written="d",
        num_classes=None,
        seed=1,
        fractions={"train": 0.6, "val": 0.2, "test": 0.2},
        stratify=True,
        group_by=CARVANA,
    )
    assert manifest["counts"] == {s: {"cat": n, "dog": n} for s, n in (("train", 24), ("val", 8), ("test", 8))}


def test_group_patterns_that_cannot_split_are_located_errors(carvana: Path, tmp_path: Path):
    with pytest.raises(PipelineError, match=r"split.group_by: '\^\(x\)_\\d\+\$' does not match the file"):
        _carvana_manifest(carvana, group_by=r"^(x)_\d+$")
    with pytest.raises(PipelineError, match="puts all 320 files in one group"):
        _carvana_manifest(carvana, group_by=r"^(car)")
    path = write_params(tmp_path / "params.yaml", link=True, **{"split.group_by": r"^.+_\d+$"})
    assert "needs exactly one" in problems_by_key(path)["split.group_by"]
    path = write_params(tmp_path / "params.yaml", link=True, **{"split.group_by": "([a-z"})
    assert "is not a regular expression" in problems_by_key(path)["split.group_by"]
    path = write_params(tmp_path / "params.yaml", link=True, **{"split.fold": 2})
    assert "needs split.folds" in problems_by_key(path)["split.fold"]
    path = write_params(tmp_path / "params.yaml", link=True, **{"split.folds": 5, "split.fold": 5})
    assert "numbered 0 to 4" in problems_by_key(path)["split.fold"]


@pytest.fixture
def with_copies(carvana: Path, tmp_path: Path) -> Path:
    """The Carvana set plus byte-identical copies of three images under new names."""
    root = tmp_path / "copies"
    shutil.copytree(carvana, root)
    for car in (0, 5, 9):
        for folder, suffix in (("images", ""), ("masks", "_mask")):
            shutil.copy(root / folder / f"car{car:02d}_01{suffix}.png", root / folder / f"copy{car:02d}_01{suffix}.png")
    return root


def test_identical_files_in_two_splits_are_reported_and_dropped(with_copies: Path):
    warned = _carvana_manifest(with_copies, group_by=CARVANA)
    copies = warned["summary"]["duplicates"]
    assert copies["across_splits"] >= 1 and copies["dropped"] == 0
    for pair in copies["pairs"]:
        left, right = pair.split(" == ")
        assert left.split("/")[-1].replace("copy", "car") == right.split("/")[-1].replace("copy", "car")
        assert left.split("/")[0] != right.split("/")[0]
    assert f"{copies['across_splits']} image(s) identical to one in another split" in describe(warned)
    dropped = _carvana_manifest(with_copies, group_by=CARVANA, duplicates="drop")
    assert dropped["summary"]["duplicates"]["dropped"] == copies["across_splits"]
    assert sum(len(dropped["splits"][s]) for s in SPLITS) == 320 + 3 - copies["across_splits"]
    kept = {e["image"] for s in SPLITS for e in dropped["splits"][s]}
    assert all(pair.split(" == ")[1].split("/", 1)[1] not in kept for pair in copies["pairs"])
    with pytest.raises(PipelineError, match=r"byte-identical .*split.duplicates: error"):
        _carvana_manifest(with_copies, group_by=CARVANA, duplicates="error")


def _labelled(root: Path, rows: str) -> Path:
    for name, seed in (("a.png", 1), ("b.png", 2), ("sub/c.png", 3), ("d.png", 4), ("e.png", 5), ("f.png", 6)):
        _png(root / name, seed)
    (root / "labels.csv").write_text(rows)
    return root / "labels.csv"


def test_labels_from_a_csv(tmp_path: Path):
    csv_path = _labelled(tmp_path, "path,label\na.png,cat\nb.png,dog\nsub/c.png,cat\nd.png,dog\ne.png,cat\nf.png,dog\n")
    manifest = build_manifest(
        tmp_path,
        task="classification",
        root_as_written="d",
        num_classes=None,
        seed=0,
        fractions={"train": 0.34, "val": 0.33, "test": 0.33},
        stratify=True,
        labels_csv=csv_path,
    )
    assert manifest["class_names"] == ["cat", "dog"] and manifest["counts"]["test"] == {"cat": 1, "dog": 1}
    labels = {e["image"]: e["label"] for s in SPLITS for e in manifest["splits"][s]}
    assert labels == {"a.png": 0, "b.png": 1, "sub/c.png": 0, "d.png": 1, "e.png": 0, "f.png": 1}


@pytest.mark.parametrize(
    "rows, expected",
    [
        ("file,class\na.png,cat\n", ":1: columns must be path,label (found file,class)"),
        ("path,label\na.png,cat\nb.png,\n", ":3: empty label"),
        ("path,label\na.png,cat\nnope.png,dog\n", ":3: nope.png does not exist under"),
        ("path,label\na.png,cat\nb.png,dog\na.png,dog\n", ":4: a.png is listed again (first on line 2)"),
        ("path,label\na.png,cat,extra\n", ":2: expected 2 fields"),
        ("path,label\nlabels.csv,cat\n", ":2: labels.csv: unsupported file type"),
    ],
)
def test_label_file_errors_name_the_line(tmp_path: Path, rows: str, expected: str):
    csv_path = _labelled(tmp_path / "data", rows)
    with pytest.raises(PipelineError, match=f"{csv_path}{expected}".replace("(", r"\(").replace(")", r"\)")):
        build_manifest(
            tmp_path / "data",
            task="classification",
            root_as_written="d",
            num_classes=None,
            seed=0,
            fractions=FRACTIONS,
            stratify=True,
            labels_csv=csv_path,
        )
    path = write_params(
        tmp_path / "params.yaml",
        **{
            "data.task": "classification",
            "data.root": "data",
            "data.labels": "labels.csv",
            "model.source": "timm",
            "model.name": "resnet10t",
            "model.pretrained": False,
            "loss": {"name": "cross_entropy", "params": {}, "terms": []},
        },
    )
    assert expected.split(": ", 1)[-1] in problems_by_key(path)["data.labels"]  # validate reads it the same way


def test_folds_are_disjoint_cover_the_non_test_data_and_keep_the_test_set(carvana: Path):
    folds = [_carvana_manifest(carvana, group_by=CARVANA, folds=4, fold=k) for k in range(4)]
    images = [{s: {e["image"] for e in m["splits"][s]} for s in SPLITS} for m in folds]
    test = images[0]["test"]
    assert test and all(fold["test"] == test for fold in images)
    vals = [fold["val"] for fold in images]
    assert all(not (a & b) for i, a in enumerate(vals) for b in vals[i + 1 :])  # disjoint
    everything = {e["image"] for s in SPLITS for e in folds[0]["splits"][s]}
    assert set().union(*vals) == everything - test  # together the non-test data
    assert all(fold["train"] == everything - test - fold["val"] for fold in images)
    for manifest in folds:  # groups never cross, also between train and the validation fold
        assert all(len(splits) == 1 for splits in _groups_by_split(manifest).values())
    assert folds[2]["summary"]["fold"] == {"folds": 4, "fold": 2} and "fold 2 of 4" in describe(folds[2])
