"""Automatic augmentation policies as imgaug augmenters: ``RandAugment`` (imgaug's own, its ``n``
checked) and ``TrivialAugment`` (TrivialAugment Wide, written on imgaug's augmenters).

Both are imgaug containers, so they draw from imgaug's RNG like every other augmenter (a seed repeats
them) and run wherever imgaug runs: the DataLoader workers, the offline cache, the preview.

TrivialAugment (Müller & Hutter 2021) applies one operation per image, chosen uniformly from the
"wide" list, with a magnitude drawn uniformly from that operation's range; the list and the ranges
are torchvision's ``TrivialAugmentWide`` (``torchvision/transforms/autoaugment.py``). Magnitudes are
drawn continuously where torchvision picks one of 31 evenly spaced bins. Geometric operations are
imgaug's ``ShearX``/``ShearY``/``TranslateX``/``TranslateY``/``Rotate``, which move a segmentation mask
with the image (shears about the image centre, where torchvision's shear about the top-left corner);
colour operations are imgaug's PIL-like ones and leave the mask alone.
"""

from __future__ import annotations

from typing import Any

import imgaug.augmenters as iaa
import imgaug.parameters as iap
import imgaug.random as iarandom
import numpy as np
from imgaug.augmenters import pillike

# TrivialAugment Wide's operations in torchvision's order, with torchvision's magnitude ranges.
TRIVIAL_OPS = (
    "Identity",
    "ShearX",  # shear coefficient tan(angle) in [-0.99, 0.99]
    "ShearY",
    "TranslateX",  # whole pixels in [-32, 32]
    "TranslateY",
    "Rotate",  # degrees in [-135, 135]
    "Brightness",  # factor 1 + [-0.99, 0.99]
    "Color",  # saturation factor 1 + [-0.99, 0.99]
    "Contrast",  # factor 1 + [-0.99, 0.99]
    "Sharpness",  # factor 1 + [-0.99, 0.99]
    "Posterize",  # bits kept in [2, 8]
    "Solarize",  # threshold in [0, 255]
    "AutoContrast",
    "Equalize",
)
SHEAR_MAX = 0.99  # tan of the angle, as torchvision's ShearX magnitude
TRANSLATE_MAX_PX = 32
ROTATE_MAX_DEG = 135.0
FACTOR_RANGE = (0.01, 1.99)  # 1 +- 0.99: Brightness, Color, Contrast, Sharpness
POSTERIZE_BITS = (2, 8)
SOLARIZE_THRESHOLD = (0, 255)


class AtanDegrees(iap.StochasticParameter):
    """``degrees(atan(x))`` of another parameter's samples: a shear drawn uniformly as torchvision's
    coefficient (``tan`` of the angle) but given to imgaug in degrees."""

    def __init__(self, other: iap.StochasticParameter):
        super().__init__()
        self.other = other

    def _draw_samples(self, size: Any, random_state: Any) -> np.ndarray:
        return np.degrees(np.arctan(self.other.draw_samples(size, random_state=random_state)))

    def __repr__(self) -> str:
        return f"AtanDegrees({self.other!r})"

    __str__ = __repr__


def trivial_op(name: str, *, order: int, cval: Any) -> Any:
    """One TrivialAugment operation as an imgaug augmenter named ``name``."""
    geometry = {"order": order, "cval": cval, "mode": "constant"}
    shear = AtanDegrees(iap.Uniform(-SHEAR_MAX, SHEAR_MAX))
    makers = {
        "Identity": lambda: iaa.Identity(),
        "ShearX": lambda: iaa.ShearX(shear, **geometry),
        "ShearY": lambda: iaa.ShearY(shear, **geometry),
        "TranslateX": lambda: iaa.TranslateX(px=(-TRANSLATE_MAX_PX, TRANSLATE_MAX_PX), **geometry),
        "TranslateY": lambda: iaa.TranslateY(px=(-TRANSLATE_MAX_PX, TRANSLATE_MAX_PX), **geometry),
        "Rotate": lambda: iaa.Rotate((-ROTATE_MAX_DEG, ROTATE_MAX_DEG), **geometry),
        "Brightness": lambda: iaa.Multiply(FACTOR_RANGE),  # PIL's brightness scales every channel
        "Color": lambda: pillike.EnhanceColor(FACTOR_RANGE),
        "Contrast": lambda: pillike.EnhanceContrast(FACTOR_RANGE),
        "Sharpness": lambda: pillike.EnhanceSharpness(FACTOR_RANGE),
        "Posterize": lambda: pillike.Posterize(POSTERIZE_BITS),
        "Solarize": lambda: pillike.Solarize(p=1.0, threshold=SOLARIZE_THRESHOLD),
        "AutoContrast": lambda: pillike.Autocontrast(cutoff=0),
        "Equalize": lambda: pillike.Equalize(),
    }
    op = makers[name]()
    op.name = name
    return op


