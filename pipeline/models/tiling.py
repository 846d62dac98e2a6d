"""Whole-image segmentation by overlapping tiles: the one function evaluation, validation, ``predict``, the
pyfunc model, the model server and ONNX predict all call (``evaluate.tile``), so a mask is the same
wherever it is computed.

The image is cut into tiles of ``tile`` (height, width) whose starts step by ``tile * (1 - overlap)``, the
last tile flush with the far edge (every pixel is covered, as MONAI's ``sliding_window_inference`` and
mmsegmentation's ``mode='slide'``). Tiles go through the model in batches of ``batch`` (streamed: only one
batch of tiles exists at a time), and each tile's logits are added, weighted, into one float32 [C,H,W]
sum. The weights are ``mean`` (all ones) or ``gaussian`` (sigma = 0.125 x the tile side, MONAI's default;
the tile's centre counts more than its border, where a CNN sees less context). Both are separable
(w(y, x) = wy(y) * wx(x)) and the tiles form a grid, so the per-pixel weight total is the outer product of
two 1-D totals: the logit sum is the only full-size array (C*H*W*4 bytes), besides the caller's image.

An image smaller than a tile in a dimension is padded at its far edge by reflection (mirrored about the edge pixel,
repeated when the pad exceeds the image) up to the tile; the padded part's logits are dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

BLENDS = ("gaussian", "mean")
GAUSSIAN_SIGMA = 0.125  # x the tile side (MONAI sliding_window_inference's sigma_scale)
GAUSSIAN_FLOOR = 1e-3  # the smallest weight, relative to the centre's: every pixel keeps some weight

# uint8 tiles [N,3,h,w] (a CPU tensor) -> float logits [N,C,h,w] (any device)
TileModel = Callable[[torch.Tensor], torch.Tensor]


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Where tiles of ``tile`` start along a side of ``length`` (>= tile): every ``stride`` pixels, the
    last one flush with the end (so the last step may be shorter)."""
    if length <= tile:
        return [0]
    stride = max(1, tile - round(tile * overlap))
    starts = list(range(0, length - tile, stride))
    return [*starts, length - tile]


def weights_1d(tile: int, blend: str) -> torch.Tensor:
    """The per-position weight along one side of a tile: ones (``mean``) or a Gaussian centred on the
    tile, its peak 1 and never below :data:`GAUSSIAN_FLOOR` (``gaussian``)."""
    if blend == "mean":
        return torch.ones(tile, dtype=torch.float32)
    if blend != "gaussian":
        raise ValueError(f"blend must be one of {', '.join(BLENDS)}, not {blend!r}")
    sigma = GAUSSIAN_SIGMA * tile
    x = torch.arange(tile, dtype=torch.float64) - (tile - 1) / 2
    return torch.exp(-(x**2) / (2 * sigma**2)).clamp_min(GAUSSIAN_FLOOR).float()


def _totals(length: int, starts: list[int], w: torch.Tensor) -> torch.Tensor:
    """The summed 1-D weight at each position of a side, over the tiles starting at ``starts``."""
    total = torch.zeros(length, dtype=torch.float32)
    for s in starts:
        total[s : s + len(w)] += w
    return total


def _chw(image: Any) -> torch.Tensor:
    """The image as a [C,H,W] tensor: a uint8 HxWx3 numpy array is viewed as such (no copy); a tensor
    (uint8 or already normalised float, on any device) is taken as [C,H,W]."""
    if isinstance(image, torch.Tensor):
        return image
    return torch.from_numpy(np.asarray(image)).permute(2, 0, 1)


