"""loss.params weight: auto / pos_weight: auto: computed from the training split's counts (images per class,
or the pixels the split stage counts per class for segmentation), accepted by validate where the loss
takes the argument and refused, located, where it does not; and the imbalance the split reports."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.config.errors import ComponentError
from pipeline.data.split import build_manifest, describe
from pipeline.training.losses import build_loss
from pipeline.training.losses.auto import resolve_auto, train_counts
from tests.conftest import problems_by_key, write_params

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def test_auto_weights_are_balanced_class_weights_and_negatives_over_positives():
    cfg = {"name": "cross_entropy", "params": {"weight": "auto", "label_smoothing": 0.1}, "terms": []}
    resolved, computed = resolve_auto(cfg, [50, 1000], 2)
    assert resolved["params"] == {"weight": [10.5, 0.525], "label_smoothing": 0.1}  # 1050 / (2 x count)
    assert computed == {"loss.params.weight": [10.5, 0.525]}
    assert cfg["params"]["weight"] == "auto"  # the section itself is left as it was
    terms = {"name": "sum", "params": {}, "terms": [{"name": "dice_bce", "params": {"pos_weight": "auto"}}]}
    assert resolve_auto(terms, [900, 100], 1)[1] == {"loss.terms[0].params.pos_weight": 9.0}


def test_the_built_loss_uses_the_computed_weights():
    logits, target = torch.randn(6, 2, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 1, 1, 0, 1])
    loss = build_loss(
        {"name": "cross_entropy", "params": {"weight": "auto"}}, task="classification", num_outputs=2, counts=[50, 1000]
    )
    expected = F.cross_entropy(logits, target, weight=torch.tensor([10.5, 0.525]))
    assert torch.allclose(loss(logits, target), expected)
    with pytest.raises(ComponentError, match="auto needs the training split's class counts"):
        build_loss({"name": "cross_entropy", "params": {"weight": "auto"}}, task="classification", num_outputs=2)
    with pytest.raises(ComponentError, match="class 0 has no samples"):
        build_loss({"name": "bce", "params": {"pos_weight": "auto"}}, task="segmentation", num_outputs=1, counts=[0, 5])


def test_train_counts_are_pixels_for_segmentation_and_images_for_classification():
    classes = SimpleNamespace(class_names=["a", "b"], counts={"train": {"a": 3, "b": 60}}, summary={})
    assert train_counts(classes) == [3, 60]
    masks = SimpleNamespace(
        class_names=["background", "foreground"],
        counts={"train": {"background": 10, "foreground": 8}},
        summary={"pixels": {"train": {"background": 9000, "foreground": 240}}},
    )
    assert train_counts(masks) == [9000, 240]


def test_validate_accepts_auto_where_the_loss_takes_it_and_refuses_it_located_elsewhere(tmp_path: Path):
    def problems(name: str, **params: object) -> dict[str, str]:
        path = write_params(tmp_path / f"{name}.yaml", **{"loss.name": name, "loss.params": params})
        return problems_by_key(path, "loss")

    assert problems("dice_bce", pos_weight="auto") == {}  # the shipped binary segmentation
    assert problems("bce", pos_weight="auto") == {}
    assert set(problems("dice", pos_weight="auto")) == {"loss.params.pos_weight"}  # dice takes no pos_weight
    assert "only for weight and pos_weight" in problems("focal", gamma="auto")["loss.params.gamma"]
    assert "binary task takes pos_weight" in problems("bce", weight="auto")["loss.params.weight"]
    multi = write_params(
        tmp_path / "multi.yaml",
        **{"data.num_classes": 3, "loss.name": "cross_entropy", "loss.params": {"weight": "auto"}},
    )
    assert problems_by_key(multi, "loss") == {}


def test_the_split_counts_mask_pixels_and_reports_the_imbalance(tmp_path: Path):
    root = tmp_path / "seg"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(20):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / f"images/{i}.png")
        mask = np.zeros((8, 8), np.uint8)
        mask[: i % 3 + 1, :2] = 255  # 2, 4 or 6 foreground pixels of 64
        Image.fromarray(mask).save(root / f"masks/{i}.png")
    manifest = build_manifest(
        root, task="segmentation", root_as_written="seg", num_classes=2, seed=0, fractions=FRACTIONS, stratify=True
    )
    train = [int(Path(e["mask"]).stem) for e in manifest["splits"]["train"]]
    fg = sum(2 * (i % 3 + 1) for i in train)
    assert manifest["summary"]["pixels"]["train"] == {"background": 64 * len(train) - fg, "foreground": fg}
    ratio = round((64 * len(train) - fg) / fg, 2)
    assert manifest["summary"]["imbalance"] == {"ratio": ratio, "largest": "background", "smallest": "foreground"}
    assert f"; imbalance {ratio:.1f} (largest/smallest class in train, by pixels)" in describe(manifest)


def test_the_split_line_names_a_class_missing_from_train():
    manifest = {
        "task": "classification",
        "root": "d",
        "num_classes": 2,
        "splits": {"train": [], "val": [], "test": []},
        "summary": {"imbalance": {"ratio": None, "largest": "a", "smallest": "b"}},
    }
    assert describe(manifest).endswith("; class 'b' has no training images")
