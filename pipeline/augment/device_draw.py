"""The host half of device augmentation: a batch's parameters, drawn by the augmenters' own imgaug
stochastic parameters, as imgaug's ``_augment_batch_`` methods draw them (same parameters, same RNG
splits), into a flat list of :class:`Leaf` draws. Containers become
per-sample masks: ``Sometimes`` picks then/else rows, ``SomeOf``/``OneOf`` pick children per row,
random orders are drawn per sample (the CPU path augments one sample per call, so its orders are too)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.augment.device_ops import EDGE, Pixel, Warp, gaussian_kernels, mode_code
from pipeline.augment.device_support import kinds


@dataclass
class Leaf:
    """One augmenter's draw for a batch: where in the chain, which samples, its parameter values."""

    path: str  # e.g. "[3].then_list[0]"
    name: str
    active: np.ndarray  # (n,) bool
    values: dict[str, Any]
    op: Warp | Pixel | None  # a Warp here holds this augmenter's part only


def _geometric(n: int, matrix: np.ndarray, active: np.ndarray) -> Warp:
    """A flip or Rot90: matrices where active, identity elsewhere; no border of its own."""
    matrices = np.tile(np.eye(3), (n, 1, 1))
    matrices[active] = matrix[active] if matrix.ndim == 3 else matrix
    return Warp(matrices, np.full(n, EDGE), np.full(n, EDGE), np.zeros((n, 3)), None, np.zeros(n, bool))


def _pixel(kind: str, values: np.ndarray, active: np.ndarray) -> Pixel:
    """A pixel op on the active rows only (all rows: no indexing)."""
    return Pixel(kind, values) if active.all() else Pixel(kind, values[active], np.flatnonzero(active))


def rot90_matrix(k: int, hw: tuple[int, int]) -> np.ndarray:
    """``np.rot90(image, k, axes=(1, 0))`` (k clockwise quarter turns), then for a non-square image
    the resize back to ``hw`` that Rot90's keep_size does, as one matrix."""
    h, w = hw
    matrix, (hh, ww) = np.eye(3), (h, w)
    for _ in range(int(k) % 4):
        matrix = np.array([[0.0, -1, hh - 1], [1, 0, 0], [0, 0, 1]]) @ matrix  # (x, y) -> (hh-1-y, x)
        hh, ww = ww, hh
    if (hh, ww) != (h, w):  # pixel-centre aligned resize, as cv2.resize
        sx, sy = w / ww, h / hh
        matrix = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]]) @ matrix
    return matrix


