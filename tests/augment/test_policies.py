"""The augmentation policies (pipeline/augment/policies.py): RandAugment (imgaug's, n and m reaching it)
and TrivialAugment (one operation per image, magnitude inside torchvision's range), built from YAML,
listed, seeded, moving masks under geometry only, checked where they are declared, and judged for the
device."""

from __future__ import annotations

import imgaug.augmenters as iaa
import imgaug.parameters as iap
import imgaug.random as iarandom
import numpy as np
import pytest
import yaml

from pipeline.augment.augmenters import apply_augmenter, build_augmenter
from pipeline.augment.checks import augment_problems
from pipeline.augment.device_augment import device_plan
from pipeline.augment.device_support import fallback_reasons
from pipeline.augment.policies import TRIVIAL_OPS, AtanDegrees, TrivialAugment
from tests.augment.test_augmenters import unwrap
from tests.augment.test_device_augment import assert_matches_imgaug

SPEC = yaml.safe_load("""
- RandAugment: {n: 2, m: [6, 12]}
- TrivialAugment: {}
""")
PALETTE = np.array([[0, 0, 0], [255, 40, 40], [40, 255, 40], [40, 40, 255]], np.uint8)  # class -> colour


def blobs(size: int = 32) -> np.ndarray:
    """A 3-class mask of asymmetric rectangles (a flip, shear or rotation shows)."""
    mask = np.zeros((size, size), np.uint8)
    mask[4:14, 6:22], mask[16:28, 3:11], mask[18:30, 18:29] = 1, 2, 3
    return mask


def labels_of(image: np.ndarray) -> np.ndarray:
    """Each pixel's class: the nearest palette colour."""
    return np.abs(image[..., None, :].astype(int) - PALETTE.astype(int)).sum(-1).argmin(-1)


def draw(policy: iaa.Augmenter, count: int, seed: int = 0) -> np.ndarray:
    """(count, children) which operations ``policy``'s choice picks per image, from imgaug's RNG."""
    return policy._get_augmenter_active(count, iarandom.RNG(seed))


# --- built from params, listed ------------------------------------------------------------------


def test_both_build_from_params_and_n_m_reach_imgaugs_randaugment():
    rand, trivial = build_augmenter(SPEC, task="classification")
    assert isinstance(rand, iaa.RandAugment)
    main = rand[1]  # imgaug's RandAugment: [flip + crop], then SomeOf(n, operations)
    assert isinstance(main, iaa.SomeOf) and main.n_mode == "deterministic" and main.n == 2 and len(main) == 18
    assert isinstance(rand._m, iap.DiscreteUniform) and (rand._m.a.value, rand._m.b.value) == (6, 12)
    assert isinstance(trivial, TrivialAugment) and isinstance(trivial, iaa.OneOf)
    assert [op.name for op in trivial] == list(TRIVIAL_OPS) and len(TRIVIAL_OPS) == 14


def test_list_augmenters_shows_both(capsys):
    from pipeline.cli import main

    assert main(["list", "augmenters", "*Augment"]) == 0
    assert capsys.readouterr().out.split() == ["RandAugment", "cpu", "TrivialAugment", "cpu"]


# --- TrivialAugment: one operation, magnitude in range ------------------------------------------


def test_trivial_augment_magnitudes_are_torchvisions_ranges():
    ops = {op.name: op for op in TrivialAugment()}
    rng = iarandom.RNG(1)

    def samples(param, n=4000):
        return np.asarray(param.draw_samples((n,), random_state=rng), np.float64)

    shear = unwrap(ops["ShearX"].shear[0])
    assert isinstance(shear, AtanDegrees) and isinstance(shear.other, iap.Uniform)
    assert (shear.other.a.value, shear.other.b.value) == (-0.99, 0.99)
    angles = samples(shear)
    top = np.degrees(np.arctan(0.99))  # 44.71 degrees
    assert angles.min() >= -top and angles.max() <= top and angles.max() > 0.97 * top and angles.min() < -0.97 * top
    assert abs(np.tan(np.radians(angles)).mean()) < 0.03  # the coefficient, not the angle, is uniform
    assert np.allclose(np.sort(np.tan(np.radians(angles)))[[1000, 2000, 3000]], [-0.495, 0, 0.495], atol=0.05)
    assert isinstance(unwrap(ops["ShearY"].shear[1]), AtanDegrees) and unwrap(ops["ShearX"].shear[1]).value == 0
    for name in ("TranslateX", "TranslateY"):
        axis = 0 if name == "TranslateX" else 1
        shifts = samples(ops[name].translate[axis])
        assert unwrap(ops[name].translate[1 - axis]).value == 0 and set(np.unique(shifts)) == set(range(-32, 33))
    rotate = samples(ops["Rotate"].rotate)
    assert rotate.min() >= -135 and rotate.max() <= 135 and np.ptp(rotate) > 260
    for name, param in [
        ("Brightness", ops["Brightness"].mul),
        ("Color", ops["Color"].factor),
        ("Contrast", ops["Contrast"].factor),
        ("Sharpness", ops["Sharpness"].factor),
    ]:
        factor = samples(param)
        assert factor.min() >= 0.01 and factor.max() <= 1.99 and np.ptp(factor) > 1.9, name
    assert set(np.unique(samples(ops["Posterize"].counts))) == set(range(2, 9))
    threshold = samples(ops["Solarize"].threshold)
    assert threshold.min() >= 0 and threshold.max() <= 255 and np.ptp(threshold) > 250
    assert {type(ops[n]) for n in ("Identity", "AutoContrast", "Equalize")} == {
        iaa.Identity,
        iaa.pillike.Autocontrast,
        iaa.pillike.Equalize,
    }
    for name in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"):  # torchvision: nearest, black fill
        order, cval, mode = (unwrap(p) for p in (ops[name].order, ops[name].cval, ops[name].mode))
        assert order.value == 0 and cval.value == 0 and mode.value == "constant"


