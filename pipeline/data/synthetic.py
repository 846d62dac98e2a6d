"""The embedded default datasets: textured scenes of shapes, generated deterministically from a seed.

``dvc repro`` must work offline out of the box, so two small datasets are committed under ``data/``
in exactly the layout a user's data would have (the same reading code serves both):

- ``data/shapes-seg/images/*.png`` + ``data/shapes-seg/masks/*.png`` (binary masks, 0/255):
  ellipses, rotated rectangles, triangles and blobs on a textured background. Each scene draws its
  own colours, so no single channel threshold separates objects; objects differ from the background
  in colour and texture, which a small U-Net learns in a few CPU minutes.
- ``data/shapes-cls/<circle|square|triangle>/*.png``: one shape per image, same kind of backgrounds.
- ``data/shapes-multi/images/*.png`` + ``data/shapes-multi/labels.csv`` (``path,labels``): the
  multi-label set, each of circle, square and triangle present or not in each image (each in its
  own quarter of the image, so none hides another), some images with none.

Only IEEE-exact arithmetic (+, -, *, /, sqrt, floor) and uniform draws are used, so regeneration
gives the same pixels on any platform; ``python -m pipeline.data.synthetic`` rewrites the datasets.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.atomic import atomic_dir

REPO_DATA = Path(__file__).resolve().parents[2] / "data"
SEGMENTATION_DEFAULTS = {"n": 400, "size": 64, "seed": 1234}
CLASSIFICATION_DEFAULTS = {"n_per_class": 100, "size": 64, "seed": 4321}
MULTILABEL_DEFAULTS = {"n": 120, "size": 48, "seed": 2468}  # 48 px: the PNG budget of data/
PRESENT = 0.45  # the chance of each class in a multi-label scene (none at all: 0.55 ** 3, about 1 in 6)
CLASS_NAMES = ("circle", "square", "triangle")
SQRT3_2 = float(np.sqrt(3.0)) / 2.0

Grid = tuple[np.ndarray, np.ndarray]  # (y, x) pixel-centre coordinates, float64


def _grid(size: int) -> Grid:
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    return y, x


def _unit_vector(rng: np.random.Generator) -> tuple[float, float]:
    """A random direction without trigonometry (sin/cos differ in the last bit across libms)."""
    while True:
        c, s = rng.random(2) * 2.0 - 1.0
        norm = float(np.sqrt(c * c + s * s))
        if 0.1 < norm <= 1.0:
            return c / norm, s / norm


def _colour(rng: np.random.Generator) -> np.ndarray:
    return 30.0 + rng.random(3) * 195.0


def _distinct_colour(rng: np.random.Generator, other: np.ndarray, min_distance: float) -> np.ndarray:
    while True:
        colour = _colour(rng)
        if float(np.sqrt(((colour - other) ** 2).sum())) >= min_distance:
            return colour


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a random ``cells`` x ``cells`` grid, bilinearly upsampled."""
    knots = rng.random((cells + 1, cells + 1)) * 2.0 - 1.0
    pos = (np.arange(size, dtype=np.float64) + 0.5) * (cells / size)
    i = np.minimum(np.floor(pos).astype(int), cells - 1)
    f = pos - i
    rows = knots[i] * (1.0 - f)[:, None] + knots[i + 1] * f[:, None]  # (size, cells+1)
    return rows[:, i] * (1.0 - f)[None, :] + rows[:, i + 1] * f[None, :]  # (size, size)


def _texture(rng: np.random.Generator, grid: Grid) -> np.ndarray:
    """A brightness pattern in [-1, 1]: smooth blotches, stripes or a checkerboard."""
    y, x = grid
    kind = int(rng.integers(3))
    if kind == 0:
        return _smooth_field(rng, y.shape[0], int(rng.integers(3, 7)))
    c, s = _unit_vector(rng)
    period = 4.0 + rng.random() * 8.0
    if kind == 1:
        return np.where(np.floor((x * c + y * s) / period) % 2 == 0, 1.0, -1.0)
    u, v = np.floor((x * c + y * s) / period), np.floor((y * c - x * s) / period)
    return np.where((u + v) % 2 == 0, 1.0, -1.0)


def _paint(canvas: np.ndarray, region: np.ndarray, colour: np.ndarray, texture: np.ndarray, amplitude: float) -> None:
    shade = colour[None, None, :] + amplitude * texture[:, :, None]
    canvas[region] = shade[region]


def _ellipse(grid: Grid, cy: float, cx: float, a: float, b: float, rot: tuple[float, float]) -> np.ndarray:
    y, x = grid
    c, s = rot
    u = ((x - cx) * c + (y - cy) * s) / a
    v = ((y - cy) * c - (x - cx) * s) / b
    return u * u + v * v <= 1.0


