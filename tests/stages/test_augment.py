"""Augmentation from YAML: names and arguments are checked at their line, masks follow their images,
mask-unsafe augmenters are refused for segmentation, and the augment stage writes its preview."""
from __future__ import annotations

import re

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import imgaug.augmenters as iaa
import imgaug.parameters as iap
import imgaug.random as iarandom
from pipeline.config.params import ConfigError
from pipeline.components import load_params
from pipeline.config.errors import PipelineError
from pipeline.augment import build as augment_build
from stages import augment
from pipeline.augment.checks import augment_problems
from pipeline.augment.build import SEGMENTATION_UNSAFE, augmenters, build_augmenter
from pipeline.augment.transform import build_transform
from pipeline.plots import PALETTE, colour_mask, grid_size

REPO = Path(__file__).resolve().parents[2]


def blobs(height: int = 40, width: int = 48) -> np.ndarray:
    """A mask of three classes in rectangles of different sizes (asymmetric, so flips show)."""
    mask = np.zeros((height, width), np.uint8)
    mask[5:20, 8:30] = 1
    mask[22:35, 3:15] = 2
    mask[25:38, 30:44] = 3
    return mask


def unwrap(param):
    """imgaug wraps some parameters in a prefetcher; the declared distribution is inside."""
    return getattr(param, "other_param", param)


def problems_of(spec, task="segmentation", key="augment.train"):
    return {p.key: p.message for p in augment_problems(spec, task=task, key=key, image_size=[32, 32])}


# --- the registry -------------------------------------------------------------------------------

def test_registry_holds_every_imgaug_augmenter_with_submodule_names():
    names = augmenters.names()
    assert {"Affine", "Fliplr", "Sometimes", "SomeOf", "OneOf", "Sequential", "ElasticTransformation",
            "pillike.Equalize", "pillike.Affine", "imgcorruptlike.GaussianNoise"} <= set(names)
    assert "Augmenter" not in names  # abstract
    assert augmenters.get("Affine") is iaa.Affine and augmenters.get("pillike.Affine") is iaa.pillike.Affine
    assert all(issubclass(augmenters.get(n), iaa.Augmenter) for n in names)
    assert len(names) > 150


def test_pipeline_list_augmenters(capsys):
    from pipeline.cli import main
    assert main(["list", "augmenters", "pillike.*"]) == 0
    listed = capsys.readouterr().out.split()
    assert "pillike.Equalize" in listed and "Affine" not in listed


# --- building from YAML -------------------------------------------------------------------------

def test_yaml_lists_become_ranges_choice_becomes_list_and_nested_specs_build():
    spec = yaml.safe_load("""
    - Fliplr: {p: 0.5}
    - Affine: {rotate: [-20, 20], scale: {x: [0.8, 1.2], y: 1.0}}
    - Sometimes: {p: 0.3, then_list: [{GaussianBlur: {sigma: [0.0, 1.0]}}], else_list: [Flipud]}
    - SomeOf: {n: [1, 2], children: [Fliplr, {Rot90: {k: {choice: [1, 3]}}}]}
    - OneOf: {children: [Grayscale, {Multiply: {mul: [0.5, 1.5]}}]}
    """)
    seq = build_augmenter(spec, task="segmentation", random_order=True)
    assert isinstance(seq, iaa.Sequential) and seq.random_order is True and len(seq) == 5
    affine = seq[1]
    rotate = unwrap(affine.rotate)
    assert isinstance(rotate, iap.Uniform) and (rotate.a.value, rotate.b.value) == (-20, 20)
    scale_x, scale_y = (unwrap(p) for p in affine.scale)
    assert isinstance(scale_x, iap.Uniform) and scale_y.value == 1.0
    sometimes = seq[2]
    assert isinstance(sometimes.then_list[0], iaa.GaussianBlur) and isinstance(sometimes.else_list[0], iaa.Flipud)
    some_of = seq[3]
    assert [type(c) for c in some_of] == [iaa.Fliplr, iaa.Rot90]
    k = unwrap(some_of[1].k)
    assert isinstance(k, iap.Choice) and k.a == [1, 3]
    assert [type(c) for c in seq[4]] == [iaa.Grayscale, iaa.Multiply]