def test_trivial_augment_picks_exactly_one_operation_per_image_each_equally_often():
    chosen = draw(TrivialAugment(), 14000)
    assert (chosen.sum(axis=1) == 1).all()
    assert np.allclose(chosen.mean(axis=0), 1 / 14, atol=0.01)  # each of the 14 about 1000 times


def test_trivial_augment_applies_one_operation_per_image():
    """Identity or AutoContrast, one per image: a dull image comes out either untouched or stretched
    to the full range, never anything else, about half the time each."""
    dull = np.random.default_rng(0).integers(100, 140, (16, 16, 3), dtype=np.uint8)
    policy = build_augmenter([{"TrivialAugment": {"ops": ["Identity", "AutoContrast"]}}], task="classification")
    iarandom.seed(3)
    outs = [apply_augmenter(policy, dull, None)[0] for _ in range(400)]
    same = np.array([np.array_equal(o, dull) for o in outs])
    stretched = np.array([o.min() == 0 and o.max() == 255 for o in outs])
    assert (same ^ stretched).all() and 0.4 < same.mean() < 0.6


# --- reproducible, masks ------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_same_seed_same_images(task):
    image, mask = PALETTE[blobs()], blobs() if task == "segmentation" else None

    def run(seed: int) -> list[np.ndarray]:
        """Built afresh (at whatever state the global RNG is in), then seeded, as a worker does."""
        seq = build_augmenter(SPEC, task=task)
        iarandom.seed(seed)
        outs = [apply_augmenter(seq, image, mask) for _ in range(6)]
        return [o[0] for o in outs] + ([o[1] for o in outs] if mask is not None else [])

    first, again, other = run(5), run(5), run(6)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


@pytest.mark.parametrize("op", ["ShearX", "ShearY", "Rotate", "TranslateX", "TranslateY"])
def test_trivial_augment_geometry_moves_the_mask_with_the_image(op):
    """An image painted from its mask: after each shear, rotation or shift the image still shows the
    mask's classes where the mask has them (nearest neighbour both), and the mask has moved."""
    mask = blobs()
    seq = build_augmenter([{"TrivialAugment": {"ops": [op]}}], task="segmentation")
    iarandom.seed(0)
    moved = 0
    for _ in range(6):
        image, out = apply_augmenter(seq, PALETTE[mask], mask)
        assert (labels_of(image) == out).mean() > 0.99, op
        moved += not np.array_equal(out, mask)
    assert moved >= 5


@pytest.mark.parametrize("op", ["Brightness", "Color", "Contrast", "Sharpness", "Posterize", "Solarize", "Equalize"])
def test_trivial_augment_colour_operations_leave_the_mask_alone(op):
    mask = blobs()
    image = (PALETTE[mask] * 0.6 + 40).astype(np.uint8)
    seq = build_augmenter([{"TrivialAugment": {"ops": [op]}}], task="segmentation")
    iarandom.seed(1)
    changed = 0
    for _ in range(4):
        out_image, out = apply_augmenter(seq, image, mask)
        assert np.array_equal(out, mask)
        changed += not np.array_equal(out_image, image)
    assert changed >= 3


