"""The declared augmentation as the ``(image, mask) -> (image, mask)`` callable a dataset applies."""

from __future__ import annotations

import copy
import os
from typing import Any

import numpy as np

from pipeline.augment.augmenters import apply_augmenter, build_augmenter


class AugmentTransform:
    """``(image HxWx3 uint8, mask HxW uint8 | None) -> (image, mask)``: the declared pipeline.

    Picklable: it pickles the spec, and each process (each DataLoader worker, forked or spawned)
    builds its own augmenters on first use, after :func:`pipeline.seeding.worker_init_fn` reseeded
    that process's imgaug RNG; so even augmenters that keep a private RNG (Rain, Snowflakes) follow
    the seed. Masks go through ``SegmentationMapsOnImage``: geometric augmenters move them with the
    image (nearest neighbour), pixel-level ones leave them alone."""

    def __init__(self, spec: list, *, task: str, random_order: bool = False):
        self.spec = copy.deepcopy(list(spec))
        self.task = task
        self.random_order = random_order
        self._built: tuple[int, Any] | None = None
        if self.spec:
            self.augmenter  # noqa: B018 - build now so a bad spec fails here, not in a worker

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec, "task": self.task, "random_order": self.random_order}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._built = None

    def reset(self) -> None:
        """Rebuild the augmenters on next use (after seeding, so private RNGs follow the seed)."""
        self._built = None

    @property
    def augmenter(self) -> Any:
        if self._built is None or self._built[0] != os.getpid():
            self._built = (os.getpid(), build_augmenter(self.spec, task=self.task, random_order=self.random_order))
        return self._built[1]

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        if not self.spec:
            return image, mask
        return apply_augmenter(self.augmenter, image, mask)

    def __repr__(self) -> str:
        return f"AugmentTransform({len(self.spec)} augmenters, task={self.task!r})"


def build_transform(spec: list, *, task: str, random_order: bool = False) -> AugmentTransform:
    """The picklable ``(image, mask) -> (image, mask)`` callable ManifestDataset applies; empty spec:
    identity."""
    return AugmentTransform(spec, task=task, random_order=random_order)