def test_each_argument_problem_is_reported_at_its_own_dotted_key():
    spec = yaml.safe_load("""
    - Fliplr: {p: 3}
    - Affine: {rotat: [-20, 20]}
    - Flipx
    - Sometimes: {p: 0.3, then_list: [{GaussianBlur: {sigma: [-1.0, 1.0]}}]}
    - GaussianBlur: {sigma: [0, 1], bogus: 1}
    - Affine: {rotate: 10, mode: reflec}
    - OneOf: [Fliplr]
    """)
    found = problems_of(spec)
    assert set(found) == {
        "augment.train[0].Fliplr.p", "augment.train[1].Affine.rotat", "augment.train[2]",
        "augment.train[3].Sometimes.then_list[0].GaussianBlur.sigma", "augment.train[4].GaussianBlur.bogus",
        "augment.train[5].Affine", "augment.train[6]"}
    assert "interval [0.0, 1.0]" in found["augment.train[0].Fliplr.p"]
    assert "did you mean 'rotate'?" in found["augment.train[1].Affine.rotat"]
    assert "did you mean 'Flipud'?" in found["augment.train[2]"] or "'Fliplr'" in found["augment.train[2]"]
    assert "fails on a test image" in found["augment.train[5].Affine"]  # only noticed when run
    assert "children" in found["augment.train[6]"]


def test_a_bad_spec_fails_when_built_too():
    with pytest.raises(PipelineError, match=r"augment\[0\]: unknown augmenter 'Fliplx'"):
        build_augmenter(["Fliplx"], task="classification")


def test_validate_reports_bad_name_and_bad_argument_at_their_lines(tmp_path):
    text = (REPO / "params.yaml").read_text()
    text = text.replace("    - Fliplr: {p: 0.5}\n", "    - Flipr: {p: 0.5}\n")
    text = text.replace("    - Affine: {rotate:", "    - Affine: {rotat:")
    lines = text.splitlines()
    name_line = next(i for i, line in enumerate(lines, 1) if "- Flipr:" in line)
    arg_line = next(i for i, line in enumerate(lines, 1) if "{rotat:" in line)
    params = tmp_path / "params.yaml"
    params.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_params(params)
    located = {p.key: p.line for p in caught.value.problems if p.key.startswith("augment")}
    assert located == {"augment.train[0].Flipr": name_line, "augment.train[2].Affine.rotat": arg_line}
    assert f"params.yaml:{arg_line}:" in str(caught.value) and "did you mean 'rotate'?" in str(caught.value)


def shipped_configs() -> list[Path]:
    return [REPO / "params.yaml", *sorted((REPO / "configs").glob("*.yaml"))]


@pytest.mark.parametrize("path", shipped_configs(), ids=lambda p: p.name)
def test_every_augmenter_in_a_shipped_config_builds(path):
    raw = yaml.safe_load(path.read_text())
    task = raw.get("data", {}).get("task", "segmentation")
    section = raw.get("augment", {})
    for name in ("train", "eval"):
        spec = section.get(name, [])
        assert problems_of(spec, task=task, key=f"augment.{name}") == {}
        seq = build_augmenter(spec, task=task)
        assert len(seq) == len(spec)


# --- segmentation safety -------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SEGMENTATION_UNSAFE))
def test_mask_unsafe_augmenters_are_refused_for_segmentation_only(name):
    nested = [{"Sometimes": {"p": 0.5, "then_list": [name]}}]
    assert "cannot handle segmentation masks" in problems_of(nested)[f"augment.train[0].Sometimes.then_list[0]"]
    assert problems_of(nested, task="classification") == {}


