"""The offline augmentation cache: K augmented copies of every training image, in a few shard files.

For when the CPUs cannot augment as fast as the GPU trains: the augment stage materialises the
copies once (DVC caches them), and training reads copy ``epoch % K`` instead of augmenting online.

The cache directory is always written, so DVC always has an output to track: ``index.json`` says
``{"enabled": false}``, or describes the copies in shards of the format :mod:`pipeline.data.shards`
defines (memory-mapped when read).

Sample ``s = copy * N + i`` is copy ``copy`` of training image ``i``: copy-major, so one epoch reads
one contiguous ``1/K`` of the cache.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.atomic import atomic_dir, write_json
from pipeline.config.errors import PipelineError
from pipeline.data import shards as shard_files
from pipeline.data.dataset import Samples, target_tensor
from pipeline.data.shards import INDEX, allocate_shards, locate, target_layout
from pipeline.seeding import seed_everything

FORMAT_VERSION = 1
Transform = Callable[[np.ndarray, "np.ndarray | None"], "tuple[np.ndarray, np.ndarray | None]"]


def write_disabled(cache_dir: str | Path) -> dict[str, Any]:
    """An empty cache whose index says so (``augment.offline.enabled: false``): DVC needs the output."""
    return shard_files.write_disabled(
        cache_dir, reason="augment.offline.enabled is false: training augments online", format_version=FORMAT_VERSION
    )


def write_cache(
    cache_dir: str | Path,
    base: Samples,
    transform: Transform,
    *,
    task: str,
    copies: int,
    shard_size: int,
    seed: int,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``copies`` augmented versions of every sample of ``base`` (a dataset returning
    ``(uint8 [3,H,W], target)`` without augmentation) into shards; return the index.

    Repeatable: the global RNGs are seeded with ``seed`` and the transform rebuilt before the first
    sample, and samples are produced in a fixed order."""
    n = len(base)
    if n == 0:
        raise PipelineError("the training split is empty: nothing to put in the offline cache")
    seed_everything(seed)
    if hasattr(transform, "reset"):
        transform.reset()  # augmenters holding their own RNG (Rain, Snowflakes) follow the seed too
    segmentation = task == "segmentation"
    total = n * copies
    classes = int(base[0][1].shape[0]) if task == "multilabel" else 1  # a multi-hot target's length
    with atomic_dir(cache_dir) as tmp:
        shards: list[dict[str, Any]] = []
        arrays: list[tuple[np.memmap, np.memmap]] = []
        for i in range(n):
            image, target_value = base[i]
            image_hwc = image.permute(1, 2, 0).numpy()
            mask = target_value.numpy() if segmentation else None
            for copy in range(copies):
                out_image, out_mask = transform(image_hwc, mask)
                if not arrays:
                    first_shape = out_image.shape
                    hw = out_image.shape[:2]
                    arrays = allocate_shards(tmp, shards, hw, total, shard_size, target_layout(task, hw, classes))
                if out_image.shape != first_shape:
                    raise PipelineError(
                        f"augment.train produced images of shapes {first_shape} and {out_image.shape}: "
                        "the offline cache needs one fixed output size (keep_size: true, or a fixed-size crop)"
                    )
                sample = copy * n + i
                shard = sample // shard_size
                images, targets = arrays[shard]
                images[sample - shard * shard_size] = np.transpose(out_image, (2, 0, 1))
                targets[sample - shard * shard_size] = (
                    out_mask if segmentation else target_value.numpy() if task == "multilabel" else int(target_value)
                )
        for images, targets in arrays:
            images.flush()
            targets.flush()
        del arrays, images, targets
        index = {
            "enabled": True,
            "format": FORMAT_VERSION,
            "task": task,
            "copies": copies,
            "samples": n,
            "seed": seed,
            "image_shape": [3, *first_shape[:2]],
            "shards": shards,
            **(meta or {}),
        }
        write_json(tmp / INDEX, index)
    return index


def read_index(cache_dir: str | Path) -> dict[str, Any]:
    """The offline cache's ``index.json``."""
    return shard_files.read_index(cache_dir, stage="augment")


class OfflineCacheDataset(torch.utils.data.Dataset):
    """The cache as a dataset: item ``i`` of copy ``copy`` is ``(uint8 tensor [3,H,W], target)``,
    exactly what ``ManifestDataset`` returns. :meth:`set_epoch` picks copy ``epoch % K``.

    Shards are opened memory-mapped, lazily, in each process that reads (never pickled to workers)."""

    def __init__(self, cache_dir: str | Path, *, copy: int = 0):
        self.cache_dir = Path(cache_dir)
        self.index = read_index(self.cache_dir)
        if not self.index.get("enabled"):
            raise PipelineError(
                f"{self.cache_dir} holds no offline copies (augment.offline.enabled was "
                "false when the augment stage ran); enable it and run dvc repro"
            )
        if self.index.get("format") != FORMAT_VERSION:
            raise PipelineError(
                f"{self.cache_dir}: cache format {self.index.get('format')} is not "
                f"{FORMAT_VERSION}; re-run the augment stage"
            )
        self.copies = int(self.index["copies"])
        self.samples = int(self.index["samples"])
        self.task = str(self.index["task"])
        self._starts = [s["start"] for s in self.index["shards"]]
        self._arrays: list[tuple[np.ndarray, np.ndarray]] | None = None
        self.copy = 0
        self.set_copy(copy)

    def set_copy(self, copy: int) -> None:
        if not 0 <= copy < self.copies:
            raise PipelineError(f"copy {copy} is outside the cache's {self.copies} copies")
        self.copy = copy

    def set_epoch(self, epoch: int) -> None:
        """Read copy ``epoch % K`` (call before creating the epoch's DataLoader iterator)."""
        self.set_copy(epoch % self.copies)

    def __len__(self) -> int:
        return self.samples

    def _open(self) -> list[tuple[np.ndarray, np.ndarray]]:
        if self._arrays is None:
            try:
                self._arrays = [
                    (
                        np.load(self.cache_dir / s["images"], mmap_mode="r"),
                        np.load(self.cache_dir / s["targets"], mmap_mode="r"),
                    )
                    for s in self.index["shards"]
                ]
            except (OSError, ValueError) as exc:
                raise PipelineError(
                    f"{self.cache_dir}: cannot read a shard ({exc}); re-run the augment stage"
                ) from None
        return self._arrays

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -self.samples <= i < self.samples:
            raise IndexError(f"sample {i} out of range for {self.samples} samples")
        sample = self.copy * self.samples + (i % self.samples)
        shard, row = locate(self._starts, sample)
        images, targets = self._open()[shard]
        image = torch.from_numpy(np.array(images[row]))
        return image, target_tensor(self.task, targets[row])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": None}