def _polygon(grid: Grid, vertices: list[tuple[float, float]]) -> np.ndarray:
    """Inside a convex polygon given as (y, x) vertices in either winding order."""
    y, x = grid
    sides = []
    for (y0, x0), (y1, x1) in zip(vertices, vertices[1:] + vertices[:1]):
        sides.append((x1 - x0) * (y - y0) - (y1 - y0) * (x - x0))
    return np.logical_or(np.all([s >= 0 for s in sides], axis=0), np.all([s <= 0 for s in sides], axis=0))


def _rotated(
    cy: float, cx: float, rot: tuple[float, float], points: list[tuple[float, float]]
) -> list[tuple[float, float]]:
    c, s = rot
    return [(cy + py * c + px * s, cx + px * c - py * s) for py, px in points]


def _circle(rng: np.random.Generator, grid: Grid, cy: float, cx: float, r: float) -> np.ndarray:
    return _ellipse(grid, cy, cx, r, r, (1.0, 0.0))


def _square(rng: np.random.Generator, grid: Grid, cy: float, cx: float, r: float) -> np.ndarray:
    h = r * 0.85
    return _polygon(grid, _rotated(cy, cx, _unit_vector(rng), [(-h, -h), (-h, h), (h, h), (h, -h)]))


def _triangle(rng: np.random.Generator, grid: Grid, cy: float, cx: float, r: float) -> np.ndarray:
    points = [(-r, 0.0), (r * 0.5, r * SQRT3_2), (r * 0.5, -r * SQRT3_2)]
    return _polygon(grid, _rotated(cy, cx, _unit_vector(rng), points))


def _free_ellipse(rng: np.random.Generator, grid: Grid, cy: float, cx: float, r: float) -> np.ndarray:
    return _ellipse(grid, cy, cx, r, r * (0.45 + 0.55 * rng.random()), _unit_vector(rng))


def _rectangle(rng: np.random.Generator, grid: Grid, cy: float, cx: float, r: float) -> np.ndarray:
    h, w = r * 0.9, r * (0.35 + 0.55 * rng.random())
    return _polygon(grid, _rotated(cy, cx, _unit_vector(rng), [(-h, -w), (-h, w), (h, w), (h, -w)]))


def _scalene(rng: np.random.Generator, grid: Grid, cy: float, cx: float, r: float) -> np.ndarray:
    jitter = [(r * 0.3 * (rng.random() - 0.5), r * 0.3 * (rng.random() - 0.5)) for _ in range(3)]
    points = [
        (py + jy, px + jx)
        for (py, px), (jy, jx) in zip([(-r, 0.0), (r * 0.5, r * SQRT3_2), (r * 0.5, -r * SQRT3_2)], jitter)
    ]
    return _polygon(grid, _rotated(cy, cx, _unit_vector(rng), points))


def _blob(rng: np.random.Generator, grid: Grid, cy: float, cx: float, r: float) -> np.ndarray:
    region = _free_ellipse(rng, grid, cy, cx, r * 0.8)
    for _ in range(2):
        dy, dx = (rng.random(2) - 0.5) * r
        region |= _free_ellipse(rng, grid, cy + dy, cx + dx, r * 0.6)
    return region


Shape = Callable[[np.random.Generator, Grid, float, float, float], np.ndarray]
SEGMENTATION_SHAPES: tuple[Shape, ...] = (_free_ellipse, _rectangle, _scalene, _blob)
CLASSIFICATION_SHAPES: dict[str, Shape] = {"circle": _circle, "square": _square, "triangle": _triangle}