def test_geometric_child_of_a_channel_subset_wrapper_is_refused_for_segmentation():
    spec = [{"WithChannels": {"channels": [0], "children": [{"Affine": {"rotate": 10}}]}}]
    assert "mask cannot follow" in problems_of(spec)["augment.train[0].WithChannels"]
    assert problems_of([{"WithChannels": {"channels": [0], "children": ["Invert"]}}]) == {}


def test_the_unsafe_list_is_what_imgaug_actually_refuses():
    """Run every augmenter that builds without arguments on an image with a mask: exactly those
    listed as unsafe raise (imgaug asserts 'can currently only process image data')."""
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    mask = blobs(32, 32)
    iarandom.seed(0)
    raising = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in augmenters.names():
            try:
                aug = augmenters.get(name)()
            except Exception:
                continue  # needs arguments
            try:  # RandAugment picks its operations at random: give the unsafe ones many chances
                for _ in range(40 if name in SEGMENTATION_UNSAFE else 3):
                    augment_build.apply_augmenter(aug, image, mask)
            except AssertionError as exc:
                assert "only process image data" in str(exc), (name, exc)
                raising.add(name)
    assert raising == set(SEGMENTATION_UNSAFE)


# --- the transform ------------------------------------------------------------------------------

GEOMETRIC = yaml.safe_load("""
- Fliplr: {p: 0.5}
- Flipud: {p: 0.5}
- Affine: {rotate: [-30, 30], scale: [0.8, 1.2], translate_percent: [-0.1, 0.1], shear: [-8, 8],
           order: 0, mode: reflect}
- Sometimes: {p: 0.5, then_list: [{PiecewiseAffine: {scale: [0.02, 0.04], order: 0}}]}
- Sometimes: {p: 0.5, then_list: [{ElasticTransformation: {alpha: [5, 20], sigma: 3, order: 0}}]}
- Rotate: {rotate: [-40, 40], order: 0, mode: edge}
""")


@pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")  # imgaug's skimage call
def test_mask_equal_to_its_image_stays_equal_under_geometric_transforms():
    mask = blobs()
    image = np.repeat(mask[..., None], 3, axis=-1)  # every channel equals the mask
    transform = build_transform(GEOMETRIC, task="segmentation")
    iarandom.seed(3)
    moved = 0
    for _ in range(12):
        out_image, out_mask = transform(image, mask)
        assert out_mask.dtype == np.uint8 and out_mask.shape == out_image.shape[:2] == mask.shape
        assert np.array_equal(out_image[..., 0], out_mask)
        moved += not np.array_equal(out_mask, mask)
    assert moved >= 10
    assert np.array_equal(image[..., 0], mask)  # inputs untouched


def test_mask_follows_a_reflected_border():
    """imgaug fills a warped mask's border with background even where the image border is
    reflected; the transform warps the mask with the image's fill mode instead."""
    mask = blobs()
    image = np.repeat(mask[..., None], 3, axis=-1)
    spec = [{"Affine": {"rotate": 35, "translate_px": {"x": 12}, "order": 0, "mode": "reflect"}}]
    out_image, out_mask = build_transform(spec, task="segmentation")(image, mask)
    assert np.array_equal(out_image[..., 0], out_mask)
    plain = iaa.Affine(rotate=35, translate_px={"x": 12}, order=0, mode="reflect")  # imgaug's default
    _, plain_mask = augment_build.apply_augmenter(plain, image, mask)
    assert not np.array_equal(out_image[..., 0], plain_mask)


def test_default_training_augmentation_keeps_masks_on_their_objects():
    spec = load_params(REPO / "params.yaml", semantic=False).get("augment.train")
    mask = (blobs() > 0).astype(np.uint8)
    image = np.repeat(mask[..., None] * 255, 3, axis=-1).astype(np.uint8)
    transform = build_transform(spec, task="segmentation")
    iarandom.seed(0)
    agreement = []
    for _ in range(20):
        out_image, out_mask = transform(image, mask)
        agreement.append(np.mean((out_image.mean(axis=-1) > 127) == (out_mask > 0)))
    assert min(agreement) > 0.95  # only bilinear edges and blur differ


