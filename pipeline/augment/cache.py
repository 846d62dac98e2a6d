"""The offline augmentation cache: K augmented copies of every training image, in a few shard files.

For when the CPUs cannot augment as fast as the GPU trains: the augment stage materialises the
copies once (DVC caches them), and training reads copy ``epoch % K`` instead of augmenting online.

Layout of the cache directory (always written, so DVC always has an output to track)::

    index.json                  {"enabled": false} or the description below
    shard-00000.images.npy      uint8 [n, 3, H, W]   (memory-mapped when read)
    shard-00000.targets.npy     uint8 [n, H, W] (segmentation) or int64 [n] (classification)

Sample ``s = copy * N + i`` is copy ``copy`` of training image ``i``: copy-major, so one epoch reads
one contiguous ``1/K`` of the cache.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.atomic import atomic_dir, write_json
from pipeline.config.errors import PipelineError
from pipeline.seeding import seed_everything

FORMAT_VERSION = 1
INDEX = "index.json"
Transform = Callable[[np.ndarray, "np.ndarray | None"], "tuple[np.ndarray, np.ndarray | None]"]


def write_disabled(
    cache_dir: str | Path,
    *,
    reason: str = "augment.offline.enabled is false: training augments online",
    format_version: int = FORMAT_VERSION,
) -> dict[str, Any]:
    """An empty cache whose index says so and why (``augment.offline.enabled: false``; the decoded
    cache's ``data.cache: none`` too): DVC needs the stage's output to exist."""
    index = {"enabled": False, "format": format_version, "reason": reason}
    with atomic_dir(cache_dir) as tmp:
        write_json(tmp / INDEX, index)
    return index


def write_cache(
    cache_dir: str | Path,
    base: Sequence[tuple[torch.Tensor, torch.Tensor]],
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
    with atomic_dir(cache_dir) as tmp:
        shards: list[dict[str, Any]] = []
        arrays: list[tuple[np.ndarray, np.ndarray]] = []
        for i in range(n):
            image, target = base[i]
            image_hwc = image.permute(1, 2, 0).numpy()
            mask = target.numpy() if segmentation else None
            for copy in range(copies):
                out_image, out_mask = transform(image_hwc, mask)
                if not arrays:
                    first_shape = out_image.shape
                    arrays = allocate_shards(tmp, shards, out_image, total, shard_size, segmentation)
                if out_image.shape != first_shape:
                    raise PipelineError(
                        f"augment.train produced images of shapes {first_shape} and {out_image.shape}: "
                        "the offline cache needs one fixed output size (keep_size: true, or a fixed-size crop)"
                    )
                sample = copy * n + i
                shard = sample // shard_size
                images, targets = arrays[shard]
                images[sample - shard * shard_size] = np.transpose(out_image, (2, 0, 1))
                targets[sample - shard * shard_size] = out_mask if segmentation else int(target)
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


def allocate_shards(
    folder: Path, shards: list[dict[str, Any]], first_image: np.ndarray, total: int, shard_size: int, segmentation: bool
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Create every shard's memory-mapped .npy files, sized by the first augmented image."""
    height, width = first_image.shape[:2]
    arrays = []
    for number, start in enumerate(range(0, total, shard_size)):
        count = min(shard_size, total - start)
        names = {"images": f"shard-{number:05d}.images.npy", "targets": f"shard-{number:05d}.targets.npy"}
        images = np.lib.format.open_memmap(
            folder / names["images"], mode="w+", dtype=np.uint8, shape=(count, 3, height, width)
        )
        target_shape = (count, height, width) if segmentation else (count,)
        targets = np.lib.format.open_memmap(
            folder / names["targets"], mode="w+", dtype=np.uint8 if segmentation else np.int64, shape=target_shape
        )
        arrays.append((images, targets))
        shards.append({**names, "start": start, "count": count})
    return arrays


def read_index(cache_dir: str | Path, *, stage: str = "augment") -> dict[str, Any]:
    """A cache folder's ``index.json`` (this offline cache's, or the decode stage's: ``stage`` names the
    stage that writes it, for the message when it is missing or unreadable)."""
    path = Path(cache_dir) / INDEX
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path} not found: run the {stage} stage first (dvc repro {stage})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PipelineError(
            f"{path} is not a readable index ({exc}); re-run the {stage} stage (dvc repro {stage})"
        ) from None


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
        self.segmentation = self.index["task"] == "segmentation"
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
        shard = bisect.bisect_right(self._starts, sample) - 1
        images, targets = self._open()[shard]
        row = sample - self._starts[shard]
        image = torch.from_numpy(np.array(images[row]))
        target = (
            torch.from_numpy(np.array(targets[row]))
            if self.segmentation
            else torch.tensor(int(targets[row]), dtype=torch.int64)
        )
        return image, target

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": None}
