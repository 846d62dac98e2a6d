"""Drawing: masks are coloured with the one palette every picture uses; the training history is legible
(whole labels, a legend clear of the curves)."""

from __future__ import annotations

import numpy as np

from pipeline.plots import CURVES, PALETTE, colour_mask, draw_history


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


def _history_rows() -> list[dict[str, float]]:
    """Curves running just under the top of each panel (through where a legend inside the plot would
    sit: 95% of the y range), others crossing, and losses whose y labels are wide (1.23e+04)."""
    high, low = 12345.0, 12345.0 / 8
    return [
        {
            "epoch": e,
            "train_loss": high / e,
            "val_loss": low + 0.95 * (high - low) if e <= 5 else 3000.0 - 100 * e,
            "val_accuracy": 0.95,
            "val_macro_f1": 0.98 - 0.09 * e,
            "val_balanced_accuracy": 0.5,
            "lr": 0.001,
            "images_per_s": 100.0,
        }
        for e in range(1, 9)
    ]


def test_history_labels_stay_inside_the_image():
    """Every label is drawn whole: no ink touches the image's edges (the y labels used to lose their
    leading digit on the left)."""
    pixels = np.asarray(draw_history(_history_rows()), dtype=np.int64)
    edge = np.ones(pixels.shape[:2], dtype=bool)
    edge[2:-2, 2:-2] = False
    assert (pixels[edge] == 255).all()
    assert (pixels[2:-2, 2:12] < 200).any()  # the wide y labels do reach near the left edge: a real check


def test_history_legend_is_clear_of_every_curve():
    """Coloured ink falls into curves (components spanning most of a panel: lines through markers) and
    legend pieces (swatches and names). Each panel's legend box, the bounding box of its pieces, holds
    one swatch per curve and not one curve pixel."""
    from scipy import ndimage

    rows = _history_rows()
    image = draw_history(rows, width=720, height=300)
    pixels = np.asarray(image, dtype=np.int64)
    coloured = pixels.max(axis=2) - pixels.min(axis=2) > 40  # grey and black ink (labels, frame) is not
    labels, _ = ndimage.label(coloured, structure=np.ones((3, 3)))
    curve = np.zeros_like(coloured)
    legend_boxes: dict[int, list[int]] = {}  # panel -> [top, left, bottom, right]
    for index, (rows_slice, cols_slice) in enumerate(ndimage.find_objects(labels), start=1):
        if cols_slice.stop - cols_slice.start > 180:  # half a panel: a curve
            curve |= labels == index
            continue
        box = legend_boxes.setdefault(cols_slice.start // 360, [300, 720, 0, 0])
        box[:] = [
            min(box[0], rows_slice.start),
            min(box[1], cols_slice.start),
            max(box[2], rows_slice.stop),
            max(box[3], cols_slice.stop),
        ]
    assert sorted(legend_boxes) == [0, 1] and curve.any()
    curves_per_panel = {0: 2, 1: 3}  # train_loss, val_loss | val_accuracy, val_macro_f1, val_balanced_accuracy
    for panel, (top, left, bottom, right) in legend_boxes.items():
        assert not curve[top:bottom, left:right].any(), (panel, (top, left, bottom, right))
        box = pixels[top:bottom, left:right].reshape(-1, 3)
        swatches = {tuple(c) for c in box.tolist() if tuple(c) in map(tuple, CURVES)}
        assert len(swatches) == curves_per_panel[panel]
