"""The torch half of device augmentation: operations whose parameters were drawn on the host
(:mod:`pipeline.augment.device`), applied to whole batches where the tensors live.

Two kinds: a :class:`Warp` (every flip, Rot90 and Affine of a run of geometric augmenters folded into
one matrix per sample: one ``affine_grid`` and one ``grid_sample`` for the images, one more
``grid_sample`` for the masks) and a :class:`Pixel` operation (blur kernels or per-channel values, on
the samples it applies to). Their parameters travel to the device as one packed float32 buffer
(pinned, non-blocking on CUDA), and nothing here reads a device value back: no host syncs.

Conventions are imgaug's (OpenCV's): pixel centres at integer coordinates, images 0-255, a warp's
matrix maps input to output coordinates, border modes as ``cv2.warpAffine`` fills them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# Border modes: imgaug's names; the matching OpenCV codes imgaug may keep for segmentation maps.
CONSTANT, EDGE, REFLECT, SYMMETRIC = 0, 1, 2, 3
MODE_CODES = {"constant": CONSTANT, "edge": EDGE, "reflect": REFLECT, "symmetric": SYMMETRIC}
CV2_MODE_CODES = {0: CONSTANT, 1: EDGE, 4: REFLECT, 2: SYMMETRIC}  # BORDER_CONSTANT, _REPLICATE, _REFLECT_101, _REFLECT


def mode_code(mode: object) -> int | None:
    """imgaug's mode name (or the cv2 border code it keeps for masks) -> ours; None: no device version."""
    if isinstance(mode, (int, np.integer)) and not isinstance(mode, bool):
        return CV2_MODE_CODES.get(int(mode))
    return MODE_CODES.get(str(mode))


@dataclass
class Warp:
    """One resampling of the batch: ``matrix[i]`` maps sample i's input pixel coordinates to its output
    ones; border ``mode`` / ``mask_mode`` codes and the images' ``cval`` (0-255) per sample."""

    matrix: np.ndarray  # (n, 3, 3) float64
    mode: np.ndarray  # (n,) codes, images
    mask_mode: np.ndarray  # (n,) codes, masks (their fill value is class 0)
    cval: np.ndarray  # (n, 3) float
    order: int | None = None  # 0 nearest, 1 bilinear (None: no Affine in it yet; bilinear)
    bordered: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # samples with an Affine in it

    @classmethod
    def identity(cls, n: int) -> Warp:
        return cls(
            np.tile(np.eye(3), (n, 1, 1)), np.full(n, EDGE), np.full(n, EDGE), np.zeros((n, 3)), None, np.zeros(n, bool)
        )

    def is_identity(self) -> bool:
        return bool(np.allclose(self.matrix, np.eye(3), atol=1e-9))


@dataclass
class Pixel:
    """A pixel operation on the samples ``rows`` (None: all); ``values`` holds one row per such sample:
    (rows, C) per-channel values, or (rows, K) blur kernels."""

    kind: str  # "blur" | "linear" | "gamma" | "add" | "multiply"
    values: np.ndarray
    rows: np.ndarray | None = None


# One border mode for a whole batch: grid_sample's own padding does it (reflection about pixel centres
# with align_corners=True is reflect-101, about pixel edges with align_corners=False is symmetric).
NATIVE_PADDING = {
    CONSTANT: ("zeros", True),
    EDGE: ("border", True),
    REFLECT: ("reflection", True),
    SYMMETRIC: ("reflection", False),
}


def _normaliser(hw: tuple[int, int], align_corners: bool) -> np.ndarray:
    """Pixel coordinates -> grid_sample's [-1, 1] (pixel centres at integers)."""
    h, w = hw
    if align_corners:
        return np.array([[2 / max(w - 1, 1), 0, -1], [0, 2 / max(h - 1, 1), -1], [0, 0, 1]])
    return np.array([[2 / w, 0, 1 / w - 1], [0, 2 / h, 1 / h - 1], [0, 0, 1]])


def _sampling(matrix: np.ndarray, modes: np.ndarray, hw: tuple[int, int]) -> tuple[np.ndarray, str | None, bool]:
    """(affine_grid theta, grid_sample padding or None, align_corners) for warping by ``matrix``: one
    mode for all samples maps output to normalised input coordinates for grid_sample's own padding;
    mixed modes map to input *pixel* coordinates, which :func:`_border` remaps per sample."""
    used = set(modes.tolist())
    padding, align = NATIVE_PADDING[used.pop()] if len(used) == 1 else (None, True)
    to_input = np.linalg.inv(matrix) @ np.linalg.inv(_normaliser(hw, align))
    theta = to_input if padding is None else _normaliser(hw, align) @ to_input
    return theta[:, :2, :], padding, align