def _pad(image: torch.Tensor, th: int, tw: int) -> torch.Tensor:
    """``image`` [C,H,W] reflected at its bottom and right edges up to at least (th, tw) (repeatedly when
    the pad exceeds the image)."""
    while image.shape[1] < th or image.shape[2] < tw:
        height, width = image.shape[1:]
        pad_h = min(th - height, height - 1) if height < th else 0
        pad_w = min(tw - width, width - 1) if width < tw else 0
        if pad_h <= 0 and pad_w <= 0:  # a 1-pixel side cannot reflect: repeat it
            return torch.nn.functional.pad(
                image[None].float(), (0, max(0, tw - width), 0, max(0, th - height)), mode="replicate"
            )[0].to(image.dtype)
        flipped = image.flip(1)[:, 1 : 1 + pad_h] if pad_h > 0 else image[:, :0]
        image = torch.cat([image, flipped], dim=1)
        flipped = image.flip(2)[:, :, 1 : 1 + pad_w] if pad_w > 0 else image[:, :, :0]
        image = torch.cat([image, flipped], dim=2)
    return image


def tile_grid(hw: tuple[int, int], tile: tuple[int, int], overlap: float) -> list[tuple[int, int]]:
    """Every tile's top-left (y, x) for an image of ``hw`` (already padded to at least a tile), row by row."""
    ys = tile_starts(hw[0], tile[0], overlap)
    xs = tile_starts(hw[1], tile[1], overlap)
    return [(y, x) for y in ys for x in xs]


def _batches(
    image: torch.Tensor, grid: list[tuple[int, int]], tile: tuple[int, int], batch: int
) -> Iterator[tuple[list[tuple[int, int]], torch.Tensor]]:
    th, tw = tile
    for i in range(0, len(grid), batch):
        where = grid[i : i + batch]
        yield where, torch.stack([image[:, y : y + th, x : x + tw] for y, x in where])  # one batch only


