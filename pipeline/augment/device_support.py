"""Which augmenters have a device version (:mod:`pipeline.augment.device_augment`), and where the training
augmentation runs: ``augment.device`` chooses ``cpu`` (imgaug per sample, in the DataLoader workers),
``device`` (the device path, on the training device even when that is the CPU) or ``auto`` (the device
path when training on CUDA and the chain has a device version). A chain holding an augmenter without one
stays on the CPU path; :func:`fallback_reasons` names each such augmenter at its params key."""

from __future__ import annotations

import functools
from typing import Any

from pipeline.augment.augmenters import build_augmenter
from pipeline.augment.device_ops import MODE_CODES, mode_code
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
# Augmenters that hold children of their own making (not declared in params.yaml): why they have no
# device version, or (TrivialAugment) that they have one when every operation they draw has one.
NO_DEVICE_WHY = {
    "RandAugment": "RandAugment has no device version (its crop, PIL-like colour operations, Invert and Cutout "
    "have none)",
}


def runs_on(name: str) -> str:
    """Where augmenter ``name`` (a registry name) can run: ``device`` or ``cpu``."""
    return "device" if name in DEVICE_AUGMENTERS else "cpu"


@functools.cache
def kinds() -> dict[type, str]:
    """The exact imgaug classes with a device version (subclasses, e.g. pillike.Affine, have none)."""
    import imgaug.augmenters as iaa

    from pipeline.augment.policies import TrivialAugment

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
            TrivialAugment: "someof",  # one of its operations per sample; each needs a device version
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
    kind = kinds().get(type(aug))
    if kind is None:
        return "", NO_DEVICE_WHY.get(name, f"{name} has no device version")
    if name == "TrivialAugment":
        return _trivial_unsupported(aug)
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


def _trivial_unsupported(aug: Any) -> tuple[str, str] | None:
    """TrivialAugment runs on the device when every operation it may draw does."""
    missing = [op.name for op in aug if _unsupported(op) is not None]
    if not missing:
        return None
    return "ops", (
        f"TrivialAugment: {', '.join(missing)} {'has' if len(missing) == 1 else 'have'} no device version "
        "(leave them out of ops to run it on the device)"
    )


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
    return fallbacks(build_augmenter(spec, task=task, random_order=random_order, key=key), spec, key)


def fallbacks(sequential: Any, spec: list, key: str) -> list[Problem]:
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