class TrivialAugment(iaa.OneOf):
    """TrivialAugment Wide: one operation per image, uniformly chosen, at a uniformly drawn magnitude.

    ``ops`` keeps a subset of the operations (default: all 14 of torchvision's ``TrivialAugmentWide``);
    ``order`` is the geometric operations' interpolation (0 nearest, torchvision's default; 1
    bilinear) and ``cval`` the fill of the area they uncover (torchvision's default: 0, black)."""

    def __init__(
        self,
        ops: list[str] | tuple[str, ...] | None = None,
        order: int = 0,
        cval: Any = 0,
        seed: Any = None,
        name: str | None = None,
    ):
        chosen = TRIVIAL_OPS if ops is None else ops
        if isinstance(chosen, str) or not chosen:
            raise ValueError(f"ops: expected a non-empty list of {', '.join(TRIVIAL_OPS)}; got {ops!r}")
        unknown = [o for o in chosen if o not in TRIVIAL_OPS]
        if unknown:
            raise ValueError(
                f"ops: unknown operation(s) {', '.join(map(repr, unknown))}; known: {', '.join(TRIVIAL_OPS)}"
            )
        if order not in (0, 1):
            raise ValueError(f"order: expected 0 (nearest) or 1 (bilinear), got {order!r}")
        self.ops = tuple(chosen)
        super().__init__([trivial_op(o, order=order, cval=cval) for o in self.ops], seed=seed, name=name)

    def get_parameters(self) -> list[Any]:
        return [list(self.ops)]


def _check_n(n: Any) -> None:
    """RandAugment's ``n`` as SomeOf reads it: a count, a [low, high] range or a choice, never negative."""
    values = list(n) if isinstance(n, (tuple, list)) else [n]
    if isinstance(n, tuple) and len(n) != 2:
        raise ValueError(f"n: a range is [low, high], got {list(n)}")
    if not values or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0 for v in values):
        raise ValueError(f"n: expected a whole number of operations >= 0 (or a [low, high] range of them), got {n!r}")
    if isinstance(n, tuple) and n[0] > n[1]:
        raise ValueError(f"n: range [{n[0]}, {n[1]}] has low > high")


class RandAugment(iaa.RandAugment):
    """imgaug's RandAugment (``n`` operations per image at magnitude ``m`` of 30, after a flip and crop).

    As ``imgaug.augmenters.RandAugment``, but ``n`` is checked (imgaug takes a negative count silently)
    and given masks (segmentation) it moves them: imgaug's refuses them (its ``pillike.Affine``)."""

    def __init__(self, n: Any = 2, m: Any = (6, 12), cval: Any = 128, seed: Any = None, name: str | None = None):
        _check_n(n)
        super().__init__(n=n, m=m, cval=cval, seed=seed, name=name)
        if seed is None:  # imgaug gives its operations an RNG derived once at build time: then a reseed
            # (per sample, per epoch) would not repeat its draws. Use the global RNG, as other augmenters do.
            for augmenter in [self, *self.get_all_children(flat=True)]:
                augmenter.random_state = iarandom.get_global_rng()

    def _augment_batch_(self, batch: Any, random_state: Any, parents: Any, hooks: Any) -> Any:
        if any(column != "images" for column in batch.get_column_names()):
            self.for_segmentation()
        return super()._augment_batch_(batch, random_state, parents, hooks)

    def for_segmentation(self) -> None:
        """Replace its ``pillike.Affine`` operations (images only) by ``Affine`` ones holding the same
        parameters, which warp the mask alike: the same draws, but shears about the image centre (PIL's
        about the top-left corner) and cv2's bilinear interpolation instead of PIL's."""
        for container in self.get_all_children(flat=True):
            if not isinstance(container, list):
                continue
            for i, child in enumerate(container):
                if type(child) is pillike.Affine:
                    container[i] = _as_affine(child)


def _as_affine(child: pillike.Affine) -> iaa.Affine:
    affine = iaa.Affine.__new__(iaa.Affine)
    affine.__dict__.update({k: v for k, v in vars(child).items() if k != "center"})
    return affine


POLICIES = {"RandAugment": RandAugment, "TrivialAugment": TrivialAugment}
