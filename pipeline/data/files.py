"""The dataset layouts on disk and the mask convention: what the split stage scans and ``validate`` checks.

Two layouts, the same for the embedded default data and a user's own:

- classification: ``root/<class>/<image>``; class names sorted give the label indices;
- segmentation: ``root/<images_dir>/<stem>.<ext>`` with ``root/<masks_dir>/<stem><mask_suffix>.<ext>``
  (Carvana: ``<id>.jpg`` with ``<id>_mask.gif``).

Masks store class indices. Binary masks may store 0/1 or 0/255; both become {0, 1}. The split stage
checks every mask against ``data.num_classes`` once, so loading only has to map values.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.config.errors import PipelineError, Problem
from pipeline.config.params import Params

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})


MASK_EXTENSIONS = IMAGE_EXTENSIONS | {".gif"}


MAX_SEGMENTATION_CLASSES = 256  # masks hold class indices in 8 bits


DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def decode_error_reason(exc: BaseException, size: int | None = None) -> str:
    """Why PIL could not decode a file, in words ("cannot identify image file <_io.BytesIO ...>"
    names a buffer, not the file)."""
    if size == 0:
        return "empty file (0 bytes)"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image format PIL can read"
    if isinstance(exc, Image.DecompressionBombError):
        return f"too large to decode safely ({exc})"
    text = " ".join(str(exc).split())
    if "truncated" in text:
        return "truncated: the file ends before the image data does"
    return text or type(exc).__name__


def segmentation_class_names(num_classes: int) -> list[str]:
    """``background`` is class 0; binary masks call class 1 ``foreground``."""
    if num_classes == 2:
        return ["background", "foreground"]
    return ["background"] + [f"class_{i}" for i in range(1, num_classes)]


def mask_array(image: Image.Image, where: str) -> np.ndarray:
    """The values a mask stores, HxW uint8. Palette images give their indices (the VOC convention);
    greyscale or grey RGB give the grey level; colour-coded masks are refused."""
    mode = image.mode
    if mode in ("1", "L", "P"):
        return np.asarray(image, dtype=np.uint8)
    if mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        values = np.asarray(image)
        if values.min() < 0 or values.max() > 255 or (mode == "F" and not np.all(values == np.round(values))):
            raise PipelineError(
                f"{where}: mask values must be class indices 0..255 (found {values.min()}.."
                f"{values.max()} in a {mode} image)"
            )
        return values.astype(np.uint8)
    if mode == "LA":  # grey plus alpha: the grey level
        return np.asarray(image, dtype=np.uint8)[..., 0].copy()
    channels = np.asarray(image if mode in ("RGB", "RGBA") else image.convert("RGB"), dtype=np.uint8)
    grey = channels[..., 0]
    if not (np.array_equal(grey, channels[..., 1]) and np.array_equal(grey, channels[..., 2])):
        raise PipelineError(
            f"{where}: a colour mask ({mode}); masks must store class indices in one "
            f"channel (greyscale or palette PNG), or 0/255 for binary masks"
        )
    return grey.copy()


def mask_values(image: Image.Image, where: str) -> tuple[int, ...]:
    """The distinct values a mask stores, sorted (as :func:`mask_array` reads them)."""
    return tuple(mask_histogram(image, where))


def mask_histogram(image: Image.Image, where: str) -> dict[int, int]:
    """The pixels of each value a mask stores, by value, sorted (as :func:`mask_array` reads them). The
    split stage calls this for every mask, so the common modes use PIL's C histogram, not a numpy copy."""
    if image.mode in ("L", "P", "1"):
        counts: dict[int, int] = {}
        colors = image.getcolors(256)
        assert colors is not None, "a single-band 8-bit image has at most 256 values"
        for count, pixel in colors:
            # PIL types a pixel for any mode (a tuple for multi-band); these single-band modes give an int
            value = (1 if pixel else 0) if image.mode == "1" else int(cast(int, pixel))
            counts[value] = counts.get(value, 0) + int(count)
        return dict(sorted(counts.items()))
    bins = np.bincount(mask_array(image, where).ravel(), minlength=256)
    return {int(v): int(bins[v]) for v in np.flatnonzero(bins)}


