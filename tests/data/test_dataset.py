"""The Dataset over a manifest: uint8 tensors resized and aligned with their masks, the transform's
arrays, both mask encodings, classification labels, DataLoader workers, a file damaged later."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config.errors import PipelineError
from pipeline.data.dataset import ManifestDataset
from pipeline.data.manifest import Manifest
from pipeline.data.split import build_manifest

FRACTIONS = {"train": 0.5, "val": 0.25, "test": 0.25}


def _save(path: Path, array: np.ndarray, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)


def _square_scene(i: int, size: tuple[int, int] = (24, 32)) -> tuple[np.ndarray, np.ndarray]:
    """A grey image with a red rectangle exactly where the mask is 1 (alignment is checkable)."""
    h, w = size
    image = np.full((h, w, 3), 40, np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[4 + i % 4 : 16 + i % 4, 6:20] = 1
    image[mask == 1] = (230, 20, 20)
    return image, mask


def segmentation_manifest(root: Path, n: int = 8, stored: int = 255) -> Manifest:
    for i in range(n):
        image, mask = _square_scene(i)
        _save(root / "images" / f"s{i}.png", image)
        _save(root / "masks" / f"s{i}.png", mask * stored)
    raw = build_manifest(
        root,
        task="segmentation",
        root_as_written=str(root),
        num_classes=None,
        seed=0,
        fractions=FRACTIONS,
        stratify=True,
    )
    return Manifest(**raw)


def classification_manifest(root: Path) -> Manifest:
    for label, colour in enumerate([(250, 0, 0), (0, 250, 0), (0, 0, 250)]):
        for i in range(4):
            _save(root / f"class{label}" / f"{i}.png", np.full((10, 14, 3), colour, np.uint8))
    raw = build_manifest(
        root,
        task="classification",
        root_as_written="anything",
        num_classes=None,
        seed=0,
        fractions=FRACTIONS,
        stratify=True,
    )
    return Manifest(**raw)


def test_segmentation_items_are_uint8_resized_and_aligned(tmp_path):
    manifest = segmentation_manifest(tmp_path / "data")
    dataset = ManifestDataset(manifest, "train", root=tmp_path / "data", image_size=[12, 16])
    assert len(dataset) == 4
    for index in range(len(dataset)):
        image, mask = dataset[index]
        assert image.dtype == torch.uint8 and image.shape == (3, 12, 16)
        assert mask.dtype == torch.uint8 and mask.shape == (12, 16)
        assert set(mask.unique().tolist()) == {0, 1}  # NEAREST: no blended class values
        red = image[0].int() - image[1].int() > 100
        inside = red[mask == 1].float().mean().item()
        outside = red[mask == 0].float().mean().item()
        assert inside > 0.9 and outside < 0.1, (inside, outside)


def test_transform_sees_arrays_and_its_output_is_returned(tmp_path):
    manifest = segmentation_manifest(tmp_path / "data")
    seen = []

    def flip(image: np.ndarray, mask: np.ndarray | None):
        seen.append((image.shape, image.dtype, None if mask is None else mask.shape))
        return image[:, ::-1], mask[:, ::-1]  # negative strides must be handled

    plain = ManifestDataset(manifest, "val", root=tmp_path / "data", image_size=24)
    flipped = ManifestDataset(manifest, "val", root=tmp_path / "data", image_size=24, transform=flip)
    image, mask = flipped[0]
    assert seen == [((24, 24, 3), np.uint8, (24, 24))]
    assert torch.equal(image, plain[0][0].flip(-1)) and torch.equal(mask, plain[0][1].flip(-1))


def test_zero_one_and_zero_255_masks_load_the_same(tmp_path):
    a = segmentation_manifest(tmp_path / "a", stored=255)
    b = segmentation_manifest(tmp_path / "b", stored=1)
    da = ManifestDataset(a, "test", root=tmp_path / "a", image_size=24)
    db = ManifestDataset(b, "test", root=tmp_path / "b", image_size=24)
    assert [e["image"] for e in a.splits["test"]] == [e["image"] for e in b.splits["test"]]
    for i in range(len(da)):
        assert torch.equal(da[i][1], db[i][1]) and da[i][1].sum() > 0


def test_classification_items_carry_their_labels(tmp_path):
    manifest = classification_manifest(tmp_path / "data")
    dataset = ManifestDataset(manifest, "train", root=tmp_path / "data", image_size=(8, 8))
    for index, entry in enumerate(manifest.splits["train"]):
        label = entry["label"]
        image, target = dataset[index]
        assert image.shape == (3, 8, 8) and image.dtype == torch.uint8
        assert target.dtype == torch.int64 and target.ndim == 0 and int(target) == label
        assert int(image[label].float().mean()) > 200  # class k was painted in channel k


def test_dataset_in_dataloader_workers(tmp_path):
    manifest = segmentation_manifest(tmp_path / "data", n=12)
    dataset = ManifestDataset(manifest, "train", root=tmp_path / "data", image_size=16)
    pickle.loads(pickle.dumps(dataset))
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=2)
    batches = list(loader)
    images = torch.cat([b[0] for b in batches])
    masks = torch.cat([b[1] for b in batches])
    assert images.shape == (len(dataset), 3, 16, 16) and masks.shape == (len(dataset), 16, 16)
    assert torch.equal(images, torch.stack([dataset[i][0] for i in range(len(dataset))]))
    assert torch.equal(masks, torch.stack([dataset[i][1] for i in range(len(dataset))]))


def test_a_file_damaged_after_the_split_names_itself(tmp_path):
    manifest = segmentation_manifest(tmp_path / "data")
    dataset = ManifestDataset(manifest, "train", root=tmp_path / "data", image_size=16)
    broken = tmp_path / "data" / manifest.splits["train"][0]["image"]
    broken.write_bytes(broken.read_bytes()[:40])
    with pytest.raises(PipelineError, match=rf"{broken.name}: cannot decode image"):
        dataset[0]
    with pytest.raises(PipelineError, match=r"no split 'holdout'"):
        ManifestDataset(manifest, "holdout", root=tmp_path / "data", image_size=16)
