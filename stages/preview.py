"""The augmentation preview: a grid people look at before training (and train logs to MLflow).

Each row is one training image: the original, then ``versions`` augmented versions of it. For
segmentation the mask is overlaid in a translucent colour per class (background left clear), so a
mask that does not follow its image is visible at a glance.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.seeding import seed_everything
from stages.plots import save_png

GAP = 2                 # pixels of white between cells
MASK_ALPHA = 0.45       # opacity of the mask overlay
PALETTE = np.array([    # class 1, 2, ... (class 0, background, stays clear); cycles beyond
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40),
], dtype=np.float32)

Sample = tuple[np.ndarray, "np.ndarray | None"]


def overlay_mask(image: np.ndarray, mask: np.ndarray, alpha: float = MASK_ALPHA) -> np.ndarray:
    """``image`` (HxWx3 uint8) with every non-zero class of ``mask`` (HxW) blended in its colour."""
    out = image.astype(np.float32)
    labelled = mask > 0
    colours = PALETTE[(mask[labelled].astype(np.int64) - 1) % len(PALETTE)]
    out[labelled] = (1 - alpha) * out[labelled] + alpha * colours
    return np.clip(out.round(), 0, 255).astype(np.uint8)


def _fit(image: np.ndarray, mask: np.ndarray | None, cell: tuple[int, int]) -> Sample:
    """Resize to the cell (bilinear image, nearest mask) when an augmenter changed the size."""
    height, width = cell
    if image.shape[:2] == (height, width):
        return image, mask
    image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    if mask is not None:
        mask = np.asarray(Image.fromarray(mask).resize((width, height), Image.NEAREST))
    return image, mask


def grid_size(rows: int, columns: int, cell: tuple[int, int], gap: int = GAP) -> tuple[int, int]:
    """(height, width) in pixels of a grid of ``rows`` x ``columns`` cells."""
    return rows * cell[0] + (rows + 1) * gap, columns * cell[1] + (columns + 1) * gap


def render_grid(rows: Sequence[Sequence[Sample]], cell: tuple[int, int], gap: int = GAP) -> np.ndarray:
    """One HxWx3 uint8 picture of ``rows`` of ``(image, mask or None)`` cells on white."""
    columns = max((len(r) for r in rows), default=0)
    height, width = grid_size(len(rows), columns, cell, gap)
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, (image, mask) in enumerate(row):
            image, mask = _fit(image, mask, cell)
            if mask is not None:
                image = overlay_mask(image, mask)
            top, left = gap + r * (cell[0] + gap), gap + c * (cell[1] + gap)
            canvas[top:top + cell[0], left:left + cell[1]] = image
    return canvas


def preview_rows(base: Sequence[tuple[torch.Tensor, torch.Tensor]],
                 transform: Callable[[np.ndarray, np.ndarray | None], Sample], *, images: int,
                 versions: int, seed: int, segmentation: bool) -> list[list[Sample]]:
    """For ``images`` training samples spread over ``base`` (un-augmented ``(uint8 [3,H,W], target)``),
    the original and ``versions`` augmented versions; repeatable from ``seed``."""
    if len(base) == 0:
        return []
    seed_everything(seed)
    if hasattr(transform, "reset"):
        transform.reset()
    picks = np.unique(np.linspace(0, len(base) - 1, min(images, len(base))).round().astype(int))
    rows = []
    for i in picks:
        image, target = base[int(i)]
        image = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
        mask = np.ascontiguousarray(target.numpy()) if segmentation else None
        rows.append([(image, mask)] + [transform(image, mask) for _ in range(versions)])
    return rows


def write_png(path: str | Path, picture: np.ndarray) -> None:
    """Write an HxWx3 uint8 array as PNG, atomically."""
    save_png(path, picture)