def _background(rng: np.random.Generator, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    size = grid[0].shape[0]
    colour = _colour(rng)
    canvas = np.empty((size, size, 3), dtype=np.float64)
    _paint(canvas, np.ones((size, size), dtype=bool), colour, _texture(rng, grid), 12.0 + 18.0 * rng.random())
    return canvas, colour


def _finish(canvas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sensor noise of +-1 grey level, then 8-bit. Kept this small on purpose: noise is what makes
    PNGs big (+-3 levels would double the datasets' size in git)."""
    noise = np.floor(rng.random(canvas.shape) * 3.0) - 1.0
    return np.clip(np.floor(canvas + noise + 0.5), 0, 255).astype(np.uint8)


def segmentation_scene(seed: int, index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One (image HxWx3 uint8, mask HxW uint8 in {0, 255}) scene; depends only on (seed, index)."""
    rng = np.random.default_rng([seed, index])
    grid = _grid(size)
    canvas, background = _background(rng, grid)
    mask = np.zeros((size, size), dtype=bool)
    for _ in range(int(rng.integers(1, 4))):
        r = size * (0.09 + 0.16 * rng.random())
        cy, cx = rng.random(2) * (size - 2 * r * 0.6) + r * 0.6
        shape = SEGMENTATION_SHAPES[int(rng.integers(len(SEGMENTATION_SHAPES)))]
        region = shape(rng, grid, float(cy), float(cx), float(r))
        _paint(canvas, region, _distinct_colour(rng, background, 110.0), _texture(rng, grid), 8.0 + 14.0 * rng.random())
        mask |= region
    return _finish(canvas, rng), mask.astype(np.uint8) * 255


def classification_scene(seed: int, class_index: int, index: int, size: int) -> np.ndarray:
    """One image (HxWx3 uint8) of ``CLASS_NAMES[class_index]``; depends only on the arguments."""
    rng = np.random.default_rng([seed, class_index, index])
    grid = _grid(size)
    canvas, background = _background(rng, grid)
    r = size * (0.18 + 0.17 * rng.random())
    cy, cx = rng.random(2) * (size - 2 * r) + r
    region = CLASSIFICATION_SHAPES[CLASS_NAMES[class_index]](rng, grid, float(cy), float(cx), float(r))
    _paint(canvas, region, _distinct_colour(rng, background, 110.0), _texture(rng, grid), 10.0)
    return _finish(canvas, rng)


def multilabel_scene(seed: int, index: int, size: int) -> tuple[np.ndarray, tuple[str, ...]]:
    """One (image HxWx3 uint8, the class names drawn in it): each class of :data:`CLASS_NAMES` present
    with probability :data:`PRESENT`, each in its own quarter; depends only on (seed, index)."""
    rng = np.random.default_rng([seed, index])
    grid = _grid(size)
    canvas, background = _background(rng, grid)
    present = tuple(name for name in CLASS_NAMES if rng.random() < PRESENT)
    quarters = rng.permutation(4)
    half = size / 2
    for name, quarter in zip(present, quarters):
        r = half * (0.3 + 0.12 * rng.random())
        cy = (quarter // 2) * half + r + rng.random() * (half - 2 * r)
        cx = (quarter % 2) * half + r + rng.random() * (half - 2 * r)
        region = CLASSIFICATION_SHAPES[name](rng, grid, float(cy), float(cx), float(r))
        _paint(canvas, region, _distinct_colour(rng, background, 110.0), _texture(rng, grid), 10.0)
    return _finish(canvas, rng), present


def _save_png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path, format="PNG", optimize=True)


def generate_segmentation(root: str | Path, *, n: int, size: int, seed: int) -> None:
    """Write ``root/images/shape_NNNN.png`` and ``root/masks/shape_NNNN.png`` (0/255), replacing
    ``root`` as a whole (atomically)."""
    with atomic_dir(root) as tmp:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        for i in range(n):
            image, mask = segmentation_scene(seed, i, size)
            _save_png(tmp / "images" / f"shape_{i:04d}.png", image)
            _save_png(tmp / "masks" / f"shape_{i:04d}.png", mask)


def generate_classification(root: str | Path, *, n_per_class: int, size: int, seed: int) -> None:
    """Write ``root/<class>/<class>_NNNN.png`` for every class of :data:`CLASS_NAMES`, replacing
    ``root`` as a whole (atomically)."""
    with atomic_dir(root) as tmp:
        for class_index, name in enumerate(CLASS_NAMES):
            (tmp / name).mkdir()
            for i in range(n_per_class):
                _save_png(tmp / name / f"{name}_{i:04d}.png", classification_scene(seed, class_index, i, size))


def generate_multilabel(root: str | Path, *, n: int, size: int, seed: int) -> None:
    """Write ``root/images/scene_NNNN.png`` and ``root/labels.csv`` (``path,labels``, the names joined
    by ``;``), replacing ``root`` as a whole (atomically)."""
    with atomic_dir(root) as tmp:
        (tmp / "images").mkdir()
        lines = ["path,labels"]
        for i in range(n):
            image, present = multilabel_scene(seed, i, size)
            _save_png(tmp / "images" / f"scene_{i:04d}.png", image)
            lines.append(f"images/scene_{i:04d}.png,{';'.join(present)}")
        (tmp / "labels.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """Regenerate the committed default datasets (``data/shapes-seg``, ``data/shapes-cls`` and
    ``data/shapes-multi``)."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.data.synthetic", description=main.__doc__)
    parser.add_argument("--out", type=Path, default=REPO_DATA, help="parent folder (default: the repo's data/)")
    args = parser.parse_args(argv)
    generate_segmentation(args.out / "shapes-seg", **SEGMENTATION_DEFAULTS)
    generate_classification(args.out / "shapes-cls", **CLASSIFICATION_DEFAULTS)
    generate_multilabel(args.out / "shapes-multi", **MULTILABEL_DEFAULTS)
    print(f"wrote {args.out / 'shapes-seg'}, {args.out / 'shapes-cls'} and {args.out / 'shapes-multi'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