def several(names: Sequence[str], limit: int = 5) -> str:
    """``a, b, c and 7 more``: enough names in an error message to find the files."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_mask_classes(masks: Sequence[tuple[str, tuple[int, ...]]], num_classes: int | None) -> int:
    """The number of classes, from ``(mask path, values it stores)`` of every mask: checks the
    declared ``data.num_classes`` or infers it (binary 0/1 or 0/255 -> 2, else the largest index + 1)."""
    seen = sorted(set().union(*(values for _, values in masks)))
    binary = set(seen) <= {0, 1} or set(seen) <= {0, 255}
    if not binary and 255 in seen:
        holder = next(
            (rel for rel, values in masks if 255 in values and set(values) - {0, 255}),
            next(rel for rel, values in masks if 255 in values),
        )
        raise PipelineError(
            f"{holder}: mask values {several([str(v) for v in seen], 8)}: 255 beside other "
            f"values is neither a 0/255 binary mask nor a class index (lossy JPEG masks and "
            f"'ignore' labels are not supported); store class indices 0..N-1 losslessly"
        )
    if num_classes is None:
        if seen == [0]:
            raise PipelineError("every mask is empty (all 0): cannot infer the number of classes; set data.num_classes")
        return 2 if binary else seen[-1] + 1
    if num_classes > MAX_SEGMENTATION_CLASSES:
        raise PipelineError(f"data.num_classes: at most {MAX_SEGMENTATION_CLASSES} segmentation classes")
    if binary and 255 in seen:
        if num_classes != 2:
            raise PipelineError(f"data.num_classes is {num_classes} but the masks are binary (0/255); set it to 2")
    elif seen[-1] >= num_classes:
        holder = next(rel for rel, values in masks if values and values[-1] >= num_classes)
        raise PipelineError(
            f"data.num_classes is {num_classes} but {holder} holds class {seen[-1]}; "
            f"masks store class indices 0..{num_classes - 1}"
        )
    return num_classes


def mask_to_classes(values: np.ndarray, num_classes: int) -> np.ndarray:
    """Stored mask values -> class indices: binary masks (0/1 or 0/255) -> {0, 1}, others as stored."""
    return (values > 0).astype(np.uint8) if num_classes == 2 else values


def inside(path: Path, root: Path) -> bool:
    """Whether ``path`` (following symlinks) lies within ``root`` (already resolved)."""
    return path.resolve().is_relative_to(root)


def data_path_key(real_root: Path, rel: str) -> str:
    """The identity of a data file named ``rel`` under the data root ``real_root`` (already resolved):
    its path with symlinks followed, relative to the root, in POSIX form. ``img/a.png``,
    ``./img/a.png``, ``img//a.png`` and ``img/../img/a.png`` are one file, ``img/a.png``; a file is
    named by this key wherever files are compared or stored. ValueError when the path leads outside
    the root; OSError (or RuntimeError, a symlink loop) when it cannot be resolved."""
    return (real_root / rel).resolve().relative_to(real_root).as_posix()


def folder_problems(root: Path, task: str, images_dir: str, masks_dir: str) -> list[Problem]:
    """What is wrong with the dataset's folders: data.root, and for segmentation the image and mask
    folders, which must lie inside it. Shared by ``validate`` and the split stage."""
    if not root.is_dir():
        return [Problem("data.root", f"{root} {'is not a folder' if root.exists() else 'does not exist'}")]
    if task != "segmentation":
        return []
    if Path(images_dir) == Path(masks_dir):
        return [
            Problem("data.masks_dir", f"images and masks are both in {images_dir!r}; keep them in separate folders")
        ]
    problems, real_root = [], root.resolve()
    for key, name in (("images_dir", images_dir), ("masks_dir", masks_dir)):
        folder = root / name
        if not inside(folder, real_root):
            problems.append(
                Problem(f"data.{key}", f"{folder} is outside data.root; nothing is read from outside the data root")
            )
        elif not folder.is_dir():
            problems.append(Problem(f"data.{key}", f"no folder {name!r} in {root}"))
    return problems


def check_data(params: Params) -> list[Problem]:
    """data.root exists; the segmentation folders exist inside it; num_classes fits 8-bit masks; native
    resolution (data.resize none) is for segmentation only (a class needs the whole image)."""

    def get(key: str) -> Any:
        return params.get(f"data.{key}")

    problems = folder_problems(params.resolve_path(get("root")), get("task"), get("images_dir"), get("masks_dir"))
    if get("task") == "segmentation" and (get("num_classes") or 0) > MAX_SEGMENTATION_CLASSES:
        problems.append(
            Problem(
                "data.num_classes",
                f"{get('num_classes')} classes: segmentation masks hold "
                f"class indices in 8 bits (at most {MAX_SEGMENTATION_CLASSES})",
            )
        )
    if get("resize") == "none" and get("task") != "segmentation":
        problems.append(
            Problem("data.resize", "none (native resolution, tiled inference) is for segmentation; use fit")
        )
    problems += max_side_problems(get("max_side"), get("resize"), get("image_size"))
    return problems


def max_side_problems(max_side: Any, resize: Any, image_size: Any) -> list[Problem]:
    """data.max_side shrinks native images (data.resize none) and nothing else; and a crop (data.image_size)
    larger than every shrunk image would train on padding."""
    if max_side is None:
        return []
    if resize != "none":
        return [Problem("data.max_side", f"{max_side} applies to data.resize none only (fit resizes every image)")]
    sides = image_size if isinstance(image_size, list) else [image_size]
    if all(isinstance(side, int) for side in sides) and max(sides) > max_side:
        return [
            Problem(
                "data.max_side",
                f"{max_side} is smaller than the training crop data.image_size {image_size}: "
                "raise it to at least the crop's longer side",
            )
        ]
    return []
