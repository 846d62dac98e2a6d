"""The augmentation preview: the original, then augmented versions, one row per image."""

from __future__ import annotations

import numpy as np

from pipeline.augment.transform import build_transform
from pipeline.plots import grid_size


def test_classification_preview_shows_original_then_versions_without_overlay():
    import torch

    from pipeline.augment.preview import preview_rows
    from pipeline.plots import render_grid

    rng = np.random.default_rng(2)
    base = [(torch.from_numpy(rng.integers(0, 256, (3, 6, 8), dtype=np.uint8)), torch.tensor(i)) for i in range(5)]
    transform = build_transform(["Invert"], task="classification")
    rows = preview_rows(base, transform, images=2, versions=3, seed=0, segmentation=False)
    assert len(rows) == 2 and all(len(r) == 4 and r[0][1] is None for r in rows)
    assert np.array_equal(rows[1][0][0], base[4][0].permute(1, 2, 0).numpy())  # spread: first and last
    grid = render_grid(rows, (6, 8))
    assert grid.shape == (*grid_size(2, 4, (6, 8)), 3)
    assert np.array_equal(grid[2:8, 12:20], 255 - rows[0][0][0])  # column 2: inverted, no overlay