class Drawer:
    """Walks a built chain once per batch, appending a :class:`Leaf` per augmenter visit."""

    def __init__(self, n: int, hw: tuple[int, int], channels: int):
        self.n, self.hw, self.c = n, hw, channels
        self.leaves: list[Leaf] = []

    def node(self, aug: Any, active: np.ndarray, rng: Any, path: str) -> None:
        """Draw ``aug`` for the rows in ``active``, from an RNG derived from ``rng`` (one per visit)."""
        getattr(self, "_" + kinds()[type(aug)])(aug, active, rng.derive_rng_(), path)

    def leaf(self, path: str, aug: Any, active: np.ndarray, values: dict[str, Any], op: Warp | Pixel | None) -> None:
        self.leaves.append(Leaf(path, type(aug).__name__, active, values, op))

    # -- containers
    def _children(
        self,
        children: list,
        active: np.ndarray,
        rng: Any,
        path: str,
        random_order: bool,
        chosen: np.ndarray | None = None,
    ) -> None:
        k = len(children)
        orders = (
            np.stack([rng.permutation(k) for _ in range(self.n)])
            if random_order
            else np.tile(np.arange(k), (self.n, 1))
        )
        for position in range(k):
            for i in range(k) if random_order else [position]:
                rows = active & (orders[:, position] == i)
                if chosen is not None:
                    rows &= chosen[:, i]
                self.node(children[i], rows, rng, f"{path}[{i}]")

    def _sequential(self, aug: Any, active: np.ndarray, rng: Any, path: str) -> None:
        self._children(list(aug), active, rng, path, bool(aug.random_order))

    def _sometimes(self, aug: Any, active: np.ndarray, rng: Any, path: str) -> None:
        then = aug.p.draw_samples((self.n,), random_state=rng) == 1
        self.leaf(path, aug, active, {"then": then}, None)
        for branch, rows in (("then_list", active & then), ("else_list", active & ~then)):
            if getattr(aug, branch) is not None:
                self.node(getattr(aug, branch), rows, rng, f"{path}.{branch}")

    def _someof(self, aug: Any, active: np.ndarray, rng: Any, path: str) -> None:
        orders_rng = rng.derive_rng_()
        chosen = aug._get_augmenter_active(self.n, rng)  # imgaug's own (n, children) choice
        self.leaf(path, aug, active, {"chosen": chosen}, None)
        self._children(list(aug), active, orders_rng, path, bool(aug.random_order), chosen)

    def _noop(self, aug: Any, active: np.ndarray, rng: Any, path: str) -> None:
        self.leaf(path, aug, active, {}, None)

    # -- geometric
    def _flip(self, aug: Any, active: np.ndarray, rng: Any, path: str, axis: int) -> None:
        flip = active & (aug.p.draw_samples((self.n,), random_state=rng) >= 0.5)
        h, w = self.hw
        matrix = (
            np.array([[-1.0, 0, w - 1], [0, 1, 0], [0, 0, 1]])
            if axis
            else np.array([[1.0, 0, 0], [0, -1, h - 1], [0, 0, 1]])
        )
        self.leaf(path, aug, flip, {"flip": flip}, _geometric(self.n, matrix, flip))

    def _fliplr(self, aug: Any, active: np.ndarray, rng: Any, path: str) -> None:
        self._flip(aug, active, rng, path, 1)

    def _flipud(self, aug: Any, active: np.ndarray, rng: Any, path: str) -> None:
        self._flip(aug, active, rng, path, 0)

    def _rot90(self, aug: Any, active: np.ndarray, rng: Any, path: str) -> None:
        ks = np.asarray(aug._draw_samples(self.n, rng)) % 4
        matrices = np.stack([rot90_matrix(k, self.hw) for k in ks])
        self.leaf(path, aug, active & (ks != 0), {"k": ks}, _geometric(self.n, matrices, active & (ks != 0)))

    def _affine(self, aug: Any, active: np.ndarray, rng: Any, path: str) -> None:
        samples = aug._draw_samples(self.n, rng)
        shape = (*self.hw, self.c)
        warp = _geometric(self.n, np.eye(3), np.zeros(self.n, bool))
        for i in np.flatnonzero(active):  # imgaug's own matrix for the drawn values
            warp.matrix[i] = samples.to_matrix(i, shape, shape, fit_output=False)[0]
        warp.mode = np.array([mode_code(m) for m in samples.mode])
        warp.mask_mode = np.full(self.n, mode_code(aug._mode_segmentation_maps))
        warp.cval = np.clip(np.trunc(np.asarray(samples.cval, np.float64)[:, :3]), 0, 255)  # uint8 images: int()
        warp.order, warp.bordered = int(samples.order[0]), active.copy()
        values = {
            "scale_x": samples.scale[0],
            "scale_y": samples.scale[1],
            "translate_x": samples.translate[0],
            "translate_y": samples.translate[1],
            "translate_mode": samples.translate_mode,
            "rotate": samples.rotate,
            "shear_x": samples.shear[0],
            "shear_y": samples.shear[1],
            "mode": samples.mode,
            "cval": warp.cval,
            "order": samples.order,
        }
        self.leaf(path, aug, active, values, warp)

    # -- pixel
    def _blur(self, aug: Any, active: np.ndarray, rng: Any, path: str) -> None:
        sigma = aug.sigma.draw_samples((self.n,), random_state=rng)
        kernels = gaussian_kernels(sigma, active, 2 * min(self.hw) - 1, aug.eps)
        self.leaf(path, aug, active, {"sigma": sigma}, _pixel("blur", kernels, active))

    def _contrast(self, aug: Any, active: np.ndarray, rng: Any, path: str, kind: str) -> None:
        rss = rng.duplicate(1 + self.n)  # as imgaug's _ContrastFuncWrapper draws
        per_channel = aug.per_channel.draw_samples((self.n,), random_state=rss[0])
        values = np.ones((self.n, self.c))
        for i in range(self.n):
            drawn = aug.params1d[0].draw_samples((self.c if per_channel[i] > 0.5 else 1,), random_state=rss[1 + i])
            values[i] = drawn if active[i] else 1.0
        self.leaf(path, aug, active, {kind: values}, _pixel(kind, values, active))

    def _linear(self, aug: Any, active: np.ndarray, rng: Any, path: str) -> None:
        self._contrast(aug, active, rng, path, "linear")

    def _gamma(self, aug: Any, active: np.ndarray, rng: Any, path: str) -> None:
        self._contrast(aug, active, rng, path, "gamma")

    def _arithmetic(self, aug: Any, active: np.ndarray, rng: Any, path: str, kind: str) -> None:
        rss = rng.duplicate(2)  # as imgaug's Add / Multiply draw
        per_channel = aug.per_channel.draw_samples((self.n,), random_state=rss[0])
        param = aug.value if kind == "add" else aug.mul
        drawn = np.asarray(param.draw_samples((self.n, self.c), random_state=rss[1]), np.float64)
        values = np.where((per_channel > 0.5)[:, None], drawn, drawn[:, :1])
        if kind == "add":
            values = np.round(values)  # imgaug adds whole gray levels to uint8 images
        values[~active] = 0.0 if kind == "add" else 1.0
        self.leaf(path, aug, active, {kind: values}, _pixel(kind, values, active))

    def _add(self, aug: Any, active: np.ndarray, rng: Any, path: str) -> None:
        self._arithmetic(aug, active, rng, path, "add")

    def _multiply(self, aug: Any, active: np.ndarray, rng: Any, path: str) -> None:
        self._arithmetic(aug, active, rng, path, "multiply")
