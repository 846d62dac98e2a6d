"""Training augmentation on the device: the declared imgaug chain applied to whole batches as torch ops.

imgaug still decides what happens: every batch's parameters are drawn on the host by the augmenters'
own stochastic parameters (their distributions, ``Sometimes`` probabilities, ``SomeOf`` counts and
orders), from an imgaug RNG seeded per epoch and batch; :mod:`pipeline.augment.device_ops` applies
them where the model runs. Flips, Rot90 and Affine fold into one matrix per sample (one
``grid_sample`` per run of geometric augmenters), GaussianBlur is a per-sample separable kernel,
LinearContrast, GammaContrast, Add and Multiply are broadcasts. Which augmenters have a device version,
and where ``augment.device`` puts the chain: :mod:`pipeline.augment.device_support`; the host-side draw:
:mod:`pipeline.augment.device_draw`."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.augment.augmenters import build_augmenter
from pipeline.augment.device_draw import Drawer, Leaf
from pipeline.augment.device_ops import Pixel, Warp, apply_ops
from pipeline.augment.device_support import fallback_reasons, fallbacks
from pipeline.config.errors import PipelineError


@dataclass
class Drawn:
    """A batch's draw: every leaf (for tests and inspection) and the folded device operations."""

    leaves: list[Leaf]
    ops: list[Warp | Pixel]


class DevicePlan:
    """A built chain whose every augmenter has a device version: :meth:`draw` on the host, then
    :meth:`apply` on the device (or both: call it)."""

    def __init__(self, augmenter: Any):
        self.augmenter = augmenter

    def draw(self, n: int, hw: tuple[int, int], channels: int, seed: int) -> Drawn:
        """Draw every sample's parameters from an imgaug RNG seeded with ``seed``."""
        import imgaug.random as iarandom

        drawer = Drawer(n, hw, channels)
        drawer.node(self.augmenter, np.ones(n, bool), iarandom.RNG(int(seed)), "")
        return Drawn(drawer.leaves, fold(drawer.leaves, n))

    def apply(
        self, images: torch.Tensor, masks: torch.Tensor | None, drawn: Drawn
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return apply_ops(images, masks, drawn.ops)

    def __call__(
        self, images: torch.Tensor, masks: torch.Tensor | None = None, *, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """uint8 (or float 0-255) [N,C,H,W] images and [N,H,W] masks -> float32 images 0-255, masks."""
        n, c, h, w = images.shape
        return self.apply(images, masks, self.draw(n, (h, w), c, seed))


def device_plan(spec: list, *, task: str, random_order: bool = False, key: str = "augment.train") -> DevicePlan | None:
    """The chain as a :class:`DevicePlan`, or None when some augmenter has no device version."""
    sequential = build_augmenter(spec, task=task, random_order=random_order, key=key)
    return None if fallbacks(sequential, spec, key) else DevicePlan(sequential)


def fold(leaves: list[Leaf], n: int) -> list[Warp | Pixel]:
    """Leaves -> device ops, in chain order: consecutive geometric leaves compose into one Warp, split
    where a pixel op comes between (order matters for borders and clipping) or where a sample would
    get a second Affine (each keeps its own border) or another interpolation order."""
    ops: list[Warp | Pixel] = []
    warp: Warp | None = None
    for leaf in leaves:
        if leaf.op is None or not leaf.active.any():
            continue
        if isinstance(leaf.op, Pixel):
            if warp is not None:
                ops.append(warp)
                warp = None
            ops.append(leaf.op)
            continue
        step, active = leaf.op, leaf.active
        affine = bool(step.bordered.any())
        if warp is None or (
            affine and ((warp.bordered & active).any() or (warp.order is not None and warp.order != step.order))
        ):
            if warp is not None:
                ops.append(warp)
            warp = Warp.identity(n)
        warp.matrix = step.matrix @ warp.matrix  # identity rows where the leaf is inactive
        if affine:
            for attr in ("mode", "mask_mode", "cval"):
                getattr(warp, attr)[active] = getattr(step, attr)[active]
            warp.bordered |= active
            warp.order = step.order
    if warp is not None:
        ops.append(warp)
    return [op for op in ops if not (isinstance(op, Warp) and op.is_identity())]


def batch_seed(epoch_seed: int, batch: int) -> int:
    """Batch ``batch``'s drawing seed in the epoch seeded ``epoch_seed``."""
    return int(np.random.SeedSequence([int(epoch_seed) % 2**63, int(batch)]).generate_state(1)[0])


class DeviceAugment:
    """The training set's batch transform: ``(uint8 images [N,C,H,W], targets)`` on the training device
    -> (float32 images 0-255, targets), masks (segmentation targets) moved with the images.

    Batch k of an epoch draws from :func:`batch_seed` (epoch seed, k), the epoch seed set by
    :meth:`set_epoch` (``ManifestDataset.set_epoch``: torch's seed, which the loop derives from
    train.seed, the epoch and the rank), so a resumed run draws what the uninterrupted one did.
    Picklable: it pickles the spec and builds on first use, like :class:`AugmentTransform`."""

    def __init__(self, spec: list, *, task: str, random_order: bool = False):
        self.spec, self.task, self.random_order = copy.deepcopy(list(spec)), task, random_order
        self.epoch_seed, self.batch = 0, 0
        self._plan: DevicePlan | None = None
        self.plan  # noqa: B018 - build now, so a chain without a device version fails here

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_plan": None}

    @property
    def plan(self) -> DevicePlan:
        if self._plan is None:
            plan = device_plan(self.spec, task=self.task, random_order=self.random_order)
            if plan is None:
                raise PipelineError(
                    "augment.train has no device version: "
                    + "; ".join(fallback_reasons(self.spec, task=self.task, random_order=self.random_order))
                )
            self._plan = plan
        return self._plan

    def set_epoch(self, seed: int) -> None:
        self.epoch_seed, self.batch = int(seed), 0

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seed = batch_seed(self.epoch_seed, self.batch)
        self.batch += 1
        if self.task != "segmentation":
            return self.plan(images, None, seed=seed)[0], targets
        out, masks = self.plan(images, targets, seed=seed)
        assert masks is not None, "a plan given masks returns them"
        return out, masks

    def __repr__(self) -> str:
        return f"DeviceAugment({len(self.spec)} augmenters, task={self.task!r})"