def _channels(values: np.ndarray, c: int) -> np.ndarray:
    """(n, 3) imgaug cvals for c channels (more than 3: the first for all, as imgaug does)."""
    return values[:, :c] if c <= values.shape[1] else np.repeat(values[:, :1], c, axis=1)


@dataclass
class _Sampling:
    """How one warp resamples one kind of array (images, or masks)."""

    theta: torch.Tensor
    modes: torch.Tensor  # per-sample codes, used when padding is None
    padding: str | None
    align_corners: bool


def _plan(ops: list[Warp | Pixel], hw: tuple[int, int], c: int, masks: bool, device: torch.device) -> list[Any]:
    """Every op's device parameters in one host->device copy (pinned, non-blocking on CUDA), then per
    op: a Warp's (image sampling, mask sampling or None, cval or None) or a Pixel's values."""
    arrays: list[np.ndarray] = []
    layout: list[Any] = []
    for op in ops:
        if isinstance(op, Pixel):
            layout.append((len(arrays), None if op.rows is None else len(arrays) + 1))
            arrays += [op.values] if op.rows is None else [op.values, op.rows]
            continue
        entry: list[Any] = []  # (offset, padding, align) per sampling, then the cval offset or None
        for modes in (op.mode, op.mask_mode) if masks else (op.mode,):
            theta, padding, align = _sampling(op.matrix, modes, hw)
            entry.append((len(arrays), padding, align))
            arrays += [theta, modes]
        cval = _channels(op.cval, c)
        fill = bool(((op.mode == CONSTANT)[:, None] & (cval != 0)).any())  # else zeros padding is the fill
        entry.append(len(arrays) if fill else None)
        arrays.append(cval)
        layout.append(entry)
    flat = np.concatenate([np.asarray(a, np.float32).ravel() for a in arrays]) if arrays else np.zeros(0, np.float32)
    buffer = torch.from_numpy(flat)
    buffer = buffer.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else buffer.to(device)
    views, start = [], 0
    for a in arrays:
        views.append(buffer[start : start + a.size].view(a.shape))
        start += a.size
    out: list[Any] = []
    for entry in layout:
        if isinstance(entry, tuple):  # a Pixel op: values, and the rows it applies to
            out.append((views[entry[0]], None if entry[1] is None else views[entry[1]].long()))
            continue
        samplings = [_Sampling(views[i], views[i + 1], padding, align) for i, padding, align in entry[:-1]]
        out.append((samplings[0], samplings[1] if masks else None, views[entry[-1]] if entry[-1] is not None else None))
    return out


