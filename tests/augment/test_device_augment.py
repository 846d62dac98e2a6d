"""Device augmentation (pipeline/augment/device*.py) against imgaug itself, on CPU tensors.

Each draw is replayed through imgaug with the drawn values fixed (``iaa.Affine(rotate=r, ...)``,
``iaa.Fliplr(1.0)``, per-channel values through ``WithChannels``): the device result must match
within interpolation tolerance, masks exactly away from label edges and the image border. Then the
containers' choices, the fallback report, ``augment.device`` resolution, and tiny training runs."""

from __future__ import annotations

import math
import pickle

import imgaug.augmenters as iaa
import numpy as np
import pytest
import torch
import yaml

from pipeline.augment.augmenters import _masks_follow_borders, apply_augmenter
from pipeline.augment.device_augment import DeviceAugment, device_plan, fold
from pipeline.augment.device_ops import Pixel, Warp
from pipeline.augment.device_support import AFFINE_FAMILY, fallback_reasons, resolve_where, runs_on
from pipeline.config.errors import PipelineError
from tests.conftest import REPO, train_history, train_workspace

H, W = 48, 64


def scene(seed: int, h: int = H, w: int = W) -> tuple[np.ndarray, np.ndarray]:
    """A smooth RGB image with discs of classes 1 and 2 painted in (sharp edges), and their mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.stack([xx * 255 / (w - 1), yy * 255 / (h - 1), 128 + 100 * np.sin(xx / 5) * np.cos(yy / 7)], -1)
    mask = np.zeros((h, w), np.uint8)
    for _ in range(3):
        cy, cx, r = rng.integers(8, h - 8), rng.integers(8, w - 8), rng.integers(5, 12)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        mask[disc] = rng.integers(1, 3)
        image[disc] = image[disc] * 0.3 + rng.integers(0, 256, 3) * 0.7
    return np.clip(image, 0, 255).astype(np.uint8), mask


def run_device(spec: list, n: int = 6, seed: int = 3, h: int = H, w: int = W):
    """The samples, the draw, and the device output (HxWxC float images, masks) for ``spec``."""
    plan = device_plan(spec, task="segmentation")
    assert plan is not None, fallback_reasons(spec)
    samples = [scene(s, h, w) for s in range(n)]
    images = torch.from_numpy(np.stack([s[0] for s in samples]).transpose(0, 3, 1, 2).copy())
    masks = torch.from_numpy(np.stack([s[1] for s in samples]))
    drawn = plan.draw(n, (h, w), 3, seed)
    out, out_masks = plan.apply(images, masks, drawn)
    return samples, drawn, out.numpy().transpose(0, 2, 3, 1), out_masks.numpy()


def per_channel(cls: type, arg: str, values: np.ndarray, cast: type = float) -> iaa.Augmenter:
    if np.all(values == values[0]):
        return cls(**{arg: cast(values[0])})
    return iaa.Sequential([iaa.WithChannels([c], cls(**{arg: cast(v)})) for c, v in enumerate(values)])


def fixed(leaf, i: int) -> iaa.Augmenter:
    """imgaug's augmenter applying exactly what ``leaf`` drew for sample ``i``."""
    v = leaf.values
    if not leaf.active[i]:
        return iaa.Identity()
    if leaf.name in ("Fliplr", "Flipud"):
        return getattr(iaa, leaf.name)(1.0)
    if leaf.name == "Rot90":
        return iaa.Rot90(int(v["k"][i]))
    if leaf.name in AFFINE_FAMILY:  # their values, as Affine draws them
        cast = int if v["translate_mode"] == "px" else float
        shift = {"x": cast(v["translate_x"][i]), "y": cast(v["translate_y"][i])}
        cval = v["cval"][i]
        assert np.all(cval == cval[0]), "a per-channel cval has no fixed imgaug form; test it apart"
        return iaa.Affine(
            scale={"x": float(v["scale_x"][i]), "y": float(v["scale_y"][i])},
            rotate=float(v["rotate"][i]),
            shear={"x": float(v["shear_x"][i]), "y": float(v["shear_y"][i])},
            mode=str(v["mode"][i]),
            cval=int(cval[0]),
            order=int(v["order"][i]),
            **({"translate_px": shift} if cast is int else {"translate_percent": shift}),
        )
    if leaf.name == "GaussianBlur":
        return iaa.GaussianBlur(sigma=float(v["sigma"][i]))
    kinds = {
        "LinearContrast": ("linear", "alpha", float),
        "GammaContrast": ("gamma", "gamma", float),
        "Add": ("add", "value", int),
        "Multiply": ("multiply", "mul", float),
    }
    kind, arg, cast = kinds[leaf.name]
    return per_channel(getattr(iaa, leaf.name), arg, v[kind][i], cast)


