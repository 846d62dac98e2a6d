"""Native-resolution segmentation (data.resize none) end to end at tiny size: random crops (reproducible,
foreground-biased), the decoded cache at full size, training validated by tiles, evaluate by tiles, the
model file's recipe carrying the tiling, predict (model file and exported ONNX) writing masks at the
input's size; and the shipped configs/segmentation-tiles.yaml valid."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data.dataset import random_crop
from tests.conftest import REPO, make_workspace


def test_random_crop_is_reproducible_and_foreground_biased():
    image = np.zeros((64, 80, 3), dtype=np.uint8)
    mask = np.zeros((64, 80), dtype=np.uint8)
    mask[50:53, 70:73] = 1  # a 3x3 object in a corner
    hits = {p: 0 for p in (0.0, 1.0)}
    for p in hits:
        np.random.seed(0)
        for _ in range(200):
            crop_image, crop_mask = random_crop(image, mask, (16, 16), p)
            assert crop_image.shape == (16, 16, 3) and crop_mask.shape == (16, 16)
            hits[p] += bool(crop_mask.any())
    assert hits[1.0] == 200 and hits[0.0] < 40
    np.random.seed(7)
    a = random_crop(np.arange(64 * 80 * 3, dtype=np.uint8).reshape(64, 80, 3), mask, (16, 16))
    np.random.seed(7)
    b = random_crop(np.arange(64 * 80 * 3, dtype=np.uint8).reshape(64, 80, 3), mask, (16, 16))
    assert np.array_equal(a[0], b[0])
    small, small_mask = random_crop(image[:10, :12], mask[:10, :12], (16, 16))  # reflected up to the crop
    assert small.shape == (16, 16, 3) and small_mask.shape == (16, 16)


def test_the_tiles_config_is_generated_and_valid(tmp_path):
    from pipeline.config.params import load_params

    text = (REPO / "configs/segmentation-tiles.yaml").read_text()
    path = tmp_path / "params.yaml"
    path.write_text(text.replace("$schema=../schemas/", f"$schema={REPO}/schemas/"))
    for name in ("data", "weights"):
        (tmp_path / name).symlink_to(REPO / name, target_is_directory=True)
    params = load_params(path)
    assert params.get("data.resize") == "none" and params.get("evaluate.tile")["blend"] == "gaussian"


@pytest.mark.slow
def test_native_resolution_pipeline_end_to_end(tmp_path):
    import stages.decode
    import stages.evaluate
    import stages.train
    from pipeline.data.synthetic import generate_segmentation
    from pipeline.inference.export import export_model
    from pipeline.inference.onnx_predictor import OnnxPredictor
    from pipeline.inference.predict import predict_files
    from pipeline.inference.predictor import Predictor
    from pipeline.models.file import read_recipe

    generate_segmentation(tmp_path / "src", n=24, size=48, seed=2)  # images 3x the 16 px crop
    data = tmp_path / "ws"
    data.mkdir()
    params = make_workspace(
        data,
        dataset=tmp_path / "src",
        stages=("split", "model"),
        **{
            "data.resize": "none",
            "data.image_size": [16, 16],
            "data.crop": {"foreground_prob": 0.5},
            "evaluate.tile": {"size": None, "overlap": 0.25, "blend": "gaussian", "batch": 4},
        },
    )
    for stage in (stages.decode, stages.train, stages.evaluate):
        assert stage.main(["--params", str(params)]) == 0
    index = json.loads((data / "outputs/decode/index.json").read_text())
    assert index["resize"] == "none" and index["splits"]["train"]["shards"][0]["shapes"][0] == [48, 48]
    metrics = json.loads((data / "outputs/evaluate/metrics.json").read_text())
    assert 0.0 <= metrics["dice"] <= 1.0
    best = data / "outputs/train/best.safetensors"
    recipe = read_recipe(best)
    assert recipe["version"] == 3 and recipe["tile"] == {
        "size": [16, 16],
        "overlap": 0.25,
        "blend": "gaussian",
        "batch": 4,
    }

    image = (np.random.default_rng(0).integers(0, 256, size=(53, 61, 3))).astype(np.uint8)
    (data / "in").mkdir()
    Image.fromarray(image).save(data / "in/big.png")
    predictor = Predictor.from_file(best, device="cpu")
    assert predictor.tiled
    predict_files(predictor, [str(data / "in")], data / "pred")
    mask = np.asarray(Image.open(data / "pred/masks/big.png"))
    assert mask.shape == (53, 61)
    onnx = data / "model.onnx"
    export_model(best, "onnx", onnx)
    predict_files(OnnxPredictor.from_onnx(onnx), [str(data / "in")], data / "pred-onnx")
    onnx_mask = np.asarray(Image.open(data / "pred-onnx/masks/big.png"))
    # the same tiles through the same blend: masks agree but for pixels at the threshold's float edge
    assert onnx_mask.shape == mask.shape and (onnx_mask != mask).mean() < 0.001
    logits = predictor.whole_logits(torch.from_numpy(image).permute(2, 0, 1))
    assert logits.shape == (1, 53, 61)
