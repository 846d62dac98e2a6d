"""Reading data: the mask convention, the manifest file, and the Dataset (also in DataLoader workers)."""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.atomic import write_json
from pipeline.components import load_params
from pipeline.config.errors import ConfigError, PipelineError
from pipeline.data.dataset import ManifestDataset
from pipeline.data.manifest import Manifest, load_manifest
from pipeline.data.files import mask_array, mask_to_classes, mask_values
from pipeline.data.split import build_manifest

REPO = Path(__file__).resolve().parents[2]
FRACTIONS = {"train": 0.5, "val": 0.25, "test": 0.25}


def _save(path: Path, array: np.ndarray, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)


def _square_scene(i: int, size: tuple[int, int] = (24, 32)) -> tuple[np.ndarray, np.ndarray]:
    """A grey image with a red rectangle exactly where the mask is 1 (alignment is checkable)."""
    h, w = size
    image = np.full((h, w, 3), 40, np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[4 + i % 4:16 + i % 4, 6:20] = 1
    image[mask == 1] = (230, 20, 20)
    return image, mask


def _segmentation_manifest(root: Path, n: int = 8, stored: int = 255) -> Manifest:
    for i in range(n):
        image, mask = _square_scene(i)
        _save(root / "images" / f"s{i}.png", image)
        _save(root / "masks" / f"s{i}.png", mask * stored)
    raw = build_manifest(root, task="segmentation", root_as_written=str(root), num_classes=None,
                         seed=0, fractions=FRACTIONS, stratify=True)
    return Manifest(**raw)


def _classification_manifest(root: Path) -> Manifest:
    for label, colour in enumerate([(250, 0, 0), (0, 250, 0), (0, 0, 250)]):
        for i in range(4):
            _save(root / f"class{label}" / f"{i}.png", np.full((10, 14, 3), colour, np.uint8))
    raw = build_manifest(root, task="classification", root_as_written="anything", num_classes=None,
                         seed=0, fractions=FRACTIONS, stratify=True)
    return Manifest(**raw)


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
    with pytest.raises(PipelineError, match="class indices 0..255"):
        mask_array(Image.fromarray(np.array([[0, 300]], np.int32)), "m.png")


def test_binary_masks_map_to_zero_one_and_multiclass_masks_stay():
    stored = np.array([0, 255, 0, 1], np.uint8)
    assert mask_to_classes(stored, 2).tolist() == [0, 1, 0, 1]
    assert mask_to_classes(np.array([0, 2, 1]), 3).tolist() == [0, 2, 1]


# -- manifest file -----------------------------------------------------------------------------

def test_manifest_round_trip(tmp_path):
    manifest = _classification_manifest(tmp_path / "data")
    write_json(tmp_path / "manifest.json", manifest.to_dict())
    loaded = load_manifest(tmp_path / "manifest.json")
    assert loaded == manifest
    assert loaded.labels("train") == [e["label"] for e in manifest.splits["train"]]


def test_missing_or_damaged_manifest_says_what_to_do(tmp_path):
    with pytest.raises(PipelineError, match=r"no manifest; run the split stage"):
        load_manifest(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PipelineError, match=r"bad\.json: not a readable manifest"):
        load_manifest(tmp_path / "bad.json")
    (tmp_path / "partial.json").write_text(json.dumps({"task": "segmentation", "root": "x"}))
    with pytest.raises(PipelineError, match=r"missing class_names, counts, fingerprint, num_classes, splits"):
        load_manifest(tmp_path / "partial.json")
    manifest = _classification_manifest(tmp_path / "data").to_dict()
    manifest["splits"]["val"] = [{"image": "class0/0.png"}]  # no label
    write_json(tmp_path / "damaged.json", manifest)
    with pytest.raises(PipelineError, match="damaged manifest"):
        load_manifest(tmp_path / "damaged.json")


# -- the Dataset -------------------------------------------------------------------------------

def test_segmentation_items_are_uint8_resized_and_aligned(tmp_path):
    manifest = _segmentation_manifest(tmp_path / "data")
    dataset = ManifestDataset(manifest, "train", root=tmp_path / "data", image_size=[12, 16])
    assert len(dataset) == 4 and dataset.labels is None
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
    manifest = _segmentation_manifest(tmp_path / "data")
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
    a = _segmentation_manifest(tmp_path / "a", stored=255)
    b = _segmentation_manifest(tmp_path / "b", stored=1)
    da = ManifestDataset(a, "test", root=tmp_path / "a", image_size=24)
    db = ManifestDataset(b, "test", root=tmp_path / "b", image_size=24)
    assert [e["image"] for e in a.splits["test"]] == [e["image"] for e in b.splits["test"]]
    for i in range(len(da)):
        assert torch.equal(da[i][1], db[i][1]) and da[i][1].sum() > 0


def test_classification_items_and_cheap_labels(tmp_path):
    manifest = _classification_manifest(tmp_path / "data")
    dataset = ManifestDataset(manifest, "train", root=tmp_path / "data", image_size=(8, 8))
    assert dataset.labels == [e["label"] for e in manifest.splits["train"]]
    for index, label in enumerate(dataset.labels):
        image, target = dataset[index]
        assert image.shape == (3, 8, 8) and image.dtype == torch.uint8
        assert target.dtype == torch.int64 and target.ndim == 0 and int(target) == label
        assert int(image[label].float().mean()) > 200  # class k was painted in channel k


def test_dataset_in_dataloader_workers(tmp_path):
    manifest = _segmentation_manifest(tmp_path / "data", n=12)
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
    manifest = _segmentation_manifest(tmp_path / "data")
    dataset = ManifestDataset(manifest, "train", root=tmp_path / "data", image_size=16)
    broken = tmp_path / "data" / manifest.splits["train"][0]["image"]
    broken.write_bytes(broken.read_bytes()[:40])
    with pytest.raises(PipelineError, match=rf"{broken.name}: cannot decode image"):
        dataset[0]
    with pytest.raises(PipelineError, match=r"no split 'holdout'"):
        ManifestDataset(manifest, "holdout", root=tmp_path / "data", image_size=16)


# -- semantic checks (python -m pipeline validate) ---------------------------------------------

def _params(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_validate_reports_a_missing_data_root_by_key(tmp_path):
    text = (REPO / "params.yaml").read_text().replace("root: data/shapes-seg", "root: no/such/folder", 1)
    with pytest.raises(ConfigError) as info:
        load_params(_params(tmp_path, text))
    problems = {p.key: p.message for p in info.value.problems}
    assert "does not exist" in problems["data.root"] and "no/such/folder" in problems["data.root"]
    line = next(i for i, l in enumerate(text.splitlines(), 1) if "no/such/folder" in l)
    assert next(p.line for p in info.value.problems if p.key == "data.root") == line


def test_validate_reports_missing_and_escaping_segmentation_folders(tmp_path):
    (tmp_path / "d" / "images").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    text = (REPO / "params.yaml").read_text().replace("root: data/shapes-seg", "root: d", 1)
    text = text.replace("masks_dir: masks", "masks_dir: ../outside", 1)
    with pytest.raises(ConfigError) as info:
        load_params(_params(tmp_path, text))
    problems = {p.key: p.message for p in info.value.problems}
    assert "outside data.root" in problems["data.masks_dir"]
    assert "data.images_dir" not in problems
    shutil.rmtree(tmp_path / "d" / "images")
    with pytest.raises(ConfigError) as info:
        load_params(_params(tmp_path, text.replace("masks_dir: ../outside", "masks_dir: masks")))
    assert {p.key for p in info.value.problems if p.key.startswith("data.")} == {"data.images_dir", "data.masks_dir"}


def test_repo_params_validate_with_the_embedded_data():
    params = load_params(REPO / "params.yaml")
    assert params.resolve_path(params.get("data.root")).is_dir()
