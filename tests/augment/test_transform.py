"""The transform an augment spec becomes: masks follow their images through every geometric augmenter
(also at reflected borders and size changes), pixel-level ones leave masks alone, it pickles."""

from __future__ import annotations

import pickle

import imgaug.augmenters as iaa
import imgaug.random as iarandom
import numpy as np
import pytest
import yaml

from pipeline.augment.augmenters import apply_augmenter
from pipeline.augment.transform import build_transform
from pipeline.config.params import load_params
from tests.augment.test_augmenters import blobs
from tests.conftest import REPO

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
    _, plain_mask = apply_augmenter(plain, image, mask)
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
    transform = build_transform(
        [{"LinearContrast": {"alpha": 1.5}}, {"GaussianBlur": {"sigma": 1.0}}], task="segmentation"
    )
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
