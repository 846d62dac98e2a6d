"""Training augmentation on the device: the declared imgaug chain applied to whole batches as torch ops.

imgaug still decides what happens: every batch's parameters are drawn on the host by the augmenters'
own stochastic parameters (their distributions, ``Sometimes`` probabilities, ``SomeOf`` counts and
orders), from an imgaug RNG seeded per epoch and batch; :mod:`pipeline.augment.device_ops` applies
them where the model runs. Flips, Rot90 and Affine fold into one matrix per sample (one
``grid_sample`` per run of geometric augmenters), GaussianBlur is a per-sample separable kernel,
LinearContrast, GammaContrast, Add and Multiply are broadcasts. A chain holding anything else stays on
the CPU path; :func:`fallback_reasons` names each such augmenter at its params key.

``augment.device`` chooses: ``cpu`` (imgaug per sample, in the DataLoader workers), ``device`` (this
path, on the training device even when that is the CPU), ``auto`` (this path when training on CUDA and
the chain has a device version)."""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.augment.build import build_augmenter
from pipeline.augment.device_ops import MODE_CODES, Pixel, Warp, apply_ops, mode_code
from pipeline.config.errors import PipelineError, Problem

AFFINE_FAMILY = frozenset({"Affine", "ScaleX", "ScaleY", "TranslateX", "TranslateY", "Rotate", "ShearX", "ShearY"})
CONTAINERS = frozenset({"Sequential", "Sometimes", "SomeOf", "OneOf"})
# Registry names (``python -m pipeline list augmenters``) with a device version.
DEVICE_AUGMENTERS = (
    AFFINE_FAMILY
    | CONTAINERS
    | {
        "Fliplr",
        "Flipud",
        "Rot90",
        "GaussianBlur",
        "LinearContrast",
        "GammaContrast",
        "Add",
        "Multiply",
        "Identity",
        "Noop",
    }
)
AUGMENTER_LISTS = ("children", "then_list", "else_list")


def runs_on(name: str) -> str:
    """Where augmenter ``name`` (a registry name) can run: ``device`` or ``cpu``."""
    return "device" if name in DEVICE_AUGMENTERS else "cpu"


@functools.cache
def _kinds() -> dict[type, str]:
    """The exact imgaug classes with a device version (subclasses, e.g. pillike.Affine, have none)."""
    import imgaug.augmenters as iaa

    kinds = {getattr(iaa, name): "affine" for name in AFFINE_FAMILY}
    kinds.update(
        {
            iaa.Fliplr: "fliplr",
            iaa.Flipud: "flipud",
            iaa.Rot90: "rot90",
            iaa.GaussianBlur: "blur",
            iaa.LinearContrast: "linear",
            iaa.GammaContrast: "gamma",
            iaa.Add: "add",
            iaa.Multiply: "multiply",
            iaa.Identity: "noop",
            iaa.Noop: "noop",
            iaa.Sequential: "sequential",
            iaa.Sometimes: "sometimes",
            iaa.SomeOf: "someof",
            iaa.OneOf: "someof",
        }
    )
    return kinds


def _values(param: Any) -> list | None:
    """The values a fixed or "one of" imgaug parameter can take; None when it is continuous."""
    import imgaug.parameters as iap

    param = getattr(param, "other_param", param)  # imgaug's prefetching wrapper
    if isinstance(param, iap.Deterministic):
        return [param.value]
    if isinstance(param, iap.Choice) and isinstance(param.a, list):
        return list(param.a)
    return None


def _unsupported(aug: Any) -> tuple[str, str] | None:
    """(argument or "", why) when ``aug`` itself has no device version."""
    name = type(aug).__name__
    kind = _kinds().get(type(aug))
    if kind is None:
        return "", f"{name} has no device version"
    if kind == "affine":
        orders, modes = _values(aug.order), _values(aug.mode)
        if aug.fit_output:
            return "fit_output", f"{name} with fit_output: true changes the image size; no device version"
        if orders is None or len(set(orders)) != 1 or orders[0] not in (0, 1):
            return "order", f"{name}: only a fixed order 0 or 1 (nearest, bilinear) has a device version"
        bad = [m for m in (modes or ["a random mode"]) + [aug._mode_segmentation_maps] if mode_code(m) is None]
        if bad:
            return "mode", (f"{name}: mode {bad[0]!r} has no device version (supported: {', '.join(MODE_CODES)})")
    if kind == "rot90" and not aug.keep_size:
        return "keep_size", "Rot90 with keep_size: false changes the image size; no device version"
    return None