def apply_ops(
    images: torch.Tensor, masks: torch.Tensor | None, ops: list[Warp | Pixel]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``images`` [N,C,H,W] (uint8 or float, 0-255) and ``masks`` [N,H,W] (class indices) through
    ``ops``, in order: float32 images (0-255) and masks of their own dtype, on their device."""
    x = images.float()
    _, c, h, w = x.shape
    for op, params in zip(ops, _plan(ops, (h, w), c, masks is not None, x.device)):
        if isinstance(op, Warp):
            image_sampling, mask_sampling, cval = params
            x, grid = _warp_images(x, image_sampling, cval, op.order)
            if masks is not None:  # the images' grid serves when the masks sample alike
                same = (mask_sampling.padding, mask_sampling.align_corners) == (
                    image_sampling.padding,
                    image_sampling.align_corners,
                ) and mask_sampling.padding is not None
                warped = _sample(masks[:, None].float(), mask_sampling, "nearest", grid if same else None)[0]
                masks = warped[:, 0].round().to(masks.dtype)
        else:
            values, rows = params
            x = (
                _pixel(x, op.kind, values)
                if rows is None
                else x.index_copy(0, rows, _pixel(x.index_select(0, rows), op.kind, values))
            )
    return x, masks


def _border(coords: torch.Tensor, size: int, modes: torch.Tensor) -> torch.Tensor:
    """Map pixel coordinates outside [0, size-1] back inside as each sample's border mode says
    (constant: left outside for grid_sample's zeros). For bilinear sampling, reflecting the coordinate
    equals reflecting the neighbouring pixels (cv2's way)."""
    last = max(size - 1, 1)
    edge = coords.clamp(0, size - 1)
    reflect = last - (torch.remainder(coords, 2 * last) - last).abs()  # about pixel centres 0, W-1
    symmetric = (size - (torch.remainder(coords + 0.5, 2 * size) - size).abs() - 0.5).clamp(0, size - 1)
    return torch.where(
        modes == CONSTANT, coords, torch.where(modes == EDGE, edge, torch.where(modes == REFLECT, reflect, symmetric))
    )


def _sample(
    src: torch.Tensor, sampling: _Sampling, interpolation: str, grid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``src`` resampled, and the (native-padding) grid it used, which another array may reuse."""
    n, _, h, w = src.shape
    if grid is None:
        grid = F.affine_grid(sampling.theta, [n, 1, h, w], align_corners=sampling.align_corners)
    padding = sampling.padding
    if padding is None:  # mixed border modes: remap pixel coordinates per sample, then normalise
        modes = sampling.modes.view(n, 1, 1)
        gx, gy = grid.unbind(-1)
        grid = torch.stack(
            (_border(gx, w, modes) * (2 / max(w - 1, 1)) - 1, _border(gy, h, modes) * (2 / max(h - 1, 1)) - 1), dim=-1
        )
        padding = "zeros"
    out = F.grid_sample(src, grid, mode=interpolation, padding_mode=padding, align_corners=sampling.align_corners)
    return out, grid


def _warp_images(
    x: torch.Tensor, sampling: _Sampling, cval: torch.Tensor | None, order: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample the images; where a constant border lets the outside in, blend in each sample's cval,
    as cv2.warpAffine does (a channel of ones says how much of each pixel came from inside)."""
    n, c, h, w = x.shape
    interpolation = "nearest" if order == 0 else "bilinear"
    if cval is None:
        return _sample(x, sampling, interpolation)
    out, grid = _sample(torch.cat([x, x.new_ones(n, 1, h, w)], dim=1), sampling, interpolation)
    return out[:, :c] + cval.view(n, c, 1, 1) * (1 - out[:, c:]), grid


def _blur(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Separable per-sample Gaussian blur (reflect-101 border, as cv2.GaussianBlur): one grouped
    convolution per axis over every sample and channel."""
    n, c, h, w = x.shape
    k = kernels.shape[1]
    weight = kernels.repeat_interleave(c, dim=0)
    y = F.pad(x.reshape(1, n * c, h, w), (k // 2,) * 4, mode="reflect")
    y = F.conv2d(y, weight.view(n * c, 1, k, 1), groups=n * c)
    y = F.conv2d(y, weight.view(n * c, 1, 1, k), groups=n * c)
    return y.view(n, c, h, w)


def _pixel(x: torch.Tensor, kind: str, values: torch.Tensor) -> torch.Tensor:
    if kind == "blur":
        return _blur(x, values)
    v = values.view(values.shape[0], values.shape[1], 1, 1)
    if kind == "linear":
        y = 127 + v * (x - 127)  # imgaug's centre for uint8 is int(127.5)
    elif kind == "gamma":
        y = 255 * (x / 255).clamp(0, 1).pow(v)
    elif kind == "add":
        y = x + v
    elif kind == "multiply":
        y = x * v
    else:
        raise ValueError(f"unknown pixel operation {kind!r}")
    return y.clamp(0, 255)


def gaussian_kernels(sigma: np.ndarray, active: np.ndarray, max_size: int, eps: float = 1e-3) -> np.ndarray:
    """(n, K) kernels as imgaug's cv2 blur makes them: size from sigma (:func:`blur_ksize`), weights
    ``exp(-x^2 / 2 sigma^2)`` normalised; a delta where a sample is inactive or sigma < eps. K is the
    largest size, capped at ``max_size`` (reflect padding needs fewer pixels than the image has)."""
    sizes = np.array([blur_ksize(s) if a and s >= eps else 1 for s, a in zip(sigma, active)])
    k = int(min(sizes.max(initial=1), max_size))
    k += 1 - k % 2
    kernels = np.zeros((len(sigma), k))
    for i, (s, size) in enumerate(zip(sigma, np.minimum(sizes, k))):
        x = np.arange(size) - (size - 1) / 2
        weights = np.exp(-(x**2) / (2 * s * s)) if size > 1 else np.ones(1)
        kernels[i, (k - size) // 2 : (k + size) // 2] = weights / weights.sum()
    return kernels


def blur_ksize(sigma: float) -> int:
    """imgaug's kernel size for a sigma (``imgaug.augmenters.blur._compute_gaussian_blur_ksize``)."""
    size = 3.3 * sigma if sigma < 3.0 else 2.9 * sigma if sigma < 5.0 else 2.6 * sigma
    size = int(max(size, 5))
    return size + 1 if size % 2 == 0 else size
