"""The augmentation preview: a grid people look at (the preview stage draws it, attached to the training run).

Each row is one training image: the original, then ``versions`` augmented versions of it;
:func:`pipeline.plots.render_grid` draws the rows, masks overlaid, so a mask that does not follow its
image is visible at a glance.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pipeline.data.dataset import Samples
from pipeline.plots import Sample
from pipeline.seeding import seed_everything


def preview_rows(
    base: Samples,
    transform: Callable[[np.ndarray, np.ndarray | None], Sample],
    *,
    images: int,
    versions: int,
    seed: int,
    segmentation: bool,
) -> list[list[Sample]]:
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
        chw, target = base[int(i)]
        image = np.ascontiguousarray(chw.permute(1, 2, 0).numpy())
        mask = np.ascontiguousarray(target.numpy()) if segmentation else None
        rows.append([(image, mask)] + [transform(image, mask) for _ in range(versions)])
    return rows
