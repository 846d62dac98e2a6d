"""Augmentation declared in params.yaml: imgaug pipelines built from YAML.

A pipeline is a list of imgaug augmenters written as the imgaug docs write them: ``"Fliplr"``,
``{Affine: {rotate: [-25, 25]}}`` or ``{Name: null}``; containers (``Sequential``, ``SomeOf``,
``OneOf``, ``Sometimes``, ``WithChannels``, ``BlendAlpha``...) take nested lists. YAML lists become
the tuples imgaug reads as ranges; ``{choice: [a, b]}`` gives the Python list imgaug reads as "one of".

One builder serves the stages and ``validate``: :class:`Builder` collects every problem at its dotted
key. imgaug is imported lazily: it takes seconds and most commands need none.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import warnings
from typing import Any

import numpy as np

from pipeline.config.building import blamed_attempt, one_line, required_arguments, resolve
from pipeline.config.errors import ComponentError, Problem
from pipeline.config.registry import Registry, signature_problems

# Keyword arguments that take augmenters (a list, or one) rather than values.
AUGMENTER_ARGS = frozenset({"children", "then_list", "else_list", "foreground", "background"})


# Found by running every augmenter on an image with a segmentation map (the test suite repeats the
# sweep): these raise "can currently only process image data". Every other augmenter either moves
# the mask with the image (geometric) or leaves it alone (pixel-level), as it should.
# imgaug's own RandAugment would be one of them: the registry's (pipeline.augment.policies) moves the mask.
SEGMENTATION_UNSAFE = {
    "pillike.Affine": "pillike.Affine transforms images only; use Affine, which also moves the mask",
    "imgcorruptlike.ElasticTransform": "it transforms images only; use ElasticTransformation",
}


# Containers that augment a subset of the image channels: a geometric child would move those
# channels away from the others and from the mask.
CHANNEL_SUBSET_WRAPPERS = frozenset({"WithChannels", "WithBrightnessChannels", "WithHueAndSaturation"})


GEOMETRIC_MODULES = ("imgaug.augmenters.flip", "imgaug.augmenters.geometric", "imgaug.augmenters.size")


def _augmenter_classes() -> dict[str, type]:
    """Every public, concrete Augmenter in ``imgaug.augmenters``; a submodule's own classes that the
    package does not export (``pillike``, ``imgcorruptlike``) are named ``submodule.Class``. The
    policies (:mod:`pipeline.augment.policies`: RandAugment with its ``n`` checked, TrivialAugment) are
    added under their names."""
    import imgaug.augmenters as iaa

    from pipeline.augment.policies import POLICIES

    found: dict[str, type] = {}
    for info in pkgutil.iter_modules(iaa.__path__):
        module = importlib.import_module(f"{iaa.__name__}.{info.name}")
        for name, obj in vars(module).items():
            if (
                name.startswith("_")
                or not inspect.isclass(obj)
                or obj.__module__ != module.__name__
                or not issubclass(obj, iaa.Augmenter)
                or inspect.isabstract(obj)
            ):
                continue
            found[name if getattr(iaa, name, None) is obj else f"{info.name}.{name}"] = obj
    return {**found, **POLICIES}


augmenters = Registry("augmenters", provider=_augmenter_classes)


def _to_imgaug_value(value: Any) -> Any:
    """YAML lists -> tuples (imgaug ranges), ``{choice: [...]}`` -> list (imgaug "one of"), recursively."""
    if isinstance(value, list):
        return tuple(_to_imgaug_value(v) for v in value)
    if isinstance(value, dict):
        if set(value) == {"choice"} and isinstance(value["choice"], list):
            return [_to_imgaug_value(v) for v in value["choice"]]
        return {k: _to_imgaug_value(v) for k, v in value.items()}
    return value


def _looks_like_spec(item: Any) -> bool:
    if isinstance(item, dict) and len(item) == 1:
        ((name, kwargs),) = item.items()
        return isinstance(name, str) and (kwargs is None or isinstance(kwargs, dict)) and name in augmenters
    return False


def _takes_augmenters(arg: str, value: Any) -> bool:
    """Whether a keyword argument holds nested augmenter specs (built recursively, not tupled)."""
    if arg in AUGMENTER_ARGS:
        return True
    if isinstance(value, list):
        return bool(value) and all(_looks_like_spec(v) for v in value)
    return _looks_like_spec(value)


class Builder:
    """Walks a spec, building augmenters and collecting every problem at its dotted key."""

    def __init__(self, task: str, probe: tuple[int, int] | None = None):
        self.task = task
        self.problems: list[Problem] = []
        self.probe_sample = _probe_sample(probe) if probe else None

    def fail(self, key: str, message: str) -> None:
        self.problems.append(Problem(key, message))

    def pipeline(self, spec: Any, key: str) -> list[Any] | None:
        if not isinstance(spec, list):
            self.fail(key, f"expected a list of augmenters, got {type(spec).__name__}")
            return None
        built = [self.node(item, f"{key}[{i}]") for i, item in enumerate(spec)]
        return None if any(b is None for b in built) else built

    def node(self, item: Any, key: str) -> Any:
        kwargs: dict[str, Any]
        if isinstance(item, str):
            name, kwargs, node_key = item, {}, key
        elif isinstance(item, dict) and len(item) == 1 and isinstance(next(iter(item.values())), (dict, type(None))):
            ((name, kwargs),) = item.items()
            kwargs, node_key = dict(kwargs or {}), f"{key}.{name}"
        else:
            hint = ""
            if isinstance(item, dict) and len(item) == 1 and isinstance(next(iter(item.values())), list):
                hint = f"; a nested list goes under its argument, e.g. {{{next(iter(item))}: {{children: [...]}}}}"
            self.fail(key, "expected an augmenter: 'Name', {Name: {argument: value}} or {Name: null}" + hint)
            return None
        cls = self.resolve(name, node_key)
        if cls is None:
            return None
        arg_problems = signature_problems(cls.__init__, kwargs, skip=1)
        for arg, message in arg_problems:
            self.fail(f"{node_key}.{arg}" if arg else node_key, f"{name}: {message}")
        if arg_problems:
            return None
        values, ok = {}, True
        for arg, value in kwargs.items():
            if _takes_augmenters(arg, value):
                values[arg] = self.nested(value, f"{node_key}.{arg}")
                ok = ok and (value is None or values[arg] is not None)
            else:
                values[arg] = _to_imgaug_value(value)
        if not ok:
            return None
        augmenter = self.construct(cls, name, values, node_key)
        if augmenter is not None and self.task == "segmentation" and name in CHANNEL_SUBSET_WRAPPERS:
            moving = [
                type(a).__name__
                for a in augmenter.get_all_children(flat=True)
                if type(a).__module__ in GEOMETRIC_MODULES
            ]
            if moving:
                self.fail(
                    node_key,
                    f"{name} applies {', '.join(moving)} to some image channels only, so "
                    "the mask cannot follow; put geometric augmenters outside it",
                )
                return None
        sample = self.probe_sample
        if augmenter is not None and sample is not None and not self.probe(augmenter, sample, name, node_key):
            return None
        return augmenter

    def nested(self, value: Any, key: str) -> Any:
        if value is None:
            return None
        return self.pipeline(value, key) if isinstance(value, list) else self.node(value, key)

    def resolve(self, name: str, key: str) -> type[Any] | None:
        import imgaug.augmenters as iaa

        try:
            cls = resolve(augmenters, name, key)
        except ComponentError as exc:
            self.problems += exc.problems
            return None
        if not (inspect.isclass(cls) and issubclass(cls, iaa.Augmenter)):
            self.fail(key, f"{name!r} is not an imgaug Augmenter class")
            return None
        if self.task == "segmentation" and name in SEGMENTATION_UNSAFE:
            self.fail(key, f"{name} cannot handle segmentation masks ({SEGMENTATION_UNSAFE[name]})")
            return None
        return cls

    def construct(self, cls: type, name: str, values: dict[str, Any], key: str) -> Any:
        """Build ``cls(**values)``; on failure, blame the argument(s) whose value imgaug rejects."""
        try:
            return blamed_attempt(
                lambda args: cls(**args), values, key=key, what=name, required=required_arguments(cls)
            )
        except ComponentError as exc:
            self.problems += exc.problems
            return None

    def probe(self, augmenter: Any, sample: tuple[np.ndarray, np.ndarray], name: str, key: str) -> bool:
        """Run once on a small synthetic image (and mask) to catch values imgaug only checks when used
        (``mode: reflec``) and augmenters that refuse masks."""
        image, mask = sample
        try:
            with warnings.catch_warnings():  # imgaug's own deprecation noise is not the user's problem
                warnings.simplefilter("ignore")
                apply_augmenter(augmenter, image.copy(), mask.copy() if self.task == "segmentation" else None)
        except Exception as exc:
            text = one_line(exc)
            if "only process image data" in text:
                text = f"cannot handle segmentation masks ({text})"
            self.fail(key, f"{name} fails on a test image: {text}")
            return False
        return True


def build_augmenter(spec: list, *, task: str, random_order: bool = False, key: str = "augment") -> Any:
    """An ``iaa.Sequential`` of the augmenters ``spec`` declares; :class:`ComponentError` lists every
    problem (unknown name, bad argument, mask-unsafe augmenter for segmentation) at its key."""
    import imgaug.augmenters as iaa
    import imgaug.parameters as iap

    # imgaug pre-draws 10,000 samples per parameter and keeps them across reseeding, so a seed would
    # not repeat the stream (nor would a resumed run); per-image draws cost microseconds.
    iap.toggle_prefetching(False)
    builder = Builder(task)
    children = builder.pipeline(spec, key)
    if builder.problems or children is None:
        raise ComponentError(builder.problems)
    sequential = iaa.Sequential(children, random_order=random_order)
    if task == "segmentation":
        _masks_follow_borders(sequential)
    return sequential


def _masks_follow_borders(augmenter: Any) -> None:
    """imgaug fills the border of a warped mask with background even when the image border is
    reflected or replicated (``mode: reflect``), so a reflected object would be labelled background.
    Where an augmenter has one fixed fill mode, warp its masks with that mode too."""
    import imgaug.parameters as iap

    for aug in [augmenter, *augmenter.get_all_children(flat=True)]:
        mode = getattr(aug, "mode", None)
        if hasattr(aug, "_mode_segmentation_maps") and isinstance(mode, iap.Deterministic):
            value = getattr(aug, "_BORDER_MODE_STR_TO_INT", {}).get(mode.value, mode.value)  # cv2 codes
            if type(value) is type(aug._mode_segmentation_maps):
                aug._mode_segmentation_maps = value


def apply_augmenter(augmenter: Any, image: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    image = np.ascontiguousarray(image)
    if mask is None:
        return np.ascontiguousarray(augmenter(image=image)), None
    from imgaug.augmentables.segmaps import SegmentationMapsOnImage

    segmap = SegmentationMapsOnImage(np.ascontiguousarray(mask), shape=image.shape)
    image_aug, segmap_aug = augmenter(image=image, segmentation_maps=segmap)
    if segmap_aug.arr.shape[:2] != image_aug.shape[:2]:  # e.g. Jigsaw keeps maps at their old size
        segmap_aug = segmap_aug.resize(image_aug.shape[:2], interpolation="nearest")
    return np.ascontiguousarray(image_aug), np.ascontiguousarray(segmap_aug.get_arr(), dtype=np.uint8)


PROBE_MAX_SIDE = 128


def _probe_sample(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    height, width = (min(int(s), PROBE_MAX_SIDE) for s in size)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1), (xx + yy) % 256], axis=-1).astype(
        np.uint8
    )
    mask = (yy > height // 4) & (yy < 3 * height // 4) & (xx > width // 4) & (xx < 3 * width // 4)
    return image, mask.astype(np.uint8)
