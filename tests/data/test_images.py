"""The one image reader: 16-bit and float images scaled by their real range (not clipped at 255), EXIF
orientation applied to images and masks, impossible values refused naming the file; and the same
reading in the dataset (train, evaluate, the decoded cache) and in predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config.errors import PipelineError
from pipeline.data.dataset import ManifestDataset, open_image, rgb_resized
from pipeline.data.files import mask_array
from pipeline.data.images import to_rgb
from pipeline.data.manifest import Manifest
from pipeline.data.split import build_manifest
from pipeline.inference.predict import predict_files
from pipeline.inference.predictor import Predictor
from tests.conftest import make_workspace

ORIENTATION = 0x0112  # the EXIF tag; 6 = "rotate 90 degrees clockwise to display"


def _read(path: Path) -> np.ndarray:
    """What the model is fed from ``path`` before resizing: HxWx3 uint8."""
    image = open_image(path)
    return rgb_resized(image, (image.height, image.width), path)


def _pattern(height: int = 48, width: int = 80) -> np.ndarray:
    """An asymmetric grey picture: a horizontal ramp plus a bright top-left block, so any rotation or
    flip of it differs from it."""
    picture = np.tile(np.linspace(10, 200, width).round().astype(np.uint8), (height, 1))
    picture[: height // 3, : width // 4] = 250
    return picture


def _sideways(upright: Image.Image, path: Path, **save: object) -> Path:
    """Save ``upright`` as a camera does for a portrait shot: pixels turned 90 degrees anticlockwise,
    with EXIF orientation 6 telling the viewer to turn them back clockwise."""
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif, **save)
    return path


@pytest.mark.parametrize("dtype, suffix, mode", [("<u2", ".png", "I;16"), (">u2", ".tif", "I;16B")])
def test_a_16_bit_image_reads_as_its_8_bit_twin(tmp_path, dtype, suffix, mode):
    digit = np.zeros((28, 28), np.uint8)  # a dark digit of mean 66: convert("RGB") clipped it at 255
    digit[6:22, 7:21] = 231
    assert digit.mean() == 66
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
    for name, grey in (("digit", digit), ("ramp", ramp)):
        Image.fromarray((grey.astype(np.uint32) * 257).astype(dtype)).save(tmp_path / f"{name}{suffix}")
        Image.fromarray(grey).save(tmp_path / f"{name}8.png")
        assert open_image(tmp_path / f"{name}{suffix}").mode == mode
        read = _read(tmp_path / f"{name}{suffix}")
        assert np.array_equal(read, _read(tmp_path / f"{name}8.png"))
        assert np.array_equal(read, np.repeat(grey[..., None], 3, axis=2))  # grey stays a grey RGB
    assert round(float(_read(tmp_path / f"digit{suffix}").mean())) == 66


def test_16_bit_values_between_the_8_bit_levels_round_to_the_nearest(tmp_path):
    values = np.linspace(0, 65535, 4096).round().astype(np.uint16).reshape(64, 64)
    Image.fromarray(values).save(tmp_path / "deep.png")
    read = _read(tmp_path / "deep.png")[..., 0].astype(np.float64)
    assert np.abs(read - values / 257).max() <= 0.5  # within half a grey level: rounded, never clipped
    assert read.max() == 255 and read.mean() == pytest.approx(127.5, abs=0.1)


def test_mode_i_reads_8_bit_values_as_they_are_and_16_bit_values_scaled(tmp_path):
    grey = _pattern()
    Image.fromarray(grey.astype(np.int32)).save(tmp_path / "narrow.tif")
    Image.fromarray(grey.astype(np.int32) * 257).save(tmp_path / "wide.tif")
    assert open_image(tmp_path / "narrow.tif").mode == open_image(tmp_path / "wide.tif").mode == "I"
    assert np.array_equal(_read(tmp_path / "narrow.tif")[..., 1], grey)
    assert np.array_equal(_read(tmp_path / "wide.tif")[..., 1], grey)


@pytest.mark.parametrize("full_scale", [1.0, 255.0, 65535.0])
def test_a_float_tiff_reads_as_its_8_bit_twin(tmp_path, full_scale):
    grey = _pattern()
    Image.fromarray((grey / 255.0 * full_scale).astype(np.float32)).save(tmp_path / "float.tif")
    assert open_image(tmp_path / "float.tif").mode == "F"
    assert np.abs(_read(tmp_path / "float.tif")[..., 0].astype(int) - grey).max() <= 1


@pytest.mark.parametrize(
    "values, why",
    [
        (np.nan, "NaN or infinite"),
        (np.inf, "NaN or infinite"),
        (-0.5, "-0.5..0.5 (mode F) fit none of the ranges 0..1, 0..255, 0..65535"),
        (70000.0, "0.5..70000 (mode F) fit none"),
    ],
)
def test_a_float_image_no_range_holds_is_refused_naming_the_file(tmp_path, values, why):
    array = np.full((6, 8), 0.5, np.float32)
    array[2, 3] = values
    Image.fromarray(array).save(tmp_path / "odd.tif")
    with pytest.raises(PipelineError, match=r"odd\.tif: ") as error:
        _read(tmp_path / "odd.tif")
    assert why in str(error.value)


def test_mode_i_beyond_16_bits_is_refused():
    with pytest.raises(PipelineError, match=r"cells\.tif: image values 0\.\.100000 \(mode I\)"):
        to_rgb(Image.fromarray(np.array([[0, 100000]], np.int32)), "cells.tif")


def test_other_modes_convert_as_pil_does(tmp_path):
    rgba = Image.fromarray(np.random.default_rng(0).integers(0, 256, (9, 7, 4), dtype=np.uint8))
    for image in (rgba, rgba.convert("P"), rgba.convert("LA"), rgba.convert("L"), rgba.convert("CMYK")):
        assert to_rgb(image).mode == "RGB"
        assert np.array_equal(np.asarray(to_rgb(image)), np.asarray(image.convert("RGB"))), image.mode


def test_a_jpeg_with_exif_orientation_6_reads_upright(tmp_path):
    upright = np.zeros((96, 160, 3), np.uint8)  # four flat quadrants: JPEG keeps their means
    upright[:48, :80], upright[:48, 80:], upright[48:, :80], upright[48:, 80:] = (
        (230, 30, 30),
        (30, 230, 30),
        (30, 30, 230),
        (200, 200, 200),
    )
    path = _sideways(Image.fromarray(upright), tmp_path / "portrait.jpg", quality=95)
    with Image.open(path) as stored:
        assert stored.size == (96, 160)  # stored sideways
    read = _read(path)
    assert read.shape == upright.shape
    for rows in (slice(4, 44), slice(52, 92)):
        for cols in (slice(4, 76), slice(84, 156)):
            assert np.abs(read[rows, cols].mean((0, 1)) - upright[rows, cols].mean((0, 1))).max() < 3


def test_a_mask_is_turned_upright_but_its_values_are_untouched(tmp_path):
    classes = np.zeros((20, 30), np.uint16)
    classes[:5, :10], classes[10:, 20:] = 3, 7
    _sideways(Image.fromarray(classes), tmp_path / "mask.png")  # a 16-bit mask: values are class indices
    mask = open_image(tmp_path / "mask.png")
    assert mask.mode == "I;16" and np.array_equal(mask_array(mask, "mask.png"), classes)


def _copies(folder: Path, grey: np.ndarray) -> list[str]:
    """``grey`` saved as 8-bit PNG, 16-bit PNG and stored sideways with EXIF orientation (lossless)."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grey).save(folder / "upright.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(folder / "deep.png")
    _sideways(Image.fromarray(grey), folder / "turned.png")
    return ["upright.png", "deep.png", "turned.png"]