def test_pixel_level_augmenters_change_the_image_only():
    mask = blobs()
    image = np.random.default_rng(1).integers(0, 256, (*mask.shape, 3), dtype=np.uint8)
    transform = build_transform([{"LinearContrast": {"alpha": 1.5}}, {"GaussianBlur": {"sigma": 1.0}}],
                                task="segmentation")
    out_image, out_mask = transform(image, mask)
    assert np.array_equal(out_mask, mask) and not np.array_equal(out_image, image)


def test_size_changing_augmenters_keep_mask_and_image_the_same_size():
    mask = blobs()
    image = np.repeat(mask[..., None], 3, axis=-1)
    for spec in ([{"CropToFixedSize": {"width": 20, "height": 16}}], [{"Pad": {"px": [1, 6], "keep_size": False}}]):
        out_image, out_mask = build_transform(spec, task="segmentation")(image, mask)
        assert out_mask.shape == out_image.shape[:2] != mask.shape
        assert np.array_equal(out_image[..., 0], out_mask)
    # Jigsaw pads the image but hands masks back at their old size; they are brought to the image's.
    out_image, out_mask = build_transform([{"Jigsaw": {"nb_rows": 3, "nb_cols": 5}}], task="segmentation")(image, mask)
    assert out_mask.shape == out_image.shape[:2] == (42, 50)


def test_empty_spec_is_the_identity_and_classification_has_no_mask():
    image = np.full((8, 8, 3), 7, np.uint8)
    out_image, out_mask = build_transform([], task="segmentation")(image, None)
    assert out_image is image and out_mask is None
    out_image, out_mask = build_transform(["Invert"], task="classification")(image)
    assert out_mask is None and np.all(out_image == 248)


def test_transform_pickles_and_rebuilds_with_the_same_stream():
    transform = build_transform(GEOMETRIC[:3], task="segmentation")
    copy = pickle.loads(pickle.dumps(transform))
    mask = blobs()
    image = np.repeat(mask[..., None], 3, axis=-1)
    iarandom.seed(11)
    first = [transform(image, mask)[1] for _ in range(3)]
    iarandom.seed(11)
    again = [copy(image, mask)[1] for _ in range(3)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], first[1])


def test_check_leaves_global_random_state_untouched():
    np.random.seed(5)
    iarandom.seed(5)
    expected = (np.random.rand(), iarandom.get_global_rng().integers(0, 10**9))
    np.random.seed(5)
    iarandom.seed(5)
    assert problems_of(GEOMETRIC[:3]) == {}
    assert (np.random.rand(), iarandom.get_global_rng().integers(0, 10**9)) == expected


# --- the preview and the stage ------------------------------------------------------------------

def test_overlay_colours_labelled_pixels_only():
    """The preview draws masks with the one palette the evaluation overlays use: a class's inside is
    blended with its colour, its outline drawn in it, unlabelled pixels are left alone."""
    image = np.full((8, 8, 3), 100, np.uint8)
    mask = np.zeros((8, 8), np.uint8)
    mask[0:3, 0:3], mask[4:7, 4:7] = 1, 2
    out = colour_mask(image, mask, alpha=0.5)
    assert out[1, 1].tolist() == np.round(0.5 * 100 + 0.5 * np.array(PALETTE[1])).astype(int).tolist()
    assert out[5, 5].tolist() == np.round(0.5 * 100 + 0.5 * np.array(PALETTE[2])).astype(int).tolist()
    assert out[0, 2].tolist() == list(PALETTE[1]) and out[4, 4].tolist() == list(PALETTE[2])
    assert (out[mask == 0] == 100).all()


