"""Reading an image file as it is meant to be seen: the one reader behind training, evaluation, the
decoded cache, predict and the MLflow model (DESIGN.md 6, "images as users have them").

Two things PIL leaves to the caller, and which used to be missed:

- EXIF orientation. A phone stores a portrait photo as landscape pixels plus an orientation tag;
  :func:`open_image` applies it (``ImageOps.exif_transpose``) to images and masks alike, each by its
  own tag, so a mask drawn on the upright picture (as viewers and annotation tools show it) stays
  aligned. Transposing never changes a value, so mask values stay class indices.
- High bit depths. ``convert("RGB")`` clips a 16-bit or float image at 255 instead of scaling it;
  :func:`to_rgb` scales by the range the values are stored in (the rules are in its docstring).
  Masks never go through it: their values are class indices (``files.mask_array``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pipeline.config.errors import PipelineError
from pipeline.data.files import DECODE_ERRORS, decode_error_reason

# PIL's modes for 16-bit integer pixels: the file says the range is 0..65535, whatever the values.
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})

# Ranges a mode I or F image may be stored in, tried smallest first: the first holding every value is
# taken as its full scale. A fixed set, not each image's own min..max (which would stretch every image
# differently): a value reads as the same grey level in every image on the same scale. These modes do
# not record their bit depth, so an image whose values all happen to fit a smaller range (a 16-bit
# picture darker than 256/65535) is read on that smaller one; 16-bit files open as I;16 and have no
# such ambiguity.
INT_RANGES = (255, 65535)
FLOAT_RANGES = (1.0, 255.0, 65535.0)


def orient(image: Image.Image) -> Image.Image:
    """``image`` turned upright by its EXIF orientation tag, in place (no copy when there is none);
    returned for chaining. Values are only moved, never changed."""
    ImageOps.exif_transpose(image, in_place=True)
    return image


def open_image(path: Path) -> Image.Image:
    """The decoded, upright image (or mask) at ``path``, in its stored mode; :class:`PipelineError`
    naming the path and why it cannot be decoded."""
    try:
        with Image.open(path) as image:
            image.load()
            return orient(image)
    except DECODE_ERRORS as exc:
        size = path.stat().st_size if path.exists() else None
        raise PipelineError(f"{path}: cannot decode image ({decode_error_reason(exc, size)})") from None


def to_rgb(image: Image.Image, where: str | Path = "image") -> Image.Image:
    """``image`` as 8-bit RGB, each mode by its real range; ``where`` names it in errors.

    - ``I;16``/``I;16L``/``I;16B``/``I;16N`` (16-bit PNG and TIFF): ``round(v * 255 / 65535)``.
    - ``I`` (32-bit integers: int TIFFs, arrays): values within 0..255 are taken as they are, within
      0..65535 scaled as 16-bit; negative or larger values are refused (no known scale).
    - ``F`` (float TIFFs, arrays): values within [0, 1] are scaled by 255, within [0, 255] kept, within
      [0, 65535] scaled as 16-bit (then rounded); NaN, infinities, negative or larger values are refused.
    - anything else (L, P, LA, RGBA, CMYK, 1, ...): PIL's ``convert("RGB")``, as before (alpha dropped).

    Greyscale becomes grey RGB (three equal channels)."""
    if image.mode in SIXTEEN_BIT_MODES:
        return _grey_rgb(_scaled(np.asarray(image).astype(np.float64), 65535.0))
    if image.mode == "I":
        return _grey_rgb(_wide_grey(np.asarray(image), INT_RANGES, image.mode, where))
    if image.mode == "F":
        return _grey_rgb(_wide_grey(np.asarray(image), FLOAT_RANGES, image.mode, where))
    return image if image.mode == "RGB" else image.convert("RGB")


def _wide_grey(values: np.ndarray, ranges: tuple[float, ...], mode: str, where: str | Path) -> np.ndarray:
    """A mode I or F image's values scaled from the smallest of ``ranges`` that holds them all. Values
    no range holds (NaN, negative, too large) are a PipelineError naming the file: guessing a scale for
    them would feed the model a silently wrong picture."""
    wide = values.astype(np.float64)
    if not np.all(np.isfinite(wide)):
        raise PipelineError(
            f"{where}: the image holds NaN or infinite values (mode {mode}); cannot read it as a picture"
        )
    low, high = (float(wide.min()), float(wide.max())) if wide.size else (0.0, 0.0)
    if low < 0 or high > ranges[-1]:
        spans = ", ".join(f"0..{r:g}" for r in ranges)
        raise PipelineError(
            f"{where}: image values {low:g}..{high:g} (mode {mode}) fit none of the ranges "
            f"{spans} an image is read from; rescale it into one of them"
        )
    return _scaled(wide, next(r for r in ranges if high <= r))


def _scaled(values: np.ndarray, full_scale: float) -> np.ndarray:
    """``values`` on 0..full_scale as uint8 0..255, rounded to nearest (16-bit ``v * 257`` -> ``v``)."""
    return np.rint(values * (255.0 / full_scale)).clip(0, 255).astype(np.uint8)


def _grey_rgb(grey: np.ndarray) -> Image.Image:
    """A 2-D uint8 array as an RGB image with three equal channels."""
    return Image.fromarray(grey).convert("RGB")
