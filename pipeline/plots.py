"""Every drawing the pipeline writes: the augmentation preview grid, the confusion matrix, prediction
overlays and the training history (PIL only), with one class palette for masks everywhere.

Every function returns a ``PIL.Image`` and reads nothing from disk, so the stage decides where and how
(atomically) to save it. Sizes are deterministic functions of the inputs (tests rely on that).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline.atomic import write_bytes

TILE = 160  # longest side of one drawn image, px
PAD = 6  # gap between tiles
CAPTION = 16  # height of one caption line
WHITE, BLACK, GREY = (255, 255, 255), (0, 0, 0), (110, 110, 110)
RIGHT, WRONG = (20, 140, 60), (200, 30, 30)
# Class colours for masks (index 0, the background, is never painted); cycled past the end.
PALETTE = [
    (0, 0, 0),
    (255, 60, 60),
    (60, 200, 80),
    (70, 120, 255),
    (255, 200, 0),
    (200, 70, 255),
    (0, 220, 220),
    (255, 130, 40),
    (160, 255, 120),
    (255, 110, 200),
    (140, 90, 40),
]


@cache
def _font(size: int = 12) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1 or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _text_width(text: str) -> int:
    left, _, right, _ = _font().getbbox(text)
    return math.ceil(right - left)


def _fit(text: str, width: int) -> str:
    """``text`` shortened with an ellipsis so it fits ``width`` pixels."""
    if _text_width(text) <= width:
        return text
    while text and _text_width(text + "…") > width:
        text = text[:-1]
    return text + "…"


def tile_size(height: int, width: int) -> tuple[int, int]:
    """(height, width) an image is drawn at: longest side :data:`TILE`, aspect kept."""
    scale = TILE / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _to_tile(image: np.ndarray) -> Image.Image:
    """HxWx3 uint8 -> a PIL tile (nearest when enlarging keeps small images' pixels crisp)."""
    th, tw = tile_size(*image.shape[:2])
    enlarge = th >= image.shape[0]
    return Image.fromarray(image).resize((tw, th), Image.Resampling.NEAREST if enlarge else Image.Resampling.BILINEAR)


def colour_mask(image: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """``image`` (HxWx3 uint8) with every non-background class of ``mask`` (HxW) blended in its
    colour and outlined in it at full strength (a tint alone vanishes on objects of similar colour)."""
    palette = np.array(
        [PALETTE[(i - 1) % (len(PALETTE) - 1) + 1] if i else PALETTE[0] for i in range(int(mask.max(initial=0)) + 1)],
        dtype=np.float32,
    )
    out = image.astype(np.float32)
    painted = mask > 0
    out[painted] = (1 - alpha) * out[painted] + alpha * palette[mask[painted]]
    padded = np.pad(mask, 1, mode="edge")
    edge = painted & (
        (padded[:-2, 1:-1] != mask)
        | (padded[2:, 1:-1] != mask)
        | (padded[1:-1, :-2] != mask)
        | (padded[1:-1, 2:] != mask)
    )
    out[edge] = palette[mask[edge]]
    return out.round().clip(0, 255).astype(np.uint8)


def _short(count: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= size:
            return f"{count / size:.3g}{unit}"
    return str(count)


def draw_confusion(
    matrix: Sequence[Sequence[int]], class_names: Sequence[str], *, title: str = "confusion matrix"
) -> Image.Image:
    """Rows = actual, columns = predicted; cells shaded by the row's share (recall), counts written."""
    counts = np.asarray(matrix, dtype=np.int64)
    k = counts.shape[0]
    cell = max(12, min(56, 960 // k))
    label_w = min(160, max(_text_width(str(n)) for n in class_names) + 2 * PAD)
    left, top = label_w + CAPTION + PAD, 2 * CAPTION + label_w + PAD
    width, height = left + k * cell + PAD, top + k * cell + CAPTION + PAD
    img = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(img)
    draw.text((PAD, PAD // 2), title, fill=BLACK, font=_font())
    rows = counts.sum(1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=np.float64), where=rows > 0)
    for i in range(k):
        for j in range(k):
            x, y = left + j * cell, top + i * cell
            shade = round(255 - 200 * share[i, j])
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=(shade, shade, 255), outline=WHITE)
            if cell >= 28:
                text = _short(int(counts[i, j]))
                draw.text(
                    (x + cell / 2, y + cell / 2),
                    text,
                    anchor="mm",
                    font=_font(),
                    fill=WHITE if share[i, j] > 0.6 else BLACK,
                )
    for i, name in enumerate(class_names):  # actual: row labels; predicted: rotated column labels
        label = _fit(str(name), label_w - PAD)
        draw.text((left - PAD, top + i * cell + cell / 2), label, anchor="rm", fill=BLACK, font=_font())
        strip = Image.new("RGB", (label_w, cell), WHITE)
        ImageDraw.Draw(strip).text((PAD, cell / 2), label, anchor="lm", fill=BLACK, font=_font())
        img.paste(strip.rotate(90, expand=True), (left + i * cell, 2 * CAPTION))
    draw.text((left + k * cell / 2, height - PAD), "predicted", anchor="md", fill=GREY, font=_font())
    axis = Image.new("RGB", (k * cell, CAPTION), WHITE)
    ImageDraw.Draw(axis).text((k * cell / 2, CAPTION / 2), "actual", anchor="mm", fill=GREY, font=_font())
    img.paste(axis.rotate(90, expand=True), (PAD // 2, top))
    return img


def draw_segmentation_overlays(
    images: Sequence[np.ndarray], truths: Sequence[np.ndarray], preds: Sequence[np.ndarray], captions: Sequence[str]
) -> Image.Image:
    """One row per image: the image, the true mask over it, the predicted mask over it."""
    if not images:
        return _empty("no overlays (evaluate.overlays: 0)")
    th, tw = tile_size(*images[0].shape[:2])
    row_h = CAPTION + th + PAD
    img = Image.new("RGB", (3 * tw + 4 * PAD, CAPTION + PAD + len(images) * row_h), WHITE)
    draw = ImageDraw.Draw(img)
    for col, header in enumerate(("image", "truth", "prediction")):
        draw.text((PAD + col * (tw + PAD) + tw / 2, PAD // 2), header, anchor="mt", fill=GREY, font=_font())
    for row, (image, truth, pred, caption) in enumerate(zip(images, truths, preds, captions)):
        y = CAPTION + PAD + row * row_h
        draw.text((PAD, y), _fit(caption, 3 * tw + 2 * PAD), fill=BLACK, font=_font())
        for col, drawn in enumerate((image, colour_mask(image, truth), colour_mask(image, pred))):
            img.paste(_to_tile(drawn), (PAD + col * (tw + PAD), y + CAPTION))
    return img


def draw_classification_overlays(
    images: Sequence[np.ndarray], truths: Sequence[str], preds: Sequence[str], *, columns: int = 4
) -> Image.Image:
    """A grid of test images captioned with true and predicted class; green when right, red when not."""
    if not images:
        return _empty("no overlays (evaluate.overlays: 0)")
    th, tw = tile_size(*images[0].shape[:2])
    columns = min(columns, len(images))
    rows = math.ceil(len(images) / columns)
    cell_w, cell_h = tw + 2 * PAD, th + 2 * CAPTION + 2 * PAD
    img = Image.new("RGB", (columns * cell_w + PAD, rows * cell_h + PAD), WHITE)
    draw = ImageDraw.Draw(img)
    for i, (image, truth, pred) in enumerate(zip(images, truths, preds)):
        x, y = PAD + (i % columns) * cell_w, PAD + (i // columns) * cell_h
        colour = RIGHT if truth == pred else WRONG
        draw.rectangle([x - 3, y - 3, x + tw + 2, y + th + 2], fill=colour)
        img.paste(_to_tile(image), (x, y))
        draw.text((x, y + th + 3), _fit(f"true: {truth}", tw), fill=BLACK, font=_font())
        draw.text((x, y + th + 3 + CAPTION), _fit(f"pred: {pred}", tw), fill=colour, font=_font())
    return img


def draw_per_class(
    class_names: Sequence[str], series: dict[str, Sequence[float | None]], *, title: str = "per class", bar: int = 160
) -> Image.Image:
    """One row per class, one bar per series (e.g. AP and F1, values 0..1) with its value written;
    a missing value (None: say, no positive in the test set) is written as "n/a"."""
    keys = list(series)
    label_w = min(160, max([_text_width(str(n)) for n in class_names] + [40]) + 2 * PAD)
    row_h = len(keys) * (CAPTION - 2) + PAD
    width = label_w + bar + 60 + 2 * PAD
    img = Image.new("RGB", (width, CAPTION + PAD + len(class_names) * row_h + CAPTION + PAD), WHITE)
    draw = ImageDraw.Draw(img)
    draw.text((PAD, PAD // 2), title, fill=BLACK, font=_font())
    for i, name in enumerate(class_names):
        y = CAPTION + PAD + i * row_h
        draw.text((PAD, y), _fit(str(name), label_w - PAD), fill=BLACK, font=_font())
        for j, key in enumerate(keys):
            value = series[key][i]
            top = y + j * (CAPTION - 2)
            colour = CURVES[j % len(CURVES)]
            if value is not None:
                draw.rectangle([label_w, top + 2, label_w + max(1, round(bar * value)), top + CAPTION - 6], fill=colour)
            text = "n/a" if value is None else f"{value:.3f}"
            draw.text((label_w + bar + PAD, top), f"{key} {text}", fill=BLACK, font=_font())
    return img


def stack(images: Sequence[Image.Image]) -> Image.Image:
    """Pictures one above the other, left-aligned on white."""
    width, height = max(i.width for i in images), sum(i.height for i in images)
    out = Image.new("RGB", (width, height), WHITE)
    y = 0
    for image in images:
        out.paste(image, (0, y))
        y += image.height
    return out


def _empty(message: str) -> Image.Image:
    img = Image.new("RGB", (_text_width(message) + 2 * PAD, CAPTION + 2 * PAD), WHITE)
    ImageDraw.Draw(img).text((PAD, PAD), message, fill=GREY, font=_font())
    return img


def save_png(path: str | Path, image: Image.Image | np.ndarray) -> None:
    """Write a picture (PIL image or HxWx3 uint8 array) as PNG, atomically."""
    picture = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    write_bytes(path, buffer.getvalue())


CURVES = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
GRID = (232, 232, 232)
SWATCH = 16  # legend: the width of the line drawn before each name
INSET = 4  # curves keep this far from the frame, so markers are not cut by it


def _legend_rows(keys: Sequence[str], width: int) -> list[list[tuple[int, str]]]:
    """(curve index, name) entries wrapped into rows that fit ``width`` pixels."""
    rows: list[list[tuple[int, str]]] = [[]]
    used = 0
    for c, key in enumerate(keys):
        entry = SWATCH + PAD + _text_width(key)
        if rows[-1] and used + 2 * PAD + entry > width:
            rows.append([])
            used = 0
        used += (2 * PAD if rows[-1] else 0) + entry
        rows[-1].append((c, key))
    return rows


def _tick_labels(values: Sequence[float]) -> list[str]:
    """Labels for ``values`` with as few digits as keep them apart (3 at least, 6 at most)."""
    labels = [f"{v:.3g}" for v in values]
    for digits in range(4, 7):
        if len(set(labels)) == len(labels):
            break
        labels = [f"{v:.{digits}g}" for v in values]
    return labels


def draw_history(rows: Sequence[dict[str, float]], *, width: int = 720, height: int = 300) -> Image.Image:
    """Per-epoch curves: losses on the left panel, validation scores (0..1) on the right.

    Each panel's legend sits in a band above its plot area (never over a curve), and its left margin
    is as wide as its widest y label, so no label is cut off at the image's edge."""
    panels: list[tuple[str, list[str]]] = [
        ("loss", [k for k in ("train_loss", "val_loss", "val_ema_loss") if rows and k in rows[0]]),
        ("validation", [k for k in (rows[0] if rows else {}) if k.startswith("val_") and not k.endswith("_loss")]),
    ]
    img = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(img)
    panel_w = width // 2
    legends = [_legend_rows(keys, panel_w - 2 * PAD) for _, keys in panels]
    top = 2 * PAD + CAPTION * (1 + max(len(legend) for legend in legends))  # title, then the legend band
    epochs = [int(r.get("epoch", i + 1)) for i, r in enumerate(rows)]
    for p, ((title, keys), legend) in enumerate(zip(panels, legends)):
        left = p * panel_w + PAD
        draw.text((left, PAD // 2), title, fill=BLACK, font=_font())
        for line, entries in enumerate(legend):
            x, y = left, PAD // 2 + CAPTION * (line + 1) + CAPTION // 2
            for c, key in entries:
                colour = CURVES[c % len(CURVES)]
                draw.line([(x, y), (x + SWATCH, y)], fill=colour, width=2)
                draw.text((x + SWATCH + PAD, y), key, anchor="lm", fill=colour, font=_font())
                x += SWATCH + 3 * PAD + _text_width(key)
        values = [r[k] for r in rows for k in keys if math.isfinite(r[k])]
        low, high = (0.0, 1.0) if title == "validation" else (min(values, default=0.0), max(values, default=1.0))
        high = high if high > low else low + 1.0
        ticks = [low + (high - low) * i / 4 for i in range(5)]
        labels = _tick_labels(ticks) if values else []
        x0 = left + max((_text_width(label) for label in labels), default=0) + PAD
        x1, y0, y1 = (p + 1) * panel_w - PAD, top, height - CAPTION - 2 * PAD
        span = max(len(rows) - 1, 1)

        def at(i: int, value: float) -> tuple[float, float]:  # called only within this panel's iteration
            return (
                x0 + INSET + (x1 - x0 - 2 * INSET) * i / span,  # noqa: B023
                y1 - INSET - (y1 - y0 - 2 * INSET) * (value - low) / (high - low),  # noqa: B023
            )

        for tick, label in zip(ticks, labels):
            tick_y = at(0, tick)[1]
            draw.line([(x0 + 1, tick_y), (x1 - 1, tick_y)], fill=GRID)
            draw.text((x0 - PAD // 2, tick_y), label, anchor="rm", fill=GREY, font=_font())
        draw.rectangle([x0, y0, x1, y1], outline=GREY)
        draw.text(((x0 + x1) / 2, y1 + PAD), "epoch", anchor="ma", fill=GREY, font=_font())
        for i in sorted({0, len(rows) - 1}) if values else ():  # the first and the last epoch
            draw.text((at(i, low)[0], y1 + PAD), str(epochs[i]), anchor="ma", fill=GREY, font=_font())
        for c, key in enumerate(keys):
            colour = CURVES[c % len(CURVES)]
            points = [at(i, r[key]) for i, r in enumerate(rows) if math.isfinite(r[key])]
            if len(points) > 1:
                draw.line(points, fill=colour, width=2)
            for px, py in points:
                draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)
    return img


GAP = 2  # pixels of white between cells


Sample = tuple[np.ndarray, "np.ndarray | None"]


def _fit_cell(image: np.ndarray, mask: np.ndarray | None, cell: tuple[int, int]) -> Sample:
    """Resize to the cell (bilinear image, nearest mask) when an augmenter changed the size."""
    height, width = cell
    if image.shape[:2] == (height, width):
        return image, mask
    image = np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))
    if mask is not None:
        mask = np.asarray(Image.fromarray(mask).resize((width, height), Image.Resampling.NEAREST))
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
            image, mask = _fit_cell(image, mask, cell)
            if mask is not None:
                image = colour_mask(image, mask)
            top, left = gap + r * (cell[0] + gap), gap + c * (cell[1] + gap)
            canvas[top : top + cell[0], left : left + cell[1]] = image
    return canvas
