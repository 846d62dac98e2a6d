"""Drawing: masks are coloured with the one palette every picture uses."""
from __future__ import annotations

import numpy as np

from pipeline.plots import PALETTE, colour_mask


def test_overlay_colours_labelled_pixels_only():
    """The preview draws masks with the one palette the evaluation overlays use: a class's inside is
    blended with its colour, its outline drawn in it, unlabelled pixels are left alone."""
    image = np.full((8, 8, 3), 100, np.uint8)
    mask = np.zeros((8, 8), np.uint8)
    mask[0:3, 0:3], mask[4:7, 4:7] = 1, 2
    out = colour_mask(image, mask, alpha=0.5)
    assert out[1, 1].tolist() == np.round(0.5 * 100 + 0.5 * np.array(PALETTE[1])).astype(int).tolist()
    assert out[5, 5].tolist() == np.round(0.5 * 100 + 0.5 * np.array(PALETTE[2])).astype(int).tolist()
    assert out[0, 2].tolist() == list(PALETTE[1]) and out[4, 4].tolist() == list(PALETTE[2])
    assert (out[mask == 0] == 100).all()
