"""data.max_side: native-resolution images (data.resize none) larger than it are shrunk, aspect kept, the
same way in the dataset, the decoded cache and predict (the model file records it), and predicted masks
come back at the input's size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config.errors import PipelineError
from pipeline.data.dataset import ManifestDataset, native_hw
from pipeline.data.decoded import DecodedDataset, write_decoded
from pipeline.data.manifest import Manifest
from pipeline.data.split import build_manifest
from pipeline.data.synthetic import generate_segmentation
from pipeline.inference.predict import predict_files
from pipeline.inference.predictor import Predictor
from pipeline.models.file import read_recipe, save_model
from pipeline.models.tiling import tile_settings
from tests.models.test_networks import TINY_UNET, arch, build


def test_native_hw_shrinks_the_longer_side_to_max_side_keeping_the_aspect():
    assert native_hw((1280, 1918), 512) == (342, 512)
    assert native_hw((1918, 1280), 512) == (512, 342)
    assert native_hw((300, 200), 512) == (300, 200)  # smaller: its own size
    assert native_hw((1280, 1918), None) == (1280, 1918)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("shapes") / "data"
    generate_segmentation(root, n=8, size=60, seed=4)
    manifest = Manifest(
        **build_manifest(
            root,
            task="segmentation",
            root_as_written=str(root),
            num_classes=2,
            seed=0,
            fractions={"train": 0.75, "val": 0.125, "test": 0.125},
            stratify=True,
        )
    )
    return root, manifest


def test_the_dataset_and_the_decoded_cache_shrink_images_and_masks_alike(shapes, tmp_path):
    root, manifest = shapes
    full = ManifestDataset(manifest, "train", root=root, image_size=16, resize="none")
    shrunk = ManifestDataset(manifest, "train", root=root, image_size=16, resize="none", max_side=30)
    image, mask = full.load(0)
    small, small_mask = shrunk.load(0)
    assert image.shape == (60, 60, 3) and small.shape == (30, 30, 3) and small_mask.shape == (30, 30)
    entry = manifest.splits["train"][0]
    expected = np.asarray(Image.open(root / entry["image"]).convert("RGB").resize((30, 30), Image.Resampling.BILINEAR))
    assert np.array_equal(small, expected)
    assert np.array_equal(small_mask, np.asarray(Image.fromarray(mask).resize((30, 30), Image.Resampling.NEAREST)))
    assert set(np.unique(small_mask)) <= set(np.unique(mask))  # classes never blend

    cache = tmp_path / "decode"
    write_decoded(cache, manifest, root=root, image_size=16, resize="none", max_side=30, workers=1)
    cached = DecodedDataset(cache, manifest, "train", root=root, image_size=16, resize="none", max_side=30)
    for i in range(len(shrunk)):
        a, b = cached.load(i), shrunk.load(i)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    with pytest.raises(PipelineError, match=r"another data.max_side \(30, now None\)"):
        DecodedDataset(cache, manifest, "train", root=root, image_size=16, resize="none")


def test_predict_shrinks_as_the_recipe_says_and_writes_the_mask_at_the_input_size(tmp_path):
    config = arch("unet", "classic", task="segmentation", outputs=2, unet=TINY_UNET)
    config["num_outputs"] = 1
    model, info, _ = build(config)
    info.tile = tile_settings({"size": None, "overlap": 0.25, "blend": "mean", "batch": 4}, (16, 16), max_side=40)
    path = tmp_path / "best.safetensors"
    save_model(path, model, info)
    assert read_recipe(path)["tile"]["max_side"] == 40

    image = np.random.default_rng(1).integers(0, 256, size=(90, 120, 3)).astype(np.uint8)
    (tmp_path / "in").mkdir()
    Image.fromarray(image).save(tmp_path / "in/big.png")
    # an untrained net's probabilities sit near one value: its median as the threshold makes a mask of both
    # classes, which the comparison below can tell apart from any other
    small = np.array(Image.fromarray(image).resize((40, 30), Image.Resampling.BILINEAR))
    logits = Predictor.from_file(path, device="cpu").whole_logits(torch.from_numpy(small).permute(2, 0, 1))
    info.threshold = float(torch.sigmoid(logits).median())
    save_model(path, model, info)
    predictor = Predictor.from_file(path, device="cpu")
    predict_files(predictor, [str(tmp_path / "in")], tmp_path / "pred")
    mask = np.asarray(Image.open(tmp_path / "pred/masks/big.png"))
    assert mask.shape == (90, 120)

    # what the model saw: the image shrunk to 30x40, by tiles; the mask scaled back by nearest
    classes = predictor.whole_classes(predictor.whole_logits(torch.from_numpy(small).permute(2, 0, 1)))
    expected = np.asarray(Image.fromarray(classes.to(torch.uint8).numpy()).resize((120, 90), Image.Resampling.NEAREST))
    assert np.array_equal(mask, expected)
    assert 0 < expected.mean() < 1  # both classes present: a mask the comparison can tell apart