def imgaug_replay(drawn, i: int, image: np.ndarray, mask: np.ndarray):
    """Sample ``i`` through imgaug with every drawn value fixed, leaves in chain order."""
    sequential = iaa.Sequential([fixed(leaf, i) for leaf in drawn.leaves if leaf.op is not None])
    _masks_follow_borders(sequential)  # as the CPU path builds it
    return apply_augmenter(sequential, image.copy(), mask.copy())


def away_from_edges(mask: np.ndarray, border: int = 2) -> np.ndarray:
    """Pixels whose 3x3 neighbourhood holds one label, ``border`` px inside the image."""
    padded = np.pad(mask, 1, mode="edge")
    same = np.ones(mask.shape, bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            same &= padded[dy : dy + mask.shape[0], dx : dx + mask.shape[1]] == mask
    same[:border], same[-border:], same[:, :border], same[:, -border:] = False, False, False, False
    return same


def assert_matches_imgaug(
    spec: list, *, n: int = 6, seed: int = 3, h: int = H, w: int = W, mean: float = 1.0, p99: float = 3.0
) -> None:
    samples, drawn, out, out_masks = run_device(spec, n, seed, h, w)
    for i, (image, mask) in enumerate(samples):
        ref, ref_mask = imgaug_replay(drawn, i, image, mask)
        diff = np.abs(out[i] - ref.astype(np.float32))[3:-3, 3:-3]
        assert diff.mean() < mean and np.percentile(diff, 99) < p99, (i, diff.mean(), np.percentile(diff, 99))
        inner = away_from_edges(ref_mask)
        assert inner.sum() > 0.5 * inner.size
        assert np.array_equal(out_masks[i][inner], ref_mask[inner]), i


# --- augmenter by augmenter against imgaug ---------------------------------------------------------


@pytest.mark.parametrize(
    "affine",
    [
        {"rotate": [-30, 30], "scale": [0.8, 1.2], "mode": "reflect"},
        {
            "rotate": [-30, 30],
            "translate_percent": {"x": [-0.2, 0.2]},
            "shear": [-10, 10],
            "mode": "constant",
            "cval": 77,
        },
        {"rotate": [-30, 30], "scale": {"x": [0.7, 1.3], "y": [0.8, 1.1]}, "translate_px": [-5, 5], "mode": "edge"},
        {"rotate": [-30, 30], "scale": [0.7, 1.0], "mode": "symmetric"},
        {"rotate": [-30, 30], "scale": [0.7, 1.0], "order": 0},
        {"shear": {"x": [-15, 15], "y": [-15, 15]}, "mode": {"choice": ["reflect", "edge", "constant"]}},
    ],
)
def test_affine_matches_imgaug(affine):
    assert_matches_imgaug([{"Affine": affine}])


def test_affine_shortcuts_match_imgaug():
    assert_matches_imgaug(
        [
            {"Rotate": {"rotate": [-45, 45]}},
            {"ScaleX": {"scale": [0.7, 1.3]}},
            {"TranslateY": {"percent": [-0.1, 0.1]}},
            {"ShearX": {"shear": [-10, 10]}},
        ]
    )


def test_random_cval_fills_each_channel_with_its_own_value():
    spec = [{"Affine": {"translate_px": {"x": [20, 25]}, "mode": "constant", "cval": [0, 255]}}]
    _, drawn, out, _ = run_device(spec)
    cvals = drawn.leaves[0].values["cval"]
    assert np.allclose(out[:, H // 2, :10], cvals[:, None, :])  # shifted right: the left edge is all fill
    assert len({tuple(c) for c in cvals}) > 1 and any(len(set(c)) > 1 for c in cvals)  # per sample, per channel


def test_flips_and_rot90_are_exact():
    spec = [{"Fliplr": {"p": 0.5}}, {"Flipud": {"p": 0.5}}, {"Rot90": {"k": [0, 3]}}]
    samples, drawn, out, out_masks = run_device(spec, n=8, h=40, w=40)
    for i, (image, mask) in enumerate(samples):
        ref, ref_mask = imgaug_replay(drawn, i, image, mask)
        assert np.abs(out[i] - ref).max() < 1e-3 and np.array_equal(out_masks[i], ref_mask)
    assert len({int(k) for k in drawn.leaves[2].values["k"]}) > 1


def test_rot90_keeps_a_non_square_size():
    # imgaug resizes back with cubic interpolation, the device warp with bilinear: close, not equal
    assert_matches_imgaug([{"Rot90": {"k": 1}}], mean=1.0, p99=12.0)


def test_gaussian_blur_matches_imgaug():
    assert_matches_imgaug([{"GaussianBlur": {"sigma": [0.0, 3.0]}}], n=8)


@pytest.mark.parametrize(
    "spec",
    [
        [{"LinearContrast": {"alpha": [0.5, 1.5], "per_channel": 0.5}}],
        [{"GammaContrast": {"gamma": [0.5, 2.0], "per_channel": 0.5}}],
        [{"Add": {"value": [-40, 40], "per_channel": 0.5}}],
        [{"Multiply": {"mul": [0.6, 1.4], "per_channel": 0.5}}],
    ],
)
def test_pixel_augmenters_match_imgaug(spec):
    assert_matches_imgaug(spec, n=8)


def test_default_chain_matches_imgaug_sample_by_sample():
    spec = yaml.safe_load((REPO / "params.yaml").read_text())["augment"]["train"]
    assert fallback_reasons(spec) == []  # the shipped chain runs on the device
    assert_matches_imgaug(spec, n=12, seed=11)


# --- containers: imgaug's choices, per sample ------------------------------------------------------


def test_sometimes_picks_then_or_else_per_sample():
    spec = [{"Sometimes": {"p": 0.3, "then_list": [{"Fliplr": {"p": 1.0}}], "else_list": [{"Flipud": {"p": 1.0}}]}}]
    plan = device_plan(spec, task="segmentation")
    drawn = plan.draw(4000, (8, 8), 3, seed=0)
    then = drawn.leaves[0].values["then"]
    assert abs(then.mean() - 0.3) < 0.04
    fliplr, flipud = drawn.leaves[1], drawn.leaves[2]
    assert np.array_equal(fliplr.active, then) and np.array_equal(flipud.active, ~then)
    assert_matches_imgaug(spec, n=10)


def test_oneof_applies_exactly_one_child_per_sample():
    spec = [{"OneOf": {"children": [{"Fliplr": {"p": 1.0}}, {"Flipud": {"p": 1.0}}, {"Add": {"value": 30}}]}}]
    drawn = device_plan(spec, task="segmentation").draw(3000, (8, 8), 3, seed=1)
    chosen = drawn.leaves[0].values["chosen"]
    assert (chosen.sum(axis=1) == 1).all() and np.allclose(chosen.mean(axis=0), 1 / 3, atol=0.04)
    for leaf, column in zip(drawn.leaves[1:], chosen.T):
        assert np.array_equal(leaf.active, column), leaf.name
    assert_matches_imgaug(spec, n=10)


def test_someof_counts_and_random_order_per_sample():
    # (x + 40) * 2 or x * 2 + 40: which child went first shows in the pixels
    spec = [
        {"SomeOf": {"n": 2, "random_order": True, "children": [{"Add": {"value": 40}}, {"Multiply": {"mul": 2.0}}]}}
    ]
    plan = device_plan(spec, task="classification")
    images = torch.full((400, 3, 4, 4), 20, dtype=torch.uint8)
    out, _ = plan(images, seed=5)
    values = out[:, 0, 0, 0]
    assert set(values.tolist()) == {120.0, 80.0}
    assert 0.4 < (values == 120).float().mean() < 0.6
    counted = (
        device_plan([{"SomeOf": {"n": [1, 2], "children": ["Fliplr", "Flipud", "Identity"]}}], task="segmentation")
        .draw(2000, (8, 8), 3, seed=2)
        .leaves[0]
        .values["chosen"]
    )
    assert set(counted.sum(axis=1)) == {1, 2}


def test_random_order_sequential_matches_imgaug_per_sample():
    spec = [{"Affine": {"rotate": [-20, 20]}}, {"LinearContrast": {"alpha": [0.6, 1.4]}}, {"Fliplr": {"p": 0.5}}]
    plan = device_plan(spec, task="segmentation", random_order=True)
    drawn = plan.draw(6, (H, W), 3, seed=4)
    assert len(drawn.ops) > 1  # the contrast splits the warps where it comes between
    samples = [scene(s) for s in range(6)]
    images = torch.from_numpy(np.stack([s[0] for s in samples]).transpose(0, 3, 1, 2).copy())
    out = plan.apply(images, None, drawn)[0].numpy().transpose(0, 2, 3, 1)
    for i, (image, mask) in enumerate(samples):
        ref, _ = imgaug_replay(drawn, i, image, mask)
        assert np.abs(out[i] - ref)[3:-3, 3:-3].mean() < 1.0


def test_parameters_come_from_imgaug_parameters():
    spec = [{"Affine": {"rotate": {"choice": [90, -90]}}}]
    rotate = device_plan(spec, task="segmentation").draw(200, (8, 8), 3, seed=0).leaves[0].values["rotate"]
    assert set(np.round(rotate).tolist()) == {90.0, -90.0}


def test_geometry_folds_into_one_warp_until_something_comes_between():
    def ops(spec):
        return [type(op).__name__ for op in device_plan(spec, task="segmentation").draw(16, (8, 8), 3, seed=0).ops]

    assert ops(["Fliplr", {"Affine": {"rotate": [-10, 10]}}, "Flipud", {"Rot90": {"k": 1}}]) == ["Warp"]
    assert ops([{"Affine": {"rotate": 10}}, {"Affine": {"rotate": 10}}]) == ["Warp", "Warp"]  # each its border
    assert ops([{"OneOf": {"children": [{"Affine": {"rotate": 10}}, {"Affine": {"scale": 0.8}}]}}]) == ["Warp"]
    assert ops([{"Affine": {"rotate": 10}}, {"Add": {"value": 5}}, "Fliplr"]) == ["Warp", "Pixel", "Warp"]
    assert fold([], 4) == [] and isinstance(Warp.identity(2), Warp) and Pixel("add", np.zeros((2, 3))).kind == "add"


# --- what falls back, and where the chain runs -------------------------------------------------------


def test_unsupported_augmenters_are_named_at_their_key():
    spec = [
        "Fliplr",
        {"ElasticTransformation": {"alpha": 5, "sigma": 1}},
        {"Sometimes": {"p": 0.5, "then_list": ["Grayscale"]}},
        {"Affine": {"mode": "wrap"}},
        {"OneOf": {"children": [{"Rot90": {"k": 1, "keep_size": False}}]}},
        {"Affine": {"fit_output": True}},
    ]
    assert fallback_reasons(spec) == [
        "augment.train[1].ElasticTransformation: ElasticTransformation has no device version",
        "augment.train[2].Sometimes.then_list[0].Grayscale: Grayscale has no device version",
        "augment.train[3].Affine.mode: Affine: mode 'wrap' has no device version (supported: constant, edge, "
        "reflect, symmetric)",
        "augment.train[4].OneOf.children[0].Rot90.keep_size: Rot90 with keep_size: false changes the image size; "
        "no device version",
        "augment.train[5].Affine.fit_output: Affine with fit_output: true changes the image size; no device version",
    ]
    assert device_plan(spec, task="segmentation") is None
    assert runs_on("Affine") == runs_on("OneOf") == "device" and runs_on("ElasticTransformation") == "cpu"
    assert runs_on("pillike.Affine") == "cpu"


def test_where_augment_train_runs():
    spec, bad = [{"Fliplr": {"p": 0.5}}], [{"Jigsaw": {"nb_rows": 2}}]
    where = {"task": "segmentation", "random_order": False}
    assert resolve_where("auto", spec, device_type="cuda", **where) == "device"
    assert resolve_where("auto", spec, device_type="cpu", **where) == "cpu"  # the workers run beside the model
    assert resolve_where("auto", bad, device_type="cuda", **where) == "cpu"
    assert resolve_where("cpu", spec, device_type="cuda", **where) == "cpu"
    assert resolve_where("device", spec, device_type="cpu", **where) == "device"
    assert resolve_where("device", spec, device_type="cuda", offline=True, **where) == "cpu"
    with pytest.raises(PipelineError, match=r"augment.train\[0\].Jigsaw"):
        resolve_where("device", bad, device_type="cuda", **where)


def test_list_augmenters_says_where_each_runs(capsys):
    from pipeline.cli import main

    assert main(["list", "augmenters", "Elastic*"]) == 0
    assert main(["list", "augmenters", "Fliplr"]) == 0
    assert capsys.readouterr().out.split() == ["ElasticTransformation", "cpu", "Fliplr", "device"]


# --- the batch transform training uses ------------------------------------------------------------


def test_device_augment_is_seeded_per_epoch_and_batch_and_pickles():
    spec = yaml.safe_load((REPO / "params.yaml").read_text())["augment"]["train"]
    images = torch.from_numpy(np.stack([scene(s)[0] for s in range(4)]).transpose(0, 3, 1, 2).copy())
    masks = torch.from_numpy(np.stack([scene(s)[1] for s in range(4)]))

    def epoch(augment: DeviceAugment, seed: int) -> list[torch.Tensor]:
        augment.set_epoch(seed)
        return [augment(images, masks)[0] for _ in range(2)]

    first = DeviceAugment(spec, task="segmentation")
    a, b = epoch(first, 7), epoch(pickle.loads(pickle.dumps(first)), 7)  # a resumed run: a new process
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[0], epoch(first, 8)[0])
    out, out_masks = first(images, masks)
    assert out.dtype == torch.float32 and out_masks.dtype == torch.uint8 and out_masks.shape == masks.shape
    with pytest.raises(PipelineError, match="Jigsaw"):
        DeviceAugment([{"Jigsaw": {"nb_rows": 2}}], task="segmentation")


@pytest.mark.slow
@pytest.mark.parametrize("setting, where", [("device", "device"), ("auto", "cpu")])  # auto: CPU training
def test_tiny_training_runs_with_augmentation_on_either_side(tmp_path, shapes_dataset, monkeypatch, setting, where):
    from pipeline.config.params import load_params
    from pipeline.data.manifest import load_manifest
    from pipeline.seeding import epoch_seed
    from pipeline.training import inputs
    from stages import train as train_stage

    params = train_workspace(tmp_path, shapes_dataset, **{"train.epochs": 2, "augment.device": setting})
    view = load_params(params).view(train_stage.PARAMS)
    manifest = load_manifest(params.parent / "outputs/split/manifest.json")
    assert inputs.augment_where(view) == where
    train_set, val_set = inputs.datasets(view, manifest)  # the workers augment, or the loop does
    assert (train_set.transform is None) == (where == "device") and val_set.batch_transform is None
    assert isinstance(train_set.batch_transform, DeviceAugment) == (where == "device")
    calls = []
    real = DeviceAugment.__call__
    monkeypatch.setattr(DeviceAugment, "__call__", lambda self, *a: calls.append(self.epoch_seed) or real(self, *a))
    assert train_stage.main(["--params", str(params)]) == 0
    rows = train_history(params)
    assert [r["epoch"] for r in rows] == [1, 2] and all(math.isfinite(r["train_loss"]) for r in rows)
    if where == "device":  # every training batch, validation untouched; each epoch seeded from (train.seed,
        # epoch) alone, as the loop seeds everything else: a run resumed at an epoch draws what it drew
        assert len(calls) == 2 * (len(manifest.splits["train"]) // view["train"]["batch_size"])
        assert list(dict.fromkeys(calls)) == [epoch_seed(view["train"]["seed"], e) for e in (0, 1)]
    else:
        assert calls == []


def test_validate_notes_a_chain_that_falls_back_and_refuses_device_for_it(tmp_path, capsys):
    from pipeline.cli import main
    from tests.conftest import problems_by_key, write_params

    line = "    - LinearContrast: {alpha: [0.8, 1.2]}\n"
    path = write_params(tmp_path / "params.yaml", replace={line: line + "    - Jigsaw: {nb_rows: 2}\n"}, link=True)
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{path}: valid" and len(out) == 2
    assert out[1].startswith(f"{path}:") and "augment.train[5].Jigsaw: note: Jigsaw has no device version" in out[1]
    write_params(path, path, replace={"  device: auto ": "  device: device "})
    assert problems_by_key(path, "augment.device") == {
        "augment.device": "'device' but augment.train[5].Jigsaw cannot run there: Jigsaw has no device version; "
        "use auto or cpu"
    }
