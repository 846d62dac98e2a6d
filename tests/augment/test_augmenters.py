"""Building imgaug augmenters from YAML: the registry holds every imgaug augmenter, YAML lists become
ranges and nested specs build, and the segmentation-unsafe list is what imgaug itself refuses."""

from __future__ import annotations

import warnings

import imgaug.augmenters as iaa
import imgaug.parameters as iap
import imgaug.random as iarandom
import numpy as np
import pytest
import yaml

from pipeline.augment.augmenters import SEGMENTATION_UNSAFE, apply_augmenter, augmenters, build_augmenter
from pipeline.config.errors import PipelineError


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


# --- the registry -------------------------------------------------------------------------------


def test_registry_holds_every_imgaug_augmenter_with_submodule_names():
    names = augmenters.names()
    assert {
        "Affine",
        "Fliplr",
        "Sometimes",
        "SomeOf",
        "OneOf",
        "Sequential",
        "ElasticTransformation",
        "pillike.Equalize",
        "pillike.Affine",
        "imgcorruptlike.GaussianNoise",
    } <= set(names)
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


def test_a_bad_spec_fails_when_built_too():
    with pytest.raises(PipelineError, match=r"augment\[0\]: unknown augmenter 'Fliplx'"):
        build_augmenter(["Fliplx"], task="classification")


# --- segmentation safety -------------------------------------------------------------------------


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
                    apply_augmenter(aug, image, mask)
            except AssertionError as exc:
                assert "only process image data" in str(exc), (name, exc)
                raising.add(name)
    assert raising == set(SEGMENTATION_UNSAFE)
