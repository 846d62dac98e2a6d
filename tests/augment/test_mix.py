"""augment.mix: mixup and cutmix per training batch, held equal to timm's ``Mixup`` (batch mode) for the
same seed, the same box in image and mask for segmentation, reproducible from (seed, epoch, index),
refused where the loss or the task cannot take it, and a tiny training run with it on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.data import Mixup

from pipeline import outputs
from pipeline.augment.mix import MIX_STREAM, BatchMix, MixDraw, mix_images
from pipeline.config.params import load_params
from pipeline.data.manifest import load_manifest
from pipeline.models.file import load_model
from pipeline.seeding import batch_seed
from pipeline.tracking.run import NullRun
from pipeline.training import distributed as dist
from pipeline.training import loop
from pipeline.training.losses.cross_entropy import CrossEntropyLoss
from stages import train as train_stage
from tests.conftest import make_workspace, problems_by_key, write_params

CPU = torch.device("cpu")
SETTINGS = {  # (mixup_alpha, cutmix_alpha, prob, switch_prob): mixup only, cutmix only, both (switch), rarely
    "mixup": (0.8, 0.0, 1.0, 0.5),
    "cutmix": (0.0, 1.0, 1.0, 0.5),
    "switch": (0.8, 1.0, 1.0, 0.5),
    "sometimes": (0.8, 1.0, 0.5, 0.3),
}


def _mix(name: str, task: str = "classification", num_classes: int = 5, smoothing: float = 0.1) -> BatchMix:
    mixup, cutmix, prob, switch = SETTINGS[name]
    return BatchMix(mixup, cutmix, prob, switch, smoothing, task=task, num_classes=num_classes, seed=7)


def _timm(mix: BatchMix, x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """timm's Mixup on copies of the batch, numpy's global RNG seeded as ours is for that batch."""
    reference = Mixup(
        mixup_alpha=mix.mixup_alpha,
        cutmix_alpha=mix.cutmix_alpha,
        prob=mix.prob,
        switch_prob=mix.switch_prob,
        mode="batch",
        label_smoothing=mix.label_smoothing,
        num_classes=mix.num_classes,
        multi_label=mix.task == "multilabel",
    )
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        return reference(x.clone(), y.clone())
    finally:
        np.random.set_state(state)


@pytest.mark.parametrize("name", list(SETTINGS))
@pytest.mark.parametrize("task", ["classification", "multilabel"])
def test_mixed_images_and_targets_equal_timms_for_the_same_draws(name, task):
    """Each batch of two epochs: our images and soft targets equal timm's exactly, the draws being timm's
    own calls on a RandomState seeded from (seed, epoch, index); across them both branches ran."""
    mix = _mix(name, task)
    generator = torch.Generator().manual_seed(0)
    kinds = set()
    for epoch in range(2):
        for index in range(12):
            x = torch.randn(6, 3, 16, 24, generator=generator)
            if task == "multilabel":
                y = torch.randint(0, 2, (6, mix.num_classes), generator=generator).float()
            else:
                y = torch.randint(0, mix.num_classes, (6,), generator=generator)
            ours = mix(x, y, epoch, index)
            theirs = _timm(mix, x, y, batch_seed(mix.seed, epoch, index, MIX_STREAM))
            assert torch.equal(ours[0], theirs[0]), (epoch, index)
            assert torch.equal(ours[1], theirs[1]), (epoch, index)
            drawn = mix.draw(mix.rng(epoch, index), 16, 24)
            kinds.add("cutmix" if drawn.box else "mixup" if drawn.mixed else "none")
    expected = {
        "mixup": {"mixup"},
        "cutmix": {"cutmix"},
        "switch": {"mixup", "cutmix"},
        "sometimes": {"none", "mixup", "cutmix"},
    }
    assert kinds == expected[name]


def test_the_soft_targets_are_smoothed_one_hot_mixed_by_lambda():
    """Numbers by hand: 4 classes, smoothing 0.2 (off 0.05, on 0.85), lambda 0.75 mixing labels 0 and 2."""
    mix = BatchMix(mixup_alpha=1.0, label_smoothing=0.2, num_classes=4)
    soft = mix.targets(torch.tensor([0, 2]), MixDraw(0.75))
    assert torch.allclose(soft, torch.tensor([[0.65, 0.05, 0.25, 0.05], [0.25, 0.05, 0.65, 0.05]]))
    unmixed = mix.targets(torch.tensor([1, 3]), MixDraw())  # a batch the draw left alone: smoothed only
    assert torch.allclose(unmixed, torch.tensor([[0.05, 0.85, 0.05, 0.05], [0.05, 0.05, 0.05, 0.85]]))


def test_segmentation_cutmix_pastes_the_same_box_in_image_and_mask():
    """Sample n is the value n everywhere, in every channel and in its mask: after cutmix every pixel of
    the image still equals its mask (one box, pasted in both), a box's worth of pixels came from the
    reversed batch, and the mask stays integer class labels."""
    mix = _mix("cutmix", task="segmentation", num_classes=4)
    masks = torch.arange(4).view(4, 1, 1).expand(4, 20, 28).clone()
    images = masks.unsqueeze(1).expand(4, 3, 20, 28).float()
    pasted = 0
    for index in range(8):
        x, y = mix(images, masks, 0, index)
        drawn = mix.draw(mix.rng(0, index), 20, 28)
        top, bottom, left, right = drawn.box
        assert y.dtype == torch.long and torch.equal(x, y.unsqueeze(1).expand_as(x).float())
        changed = y != masks
        assert changed.sum() == 4 * (bottom - top) * (right - left)
        assert changed[:, top:bottom, left:right].all()
        assert drawn.lam == pytest.approx(1 - (bottom - top) * (right - left) / (20 * 28))
        pasted += int(changed.any())
    assert pasted >= 6  # boxes of some size, most batches (a box can be clipped to nothing)


def test_the_draws_depend_on_seed_epoch_and_index_alone():
    mix = _mix("switch")
    x = torch.randn(4, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 3])
    first = mix(x, y, 3, 5)
    again = mix(x, y, 3, 5)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    draws = {mix.draw(mix.rng(epoch, index), 16, 16) for epoch in range(3) for index in range(4)}
    assert len(draws) == 12  # another epoch or index: another draw
    other = BatchMix(**{**mix.__dict__, "seed": 8})
    assert other.draw(other.rng(3, 5), 16, 16) != mix.draw(mix.rng(3, 5), 16, 16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_the_gpu_the_mix_equals_the_cpus_without_a_host_sync():
    """The draw is made on the host, so mixing a batch already on the GPU reads nothing back from it."""
    mix = _mix("switch", num_classes=3)
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    gx, gy = x.cuda(), y.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        on_gpu = [mix(gx, gy, 0, index) for index in range(6)]
    finally:
        torch.cuda.set_sync_debug_mode(0)
    for index, (mx, my) in enumerate(on_gpu):
        cx, cy = mix(x, y, 0, index)
        assert torch.allclose(mx.cpu(), cx, rtol=1e-6, atol=0) and torch.allclose(my.cpu(), cy, rtol=1e-6, atol=0)


def test_off_returns_the_batch_itself():
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([0, 1])
    out = BatchMix()(x, y, 0, 0)
    assert out[0] is x and out[1] is y
    assert mix_images(x, MixDraw()) is x


@pytest.mark.parametrize("spatial", [(), (3, 4)])
@pytest.mark.parametrize("params", [{}, {"weight": [1.0, 2.0, 0.5]}, {"label_smoothing": 0.1, "weight": [1, 3, 2]}])
def test_soft_target_cross_entropy_equals_the_hard_one_on_one_hot_targets(params, spatial):
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 3, *spatial, generator=generator)
    labels = torch.randint(0, 3, (5, *spatial), generator=generator)
    one_hot = F.one_hot(labels, 3).movedim(-1, 1).float()
    loss = CrossEntropyLoss(**params)
    assert loss(logits, one_hot).item() == pytest.approx(loss(logits, labels).item(), rel=1e-6)


# --- validate ----------------------------------------------------------------------------------------


def _problems(tmp_path: Path, task: str, loss: dict, **mix: float) -> dict[str, str]:
    path = write_params(
        tmp_path / "params.yaml",
        link=True,
        **{"data.task": task, "loss": {"params": {}, "terms": [], **loss}, "augment.mix": mix},
    )
    return problems_by_key(path, "augment.mix")


def test_a_loss_without_soft_targets_is_refused_at_augment_mix(tmp_path):
    found = _problems(tmp_path, "classification", {"name": "focal"}, mixup_alpha=0.8)
    assert list(found) == ["augment.mix"] and "loss.name 'focal'" in found["augment.mix"]
    terms = [{"name": "cross_entropy", "weight": 1}, {"name": "focal", "weight": 0.5}]
    found = _problems(tmp_path, "classification", {"name": "sum", "terms": terms}, cutmix_alpha=1.0)
    assert "loss.terms[1].name 'focal'" in found["augment.mix"] and "terms[0]" not in found["augment.mix"]
    assert _problems(tmp_path, "classification", {"name": "cross_entropy"}, mixup_alpha=0.8, cutmix_alpha=1.0) == {}
    assert _problems(tmp_path, "classification", {"name": "focal"}, mixup_alpha=0) == {}  # off: nothing to refuse
    found = _problems(tmp_path, "multilabel", {"name": "focal"}, mixup_alpha=0.8)  # not linear in the target
    assert "loss.name 'focal'" in found["augment.mix"] and "bce or asymmetric" in found["augment.mix"]
    assert _problems(tmp_path, "multilabel", {"name": "bce"}, mixup_alpha=0.8, cutmix_alpha=1.0) == {}


def test_segmentation_takes_cutmix_only(tmp_path):
    found = _problems(tmp_path, "segmentation", {"name": "dice_bce"}, mixup_alpha=0.4, cutmix_alpha=1.0)
    assert list(found) == ["augment.mix.mixup_alpha"] and "cutmix only" in found["augment.mix.mixup_alpha"]
    assert _problems(tmp_path, "segmentation", {"name": "dice_bce"}, cutmix_alpha=1.0) == {}


def test_bounds_are_the_schemas(tmp_path):
    found = _problems(tmp_path, "classification", {"name": "cross_entropy"}, mixup_alpha=-1, label_smoothing=1)
    assert set(found) == {"augment.mix.mixup_alpha", "augment.mix.label_smoothing"}


# --- training ----------------------------------------------------------------------------------------


def test_a_training_run_with_mixup_and_cutmix_has_soft_targets_in_training_only(tmp_path):
    """Classification, both mixes on: the training steps see soft targets (rows summing to 1), validation
    the hard labels; the run completes with finite losses."""
    mix = {"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "prob": 1.0, "switch_prob": 0.5, "label_smoothing": 0.1}
    params = make_workspace(tmp_path, task="classification", **{"augment.mix": mix, "train.epochs": 1})
    view = load_params(params).view(train_stage.PARAMS)
    model, info = load_model(params.parent / outputs.MODEL_INIT, trust_code=True)
    t = loop.build(view, load_manifest(params.parent / outputs.MANIFEST), model, info, dist.SINGLE, CPU)
    assert t.mix.enabled and t.mix.num_classes == info.config["num_outputs"]
    seen: list[torch.Tensor] = []
    real_loss = t.step.loss_fn

    def recording(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        seen.append(y.detach().clone())
        return real_loss(logits, y)

    t.step.loss_fn = recording
    history = loop.fit(t, NullRun(), root=params.parent, fingerprint="test")
    steps = len(t.data.loader)
    train_targets, val_targets = seen[:steps], seen[steps:]
    assert all(y.is_floating_point() and torch.allclose(y.sum(1), torch.ones(len(y))) for y in train_targets)
    assert any((y.max(1).values < 0.9 - 1e-6).any() for y in train_targets)  # mixed, not only smoothed
    assert val_targets and all(y.dtype == torch.long for y in val_targets)
    assert np.isfinite(history[0]["train_loss"]) and np.isfinite(history[0]["val_loss"])