def write_dataset(root: Path, count: int = 6, size: int = 24) -> Path:
    """A tiny segmentation dataset, its params file and its split manifest (as the split stage
    writes it), all under ``root``."""
    from pipeline.data.manifest import Manifest
    from pipeline.data.files import segmentation_class_names
    from pipeline.atomic import write_json

    rng = np.random.default_rng(0)
    (root / "data" / "images").mkdir(parents=True)
    (root / "data" / "masks").mkdir()
    entries = []
    for i in range(count):
        mask = np.zeros((size, size), np.uint8)
        y, x = rng.integers(2, size // 2, 2)
        mask[y:y + size // 3, x:x + size // 3] = 1
        image = np.where(mask[..., None] > 0, [200, 40, 40], [30, 90, 160]).astype(np.uint8)
        Image.fromarray(image).save(root / "data" / "images" / f"s{i}.png")
        Image.fromarray(mask).save(root / "data" / "masks" / f"s{i}.png")
        entries.append({"image": f"images/s{i}.png", "mask": f"masks/s{i}.png"})
    splits = {"train": entries[:4], "val": entries[4:5], "test": entries[5:]}
    manifest = Manifest(task="segmentation", root="data", num_classes=2,
                        class_names=segmentation_class_names(2), splits=splits,
                        counts={k: {"images": len(v)} for k, v in splits.items()}, fingerprint="test")
    write_json(root / "outputs" / "split" / "manifest.json", manifest.to_dict())
    text = (REPO / "params.yaml").read_text()
    text = text.replace("root: data/shapes-seg", "root: data").replace("image_size: [64, 64]", "image_size: [16, 20]")
    text = text.replace("preview: {images: 4, versions: 6, seed: 0}", "preview: {images: 3, versions: 5, seed: 0}")
    text = re.sub(r"pretrained: \S+", "pretrained: false", text)  # the shipped weights stay in the repo
    (root / "params.yaml").write_text(text)
    return root / "params.yaml"


def test_augment_stage_writes_preview_of_expected_size_and_a_disabled_cache(tmp_path):
    params = write_dataset(tmp_path)
    assert augment.main(["--params", str(params)]) == 0
    with Image.open(tmp_path / "outputs" / "augment" / "preview.png") as picture:
        picture.load()
        assert picture.format == "PNG" and picture.mode == "RGB"
        height, width = grid_size(3, 1 + 5, (16, 20))
        assert picture.size == (width, height)
        pixels = np.asarray(picture)
    assert (pixels[0] == 255).all()  # the white gap above the first row
    cells = [pixels[2 + r * 18:2 + r * 18 + 16, 2:2 + 20] for r in range(3)]
    assert len({c.tobytes() for c in cells}) == 3  # three different images
    index = (tmp_path / "outputs" / "augment" / "cache" / "index.json").read_text()
    assert '"enabled": false' in index
    first = (tmp_path / "outputs" / "augment" / "preview.png").read_bytes()
    assert augment.main(["--params", str(params)]) == 0
    assert (tmp_path / "outputs" / "augment" / "preview.png").read_bytes() == first  # seeded


def test_augment_stage_refuses_a_missing_manifest(tmp_path, capsys):
    params = write_dataset(tmp_path)
    (tmp_path / "outputs" / "split" / "manifest.json").unlink()
    assert augment.main(["--params", str(params)]) == 2
    assert "run the split stage first" in capsys.readouterr().err
    assert not (tmp_path / "outputs" / "augment").exists()


def test_classification_preview_shows_original_then_versions_without_overlay():
    import torch

    from pipeline.augment.preview import preview_rows
    from pipeline.plots import render_grid

    rng = np.random.default_rng(2)
    base = [(torch.from_numpy(rng.integers(0, 256, (3, 6, 8), dtype=np.uint8)), torch.tensor(i)) for i in range(5)]
    transform = build_transform(["Invert"], task="classification")
    rows = preview_rows(base, transform, images=2, versions=3, seed=0, segmentation=False)
    assert len(rows) == 2 and all(len(r) == 4 and r[0][1] is None for r in rows)
    assert np.array_equal(rows[1][0][0], base[4][0].permute(1, 2, 0).numpy())  # spread: first and last
    grid = render_grid(rows, (6, 8))
    assert grid.shape == (*grid_size(2, 4, (6, 8)), 3)
    assert np.array_equal(grid[2:8, 12:20], 255 - rows[0][0][0])  # column 2: inverted, no overlay
