"""Mixup and cutmix (``augment.mix``), per training batch, on whatever device the batch is on.

Batch mode as timm's :class:`timm.data.Mixup` (``mode='batch'``, ``correct_lam=True``): each batch is mixed
with itself reversed (``x.flip(0)``) by one lambda. Mixup blends the two images, ``lam * x + (1 - lam) *
x.flip(0)``; cutmix pastes one box of the reversed batch into every image, and lambda becomes the share of
the image left outside the box. Classification targets become soft: the one-hot targets, label-smoothed
(``off = smoothing / C``, ``on = 1 - smoothing + off``), mixed by the same lambda; multilabel multi-hot
targets are smoothed towards 0.5 and mixed likewise. Segmentation takes cutmix only: the same box is
pasted in the mask, which keeps hard labels.

The draw (whether to mix, mixup or cutmix, lambda, the box's centre) is made on the host from a numpy
``RandomState`` seeded from (train.seed, epoch, batch index) alone, so a resumed run replays it. Its
calls are timm's, in timm's order (``rand``, ``rand``, ``beta``, ``randint``, ``randint``), so the same
seed gives timm's numbers: the tests hold the two equal. The mixing reads nothing back from the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.config.errors import Problem
from pipeline.config.params import Params
from pipeline.seeding import batch_seed

MIX_STREAM = 0x6D6978  # "mix": keeps these draws apart from any other per-batch stream

# Losses that take soft targets: the target enters them linearly (cross-entropy against class
# probabilities, BCE and the asymmetric loss per sigmoid). A user loss says so with `soft_targets = True`.


@dataclass(frozen=True)
class MixDraw:
    """One batch's draw: ``lam`` is the weight of the batch itself in the targets (1.0: not mixed);
    ``box`` the (top, bottom, left, right) pasted from the reversed batch (cutmix), or None (mixup)."""

    lam: float = 1.0
    box: tuple[int, int, int, int] | None = None

    @property
    def mixed(self) -> bool:
        return self.lam != 1.0


def cutmix_box(
    height: int, width: int, lam: float, rng: np.random.RandomState
) -> tuple[tuple[int, int, int, int], float]:
    """A box of side ``sqrt(1 - lam)`` times the image's, centred uniformly (clipped at the borders), and
    the lambda corrected to the share of the image outside it."""
    ratio = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.randint(0, height)), int(rng.randint(0, width))
    top, bottom = min(max(cy - cut_h // 2, 0), height), min(max(cy + (cut_h + 1) // 2, 0), height)
    left, right = min(max(cx - cut_w // 2, 0), width), min(max(cx + (cut_w + 1) // 2, 0), width)
    return (top, bottom, left, right), 1.0 - (bottom - top) * (right - left) / float(height * width)


@dataclass(frozen=True)
class BatchMix:
    """``augment.mix`` for one run: called on each training batch (on the device, normalised images and
    their targets) with the epoch and the batch's index; off (both alphas 0) it returns the batch as is."""

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.1
    task: str = "classification"
    num_classes: int = 2  # the model's logit count: the length of the soft targets
    seed: int = 0

    @classmethod
    def from_params(cls, cfg: dict[str, Any], *, task: str, num_classes: int, seed: int) -> BatchMix:
        return cls(**{k: float(v) for k, v in cfg.items()}, task=task, num_classes=num_classes, seed=seed)

    @property
    def enabled(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def rng(self, epoch: int, index: int) -> np.random.RandomState:
        return np.random.RandomState(batch_seed(self.seed, epoch, index, MIX_STREAM))

    def draw(self, rng: np.random.RandomState, height: int, width: int) -> MixDraw:
        """timm's ``_params_per_batch`` and ``cutmix_bbox_and_lam``, draw for draw."""
        if not rng.rand() < self.prob:
            return MixDraw()
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            cutmix = bool(rng.rand() < self.switch_prob)
            alpha = self.cutmix_alpha if cutmix else self.mixup_alpha
        else:
            cutmix = self.cutmix_alpha > 0
            alpha = self.cutmix_alpha if cutmix else self.mixup_alpha
        lam = float(rng.beta(alpha, alpha))
        if lam == 1.0 or not cutmix:
            return MixDraw(lam)
        box, lam = cutmix_box(height, width, lam, rng)
        return MixDraw(lam, box)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, epoch: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.enabled:
            return x, y
        drawn = self.draw(self.rng(epoch, index), x.shape[-2], x.shape[-1])
        return mix_images(x, drawn), self.targets(y, drawn)

    def targets(self, y: torch.Tensor, drawn: MixDraw) -> torch.Tensor:
        """Masks: the box pasted (hard labels). Labels: smoothed one-hot (or multi-hot) targets, mixed."""
        if self.task == "segmentation":
            return paste(y, drawn.box) if drawn.box is not None else y
        s = self.label_smoothing
        if self.task == "multilabel":
            y1 = y.float() * (1.0 - s) + 0.5 * s
        else:
            off = s / self.num_classes
            y1 = torch.full((y.shape[0], self.num_classes), off, device=y.device)
            y1.scatter_(1, y.long().view(-1, 1), 1.0 - s + off)
        return y1 * drawn.lam + y1.flip(0) * (1.0 - drawn.lam) if drawn.mixed else y1


def paste(t: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    """``t`` (images [N,C,H,W] or masks [N,H,W]) with ``box`` of the reversed batch pasted in; a new tensor."""
    top, bottom, left, right = box
    out = t.clone()
    out[..., top:bottom, left:right] = t.flip(0)[..., top:bottom, left:right]
    return out


def mix_images(x: torch.Tensor, drawn: MixDraw) -> torch.Tensor:
    if not drawn.mixed:
        return x
    if drawn.box is not None:
        return paste(x, drawn.box)
    return x * drawn.lam + x.flip(0) * (1.0 - drawn.lam)


def check_mix(params: Params) -> list[Problem]:
    """Segmentation takes cutmix only (the loss's side, soft targets, is the training layer's:
    :func:`pipeline.training.losses.section.check_mix_targets`)."""
    cfg = params.get("augment.mix")
    if not (cfg["mixup_alpha"] > 0 or cfg["cutmix_alpha"] > 0):
        return []
    task = params.get("data.task")
    if task == "segmentation" and cfg["mixup_alpha"] > 0:
        return [
            Problem(
                "augment.mix.mixup_alpha",
                "segmentation takes cutmix only (a blend of two masks is no mask): set mixup_alpha: 0 "
                "and cutmix_alpha > 0",
            )
        ]
    return []