@torch.no_grad()
def tiled_logits(
    model: TileModel,
    image: Any,
    *,
    tile: tuple[int, int],
    overlap: float = 0.25,
    blend: str = "gaussian",
    batch: int = 8,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Float32 logits [C,H,W] of the whole ``image``, by overlapping tiles of ``tile`` (height, width)
    blended as the module says. ``image``: uint8 HxWx3 numpy (predict, the served model: ``model`` then
    takes uint8 tiles [N,3,h,w] on the CPU) or a [3,H,W] tensor (evaluation: a normalised one on the
    device, tiles cut where it lies). ``model`` returns the tiles' logits [N,C,h,w]; their sum is kept
    on ``device`` (for predict the CPU: a large image then costs no accelerator memory beyond a batch)."""
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must lie in [0, 1), not {overlap}")
    th, tw = int(tile[0]), int(tile[1])
    pixels = _chw(image)
    height, width = pixels.shape[1:]
    padded = _pad(pixels, th, tw)
    ph, pw = padded.shape[1:]
    wy, wx = weights_1d(th, blend), weights_1d(tw, blend)
    grid = tile_grid((ph, pw), (th, tw), overlap)
    ys, xs = sorted({y for y, _ in grid}), sorted({x for _, x in grid})
    total_y, total_x = _totals(ph, ys, wy)[:height], _totals(pw, xs, wx)[:width]
    window = (wy[:, None] * wx[None, :]).to(device)
    out: torch.Tensor | None = None
    for where, tiles in _batches(padded, grid, (th, tw), batch):
        logits = model(tiles).float().to(device)
        if out is None:
            out = torch.zeros((logits.shape[1], height, width), dtype=torch.float32, device=device)
        for (y, x), one in zip(where, logits):
            h, w = min(th, height - y), min(tw, width - x)  # what of the tile lies inside the image
            if h > 0 and w > 0:
                out[:, y : y + h, x : x + w].addcmul_(one[:, :h, :w], window[:h, :w])
    assert out is not None
    rows = max(1, (64 << 20) // max(1, 4 * out.shape[0] * width))  # normalise in ~64 MB row blocks
    inv_x = (1.0 / total_x).to(device)
    for r in range(0, height, rows):
        inv = (1.0 / total_y[r : r + rows]).to(device)[:, None] * inv_x[None, :]
        out[:, r : r + rows].mul_(inv)
    return out


def tile_count(hw: tuple[int, int], tile: tuple[int, int], overlap: float) -> int:
    """How many tiles :func:`tiled_logits` runs for an image of ``hw``."""
    return len(tile_starts(max(hw[0], tile[0]), tile[0], overlap)) * len(
        tile_starts(max(hw[1], tile[1]), tile[1], overlap)
    )


def rows_apply(logits: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], rows: int = 1024) -> torch.Tensor:
    """``fn`` (per-pixel, e.g. logits -> class indices, [1,C,h,W] -> [1,h,W]) over [C,H,W] ``logits`` in
    blocks of ``rows`` rows: the temporaries it makes stay a block's size, not the image's."""
    parts = [fn(logits[None, :, r : r + rows])[0] for r in range(0, logits.shape[1], rows)]
    return torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]


def tile_hw(size: Any, fallback: tuple[int, int]) -> tuple[int, int]:
    """``evaluate.tile.size`` (a number, [height, width], or null: ``fallback``, the training size)."""
    if size is None:
        return fallback
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])


def describe(hw: tuple[int, int], tile: tuple[int, int], overlap: float) -> str:
    """'N tiles of hxw' for an image of ``hw``: what a log line says."""
    n = tile_count(hw, tile, overlap)
    return f"{n} tile{'s' * (n != 1)} of {tile[0]}x{tile[1]}"


class TiledModel(torch.nn.Module):
    """``model`` run on each image of a batch by :func:`tiled_logits`: normalised float images [N,3,H,W]
    in, logits [N,C,H,W] out, as the model itself would be called. Evaluation and validation at native
    resolution score with it (batches of one image, each of its own size)."""

    def __init__(self, model: TileModel, *, tile: tuple[int, int], overlap: float, blend: str, batch: int):
        super().__init__()
        self.model, self.tile, self.overlap, self.blend, self.batch = model, tile, overlap, blend, batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack(
            [
                tiled_logits(
                    self.model,
                    image,
                    tile=self.tile,
                    overlap=self.overlap,
                    blend=self.blend,
                    batch=self.batch,
                    device=x.device,
                )
                for image in x
            ]
        )


def tile_settings(cfg: dict[str, Any], fallback: tuple[int, int], max_side: int | None = None) -> dict[str, Any]:
    """``evaluate.tile`` resolved for a model file's recipe: size as [height, width] (null: ``fallback``,
    the training crop), overlap, blend and batch as given or by default, and ``max_side`` (``data.max_side``:
    larger images are shrunk to it before tiling, as training saw them) when set. What every caller tiles with."""
    height, width = tile_hw(cfg.get("size"), fallback)
    settings: dict[str, Any] = {
        "size": [height, width],
        "overlap": float(cfg.get("overlap", 0.25)),
        "blend": str(cfg.get("blend", "gaussian")),
        "batch": int(cfg.get("batch", 8)),
    }
    if max_side is not None:
        settings["max_side"] = int(max_side)
    return settings


def tiled_model(model: TileModel, tile: dict[str, Any]) -> TiledModel:
    """:class:`TiledModel` from resolved settings (:func:`tile_settings`, or a recipe's ``tile``)."""
    return TiledModel(
        model,
        tile=(int(tile["size"][0]), int(tile["size"][1])),
        overlap=float(tile["overlap"]),
        blend=str(tile["blend"]),
        batch=int(tile["batch"]),
    )


def tiled_logits_of(model: TileModel, image: Any, tile: dict[str, Any], device: Any = "cpu") -> torch.Tensor:
    """:func:`tiled_logits` with resolved settings (a recipe's ``tile``): predict's, the served model's
    and ONNX predict's one call."""
    return tiled_logits(
        model,
        image,
        tile=(int(tile["size"][0]), int(tile["size"][1])),
        overlap=float(tile["overlap"]),
        blend=str(tile["blend"]),
        batch=int(tile["batch"]),
        device=device,
    )