def test_the_dataset_reads_16_bit_and_turned_copies_as_the_8_bit_image_with_masks_aligned(tmp_path):
    grey, mask = _pattern(), np.zeros((48, 80), np.uint8)
    mask[:16, :20] = 1  # where the bright block is
    names = _copies(tmp_path / "images", grey)
    (tmp_path / "masks").mkdir()
    Image.fromarray(mask * 255).save(tmp_path / "masks" / "upright.png")
    entries = [{"image": f"images/{name}", "mask": "masks/upright.png"} for name in names]
    manifest = Manifest(
        task="segmentation",
        root=str(tmp_path),
        num_classes=2,
        class_names=["bg", "fg"],
        splits={"train": entries, "val": [], "test": []},
        counts={},
        fingerprint="",
    )
    dataset = ManifestDataset(manifest, "train", root=tmp_path, image_size=[48, 80])
    loaded = [dataset.load(i) for i in range(3)]
    for image, target in loaded[1:]:
        assert np.array_equal(image, loaded[0][0]) and np.array_equal(target, loaded[0][1])
    image, target = loaded[0]
    assert image[target == 1].min() > 240 and image[target == 0].max() < 240  # the mask is on the block


def test_the_split_stage_pairs_a_turned_image_with_its_upright_mask(tmp_path):
    root = tmp_path / "data"
    for i in range(4):
        grey, mask = _pattern(), np.zeros((48, 80), np.uint8)
        mask[i:16, :20] = 255
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(exist_ok=True)
        _sideways(Image.fromarray(grey), root / "images" / f"s{i}.png")  # stored 48 wide, 80 high
        Image.fromarray(mask).save(root / "masks" / f"s{i}.png")  # drawn on the upright 80x48
    manifest = build_manifest(
        root,
        task="segmentation",
        root_as_written=str(root),
        num_classes=None,
        seed=0,
        fractions={"train": 0.5, "val": 0.25, "test": 0.25},
        stratify=False,
    )
    assert manifest["num_classes"] == 2 and sum(len(s) for s in manifest["splits"].values()) == 4


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    """The model stage's initial (untrained) U-Net, its threshold set at the median foreground
    probability of the test picture, so its masks are about half foreground and move with the pixels
    (a U-Net needs no timm import: this file stays fast)."""
    params = make_workspace(tmp_path_factory.mktemp("seg"), images=8)
    predictor = Predictor.from_file(params.parent / "outputs/model/init.safetensors", device="cpu")
    logits = predictor.logits(predictor.prepare(Image.fromarray(_pattern()))[None])
    predictor.threshold = float(torch.sigmoid(logits).median())
    return predictor


def test_predict_gives_the_same_masks_for_8_bit_16_bit_and_turned_copies(segmenter, tmp_path):
    names = _copies(tmp_path / "in", _pattern())
    Image.fromarray(np.full((48, 80), np.nan, np.float32)).save(tmp_path / "in" / "blank.tif")
    Image.fromarray(_pattern()).transpose(Image.Transpose.ROTATE_90).save(tmp_path / "in" / "sideways.png")
    report = predict_files(segmenter, [str(tmp_path / "in")], tmp_path / "out")
    why = "the image holds NaN or infinite values (mode F); cannot read it as a picture"
    assert report.predicted == 4 and report.failed == [(str(tmp_path / "in" / "blank.tif"), why)]
    masks = {name: np.asarray(Image.open(tmp_path / "out" / "masks" / name)) for name in names}
    upright = masks["upright.png"]
    assert upright.shape == (48, 80) and 0.2 < upright.mean() < 0.8  # upright size, not a constant mask
    assert np.array_equal(masks["deep.png"], upright) and np.array_equal(masks["turned.png"], upright)
    assert Image.open(tmp_path / "out" / "masks" / "sideways.png").size == (48, 80)  # no EXIF: as stored