def test_randaugment_moves_the_mask_with_its_affine_operations():
    """imgaug's RandAugment warps with pillike.Affine, which refuses masks; given one, ours swaps each
    for an Affine holding the very same parameters, so the draws are imgaug's and the mask follows."""
    mask = blobs()
    rand = build_augmenter([{"RandAugment": {"n": 1, "m": 30}}], task="segmentation")[0]
    originals = [c for c in rand[1] if type(c) is iaa.pillike.Affine]
    assert len(originals) == 5
    iarandom.seed(2)
    moved = 0
    for _ in range(40):
        image, out = apply_augmenter(rand, PALETTE[mask], mask)
        moved += not np.array_equal(out, mask)
    swapped = [c for c in rand[1] if isinstance(c, iaa.Affine)]
    assert all(type(c) is iaa.Affine for c in swapped) and len(swapped) == 5 and moved > 20
    for before, after in zip(originals, swapped):
        assert after.rotate is before.rotate and after.shear is before.shear and after.translate is before.translate
    rotate = next(c for c in swapped if not isinstance(c.rotate, iap.Deterministic))
    for _ in range(5):  # a rotation alone (grey fill): the objects' pixels show their classes, bilinear edges aside
        image, out = apply_augmenter(rotate, PALETTE[mask], mask)
        objects = out > 0
        assert (labels_of(image)[objects] == out[objects]).mean() > 0.9 and not np.array_equal(out, mask)


# --- checks, device -----------------------------------------------------------------------------


def test_bad_arguments_are_located():
    spec = yaml.safe_load("""
    - RandAugment: {n: -1}
    - RandAugment: {m: -3}
    - Sometimes: {p: 0.5, then_list: [{TrivialAugment: {ops: [Shear]}}]}
    - TrivialAugment: {order: 3}
    - RandAugment: {n: [3, 1]}
    """)
    found = {p.key: p.message for p in augment_problems(spec, task="segmentation", key="augment.train", image_size=32)}
    assert set(found) == {
        "augment.train[0].RandAugment.n",
        "augment.train[1].RandAugment.m",
        "augment.train[2].Sometimes.then_list[0].TrivialAugment.ops",
        "augment.train[3].TrivialAugment.order",
        "augment.train[4].RandAugment.n",
    }
    assert "n: expected a whole number of operations >= 0" in found["augment.train[0].RandAugment.n"]
    assert (
        "unknown operation(s) 'Shear'; known: Identity, ShearX"
        in found["augment.train[2].Sometimes.then_list[0].TrivialAugment.ops"]
    )
    assert augment_problems(SPEC, task="segmentation", key="augment.train", image_size=32) == []


def test_device_versions_where_every_drawn_operation_has_one():
    assert fallback_reasons(SPEC) == [
        "augment.train[0].RandAugment: RandAugment has no device version (its crop, PIL-like colour operations, "
        "Invert and Cutout have none)",
        "augment.train[1].TrivialAugment.ops: TrivialAugment: Color, Contrast, Sharpness, Posterize, Solarize, "
        "AutoContrast, Equalize have no device version (leave them out of ops to run it on the device)",
    ]
    covered = ["Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness"]
    spec = [{"TrivialAugment": {"ops": covered, "order": 1}}]
    assert device_plan(spec, task="segmentation") is not None
    drawn = device_plan(spec, task="segmentation").draw(700, (8, 8), 3, seed=1)
    chosen = drawn.leaves[0].values["chosen"]
    assert (chosen.sum(axis=1) == 1).all() and np.allclose(chosen.mean(axis=0), 1 / 7, atol=0.04)
    assert_matches_imgaug(spec, n=12)


def test_preview_draws_the_policies_like_any_augmenter():
    import torch

    from pipeline.augment.preview import preview_rows
    from pipeline.augment.transform import build_transform
    from pipeline.plots import render_grid

    base = [(torch.from_numpy(PALETTE[blobs()].transpose(2, 0, 1).copy()), torch.from_numpy(blobs()))] * 2
    transform = build_transform(SPEC, task="segmentation")
    rows = preview_rows(base, transform, images=2, versions=4, seed=0, segmentation=True)
    again = preview_rows(base, transform, images=2, versions=4, seed=0, segmentation=True)
    assert len(rows) == 2 and all(len(r) == 5 for r in rows)
    versions = [(image, mask) for row in rows for image, mask in row[1:]]
    assert all(image.shape == (32, 32, 3) and mask.shape == (32, 32) for image, mask in versions)
    assert sum(not np.array_equal(mask, blobs()) for _, mask in versions) >= 4  # RandAugment crops every time
    assert all(np.array_equal(a[0], b[0]) for ra, rb in zip(rows, again) for a, b in zip(ra, rb))
    assert render_grid(rows, (32, 32)).ndim == 3