def _items(value: Any, key: str) -> list[tuple[Any, str]]:
    """A nested augmenter argument as (spec item, key) pairs: a list, or one augmenter."""
    if value is None:
        return []
    return [(v, f"{key}[{i}]") for i, v in enumerate(value)] if isinstance(value, list) else [(value, key)]


def _walk(aug: Any, item: Any, key: str, problems: list[Problem]) -> None:
    """Check ``aug`` (built from spec ``item``) and its children, naming each at its params key."""
    name, kwargs = (item, {}) if isinstance(item, str) else next(iter(item.items()))
    node_key = f"{key}.{name}"
    reason = _unsupported(aug)
    if reason is not None:
        problems.append(Problem(f"{node_key}.{reason[0]}" if reason[0] else node_key, reason[1]))
        return
    for arg in AUGMENTER_LISTS:
        built = getattr(aug, arg, None) if arg != "children" else (list(aug) if isinstance(aug, list) else None)
        if built is None:
            continue
        built = list(built) if isinstance(built, list) else [built]
        for child, (child_item, child_key) in zip(built, _items((kwargs or {}).get(arg), f"{node_key}.{arg}")):
            _walk(child, child_item, child_key, problems)


def fallback_problems(
    spec: list, *, task: str, random_order: bool = False, key: str = "augment.train"
) -> list[Problem]:
    """Each augmenter in ``spec`` without a device version, at its key (``augment.train[3].Jigsaw``);
    [] when the whole chain runs on the device. A bad spec raises the builder's ComponentError."""
    return _fallbacks(build_augmenter(spec, task=task, random_order=random_order, key=key), spec, key)


def _fallbacks(sequential: Any, spec: list, key: str) -> list[Problem]:
    """:func:`fallback_problems` of the chain ``spec`` built as ``sequential``."""
    problems: list[Problem] = []
    for i, (aug, item) in enumerate(zip(sequential, spec)):
        _walk(aug, item, f"{key}[{i}]", problems)
    return problems


def fallback_reasons(
    spec: list, *, task: str = "segmentation", random_order: bool = False, key: str = "augment.train"
) -> list[str]:
    """:func:`fallback_problems` as ``"key: why"`` lines."""
    return [f"{p.key}: {p.message}" for p in fallback_problems(spec, task=task, random_order=random_order, key=key)]


def device_plan(spec: list, *, task: str, random_order: bool = False, key: str = "augment.train") -> DevicePlan | None:
    """The chain as a :class:`DevicePlan`, or None when some augmenter has no device version."""
    sequential = build_augmenter(spec, task=task, random_order=random_order, key=key)
    return None if _fallbacks(sequential, spec, key) else DevicePlan(sequential)


def resolve_where(
    setting: str, spec: list, *, task: str, random_order: bool, device_type: str, offline: bool = False
) -> str:
    """Where augment.train runs for ``augment.device: setting`` when training on ``device_type``:
    ``device`` or ``cpu``. The offline cache or an empty chain leave nothing to do on the device."""
    if setting == "cpu" or offline or not spec:
        return "cpu"
    reasons = fallback_reasons(spec, task=task, random_order=random_order)
    if setting == "device" and reasons:
        raise PipelineError("augment.device is 'device' but " + "; ".join(reasons))
    return "device" if not reasons and (setting == "device" or device_type == "cuda") else "cpu"


@dataclass
class Leaf:
    """One augmenter's draw for a batch: where in the chain, which samples, its parameter values."""

    path: str  # e.g. "[3].then_list[0]"
    name: str
    active: np.ndarray  # (n,) bool
    values: dict[str, Any]
    op: Warp | Pixel | None  # a Warp here holds this augmenter's part only


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

        from pipeline.augment.device_draw import Drawer

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
        return out, masks

    def __repr__(self) -> str:
        return f"DeviceAugment({len(self.spec)} augmenters, task={self.task!r})"
