"""Multi-label data: the path,labels CSV, iterative stratification (label-combination shares per split,
groups kept whole) and the multi-hot targets the datasets and the decoded cache return."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config.errors import PipelineError
from pipeline.data.assign import assign, assign_folds, assign_groups
from pipeline.data.dataset import ManifestDataset
from pipeline.data.decoded import DecodedDataset, write_decoded
from pipeline.data.iterative import stratify_units
from pipeline.data.labels import read_multilabels
from pipeline.data.manifest import SPLITS, Manifest
from pipeline.data.split import build_manifest
from pipeline.data.synthetic import generate_multilabel

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def _label_sets(n: int, seed: int = 0) -> list[tuple[int, ...]]:
    """``n`` label sets over 5 classes of unequal frequency (0.5 .. 0.1), some empty."""
    rng = np.random.default_rng(seed)
    rates = [0.5, 0.35, 0.25, 0.15, 0.1]
    return [tuple(c for c, rate in enumerate(rates) if rng.random() < rate) for _ in range(n)]


def _class_shares(label_sets, where, split):
    members = [s for s, w in zip(label_sets, where) if w == split]
    totals = Counter(c for s in label_sets for c in s)
    counts = Counter(c for s in members for c in s)
    return {c: counts[c] / totals[c] for c in totals}


def test_every_class_keeps_its_share_in_every_split_far_better_than_chance():
    sets = _label_sets(2000)
    where = assign(sets, FRACTIONS, seed=7, stratify=True)
    random = assign(sets, FRACTIONS, seed=7, stratify=False)
    for index, split in enumerate(SPLITS):
        shares = _class_shares(sets, where, index)
        worst = max(abs(share - FRACTIONS[split]) for share in shares.values())
        worst_random = max(abs(s - FRACTIONS[split]) for s in _class_shares(sets, random, index).values())
        assert worst < 0.01, (split, shares)
        assert worst < worst_random
        assert abs(where.count(index) / len(sets) - FRACTIONS[split]) < 0.01


def test_label_combinations_keep_their_share_as_far_as_they_allow():
    sets = _label_sets(2000, seed=1)
    where = assign(sets, FRACTIONS, seed=3, stratify=True)
    combos = Counter(sets)
    for index, split in enumerate(SPLITS):
        inside = Counter(s for s, w in zip(sets, where) if w == index)
        for combo, total in combos.items():
            if total >= 100:  # a common combination: within 1 point of its share (a random split: ~7)
                assert abs(inside[combo] / total - FRACTIONS[split]) < 0.01, (split, combo, inside[combo], total)


def test_the_split_is_deterministic_given_the_seed():
    sets = _label_sets(300)
    assert assign(sets, FRACTIONS, seed=5, stratify=True) == assign(sets, FRACTIONS, seed=5, stratify=True)
    assert assign(sets, FRACTIONS, seed=5, stratify=True) != assign(sets, FRACTIONS, seed=6, stratify=True)


def test_groups_never_cross_splits_and_stay_stratified():
    sets = _label_sets(1200, seed=2)
    groups = [f"g{i // 3}" for i in range(len(sets))]  # 400 groups of three images
    where = assign_groups(groups, sets, [FRACTIONS[s] for s in SPLITS], seed=1, stratify=True)
    placed: dict[str, int] = {}
    for group, split in zip(groups, where):
        assert placed.setdefault(group, split) == split
    for index, split in enumerate(SPLITS):
        assert max(abs(share - FRACTIONS[split]) for share in _class_shares(sets, where, index).values()) < 0.015


def test_folds_hold_the_test_set_and_groups():
    sets = _label_sets(300, seed=4)
    groups = [f"g{i // 2}" for i in range(len(sets))]
    folds = [assign_folds(groups, sets, test_fraction=0.2, folds=3, fold=f, seed=0, stratify=True) for f in range(3)]
    test = SPLITS.index("test")
    assert len({tuple(w == test for w in where) for where in folds}) == 1  # one test set for every fold
    val = SPLITS.index("val")
    assert sum(sum(w == val for w in where) for where in folds) == sum(w != test for w in folds[0])
    for where in folds:
        assert all(where[i] == where[i + 1] for i in range(0, len(sets), 2))


def test_units_without_labels_fill_the_sizes():
    counts = np.zeros((20, 2), dtype=np.int64)
    counts[:10, 0] = 1
    parts = stratify_units(counts, [1] * 20, [0.5, 0.5], seed=0)
    assert Counter(parts) == {0: 10, 1: 10}
    assert Counter(parts[:10]) == {0: 5, 1: 5}


def _csv(root: Path, text: str) -> Path:
    (root / "img").mkdir(exist_ok=True)
    for name in ("a", "b", "c"):
        (root / "img" / f"{name}.png").write_bytes(b"")
    path = root / "labels.csv"
    path.write_text(text)
    return path


def test_the_labels_column_lists_names_an_empty_field_is_none(tmp_path):
    path = _csv(tmp_path, "path,labels\nimg/a.png,cat;dog\nimg/b.png,\nimg/c.png, dog ;cat;dog\n")
    assert read_multilabels(path, tmp_path) == [
        ("img/a.png", ("cat", "dog")),
        ("img/b.png", ()),
        ("img/c.png", ("cat", "dog")),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("path,label\nimg/a.png,cat\n", r"labels.csv:1: columns must be path,labels .*single-label layout"),
        ("path,labels\nimg/a.png,cat;;dog\n", r"labels.csv:2: an empty class name in 'cat;;dog'"),
        (
            "path,labels\nimg/a.png,cat\n./img/a.png,dog\n",
            r"labels.csv:3: .* listed again \(first on line 2\): labelled 'cat' there, 'dog' here",
        ),
    ],
)
def test_bad_multilabel_files_name_the_line(tmp_path, text, message):
    with pytest.raises(PipelineError, match=message):
        read_multilabels(_csv(tmp_path, text), tmp_path)


def test_the_manifest_and_both_datasets_give_multi_hot_targets(tmp_path):
    generate_multilabel(tmp_path / "data", n=30, size=32, seed=1)
    raw = build_manifest(
        tmp_path / "data",
        task="multilabel",
        root_as_written="data",
        num_classes=None,
        labels_csv=tmp_path / "data" / "labels.csv",
        seed=0,
        fractions=FRACTIONS,
        stratify=True,
    )
    assert raw["class_names"] == ["circle", "square", "triangle"] and raw["num_classes"] == 3
    lines = (tmp_path / "data" / "labels.csv").read_text().splitlines()[1:]
    listed = {path: set(names.split(";")) - {""} for path, names in (line.split(",") for line in lines)}
    entries = [e for s in SPLITS for e in raw["splits"][s]]
    assert {e["image"]: {raw["class_names"][c] for c in e["labels"]} for e in entries} == listed
    assert any(not e["labels"] for e in entries)  # images with none are kept
    manifest = Manifest(**raw)
    plain = ManifestDataset(manifest, "train", root=tmp_path / "data", image_size=32)
    write_decoded(tmp_path / "cache", manifest, root=tmp_path / "data", image_size=32, workers=1)
    cached = DecodedDataset(tmp_path / "cache", manifest, "train", root=tmp_path / "data", image_size=32)
    for i in range(len(plain)):
        image, target = plain[i]
        expected = torch.zeros(3)
        expected[plain.entries[i]["labels"]] = 1
        assert target.dtype == torch.float32 and torch.equal(target, expected)
        again_image, again_target = cached[i]
        assert torch.equal(again_image, image) and torch.equal(again_target, target)
