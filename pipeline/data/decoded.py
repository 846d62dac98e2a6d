"""The decoded cache: every train and val image (and mask) decoded and resized to ``data.image_size``
once, in memory-mapped uint8 shards: each epoch reads a sample in microseconds instead of decoding and
resizing a file (~5 ms at 224 px). The decode stage writes it (``outputs/decode``, cached by DVC) with
``ManifestDataset.load``, so :class:`DecodedDataset` yields exactly what :class:`ManifestDataset` does.
The test split is not decoded: evaluation reads each test image once, a cache would only cost disk.

Each split's folder holds shards in the format :mod:`pipeline.data.shards` defines (the offline
augmentation cache's too): ``shard-NNNNN.images.npy`` uint8 [n,3,H,W], ``shard-NNNNN.targets.npy``
uint8 masks [n,H,W], int64 labels [n] or uint8 multi-hot labels [n,C]. ``index.json``: ``{"enabled": false}`` (``data.cache: none``), or the format, task,
image_size, num_classes, manifest_fingerprint (the data files), manifest_digest (what a re-split
changes), bytes, and per split its count, folder, shapes, dtypes and shards, each with its files'
byte sizes and sha256. What the reader checks before it trusts them: :mod:`pipeline.data.decoded_index`.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.atomic import atomic_dir, write_json
from pipeline.config.errors import PipelineError
from pipeline.data.dataset import BatchTransform, ManifestDataset, Transform, image_hw, stored_target, target_tensor
from pipeline.data.decoded_index import (
    FORMAT_VERSION,
    INDEX,
    REBUILD,
    SPLITS,
    check_index,
    manifest_digest,
    read_index,
    record_shard,
    split_layout,
    verify_shards,
)
from pipeline.data.manifest import Manifest
from pipeline.data.shards import allocate_shards, locate, target_layout
from pipeline.data.shards import write_disabled as write_no_cache
from pipeline.processes import dying_with_parent

SHARD_BYTES = 512 << 20  # samples per shard: as many as fit in this many bytes
PARALLEL_FROM = 256  # samples; below this a process pool costs more than it saves
CHUNK = 32  # samples per pool job
VERIFY_NOTE_SECONDS = 2.0  # a shard check taking longer is said on stderr


def human_bytes(n: float) -> str:
    """``n`` bytes for people: 23.0 KB, 1.2 GB (powers of 1000, as disks are sold)."""
    units = ["B", "KB", "MB", "GB", "TB"]
    while n >= 1000 and len(units) > 1:
        n, units = n / 1000, units[1:]
    return f"{n:.0f} B" if units[0] == "B" else f"{n:.1f} {units[0]}"


def sample_bytes(task: str, hw: tuple[int, int], num_classes: int = 1) -> int:
    """Bytes one cached sample takes: the image, and its mask (uint8), label (int64) or multi-hot
    labels (uint8 per class)."""
    height, width = hw
    shape, dtype = target_layout(task, hw, num_classes)
    return 3 * height * width + int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def cache_bytes(manifest: Manifest, image_size: int | list[int] | tuple[int, int]) -> int:
    """Bytes the cache of ``manifest`` at ``image_size`` takes on disk (headers aside): N*H*W*3 for the
    images, plus N*H*W for segmentation masks."""
    return sample_bytes(manifest.task, image_hw(image_size), manifest.num_classes) * sum(
        len(manifest.splits.get(s, [])) for s in SPLITS
    )


def write_disabled(cache_dir: str | Path) -> dict[str, Any]:
    """A cache folder whose index says there is none (``data.cache: none``): DVC needs its output."""
    return write_no_cache(
        cache_dir, reason="data.cache is none: training decodes every image each epoch", format_version=FORMAT_VERSION
    )


def write_decoded(
    cache_dir: str | Path,
    manifest: Manifest,
    *,
    root: str | Path,
    image_size: int | list[int] | tuple[int, int],
    workers: int | None = None,
    resize: str = "fit",
    max_side: int | None = None,
) -> dict[str, Any]:
    """Decode the train and val splits of ``manifest`` (files under ``root``) into ``cache_dir``; return
    the index. All or nothing: a file that cannot be decoded leaves the old cache (or none). ``workers``:
    processes decoding at once (None: one per CPU from :data:`PARALLEL_FROM` samples, else this one);
    each row depends on its sample alone, so the result does not depend on them."""
    cache_dir = Path(cache_dir)
    if resize == "none":
        return _write_native(cache_dir, manifest, root=root, image_size=image_size, workers=workers, max_side=max_side)
    height, width = image_hw(image_size)
    target = target_layout(manifest.task, (height, width), manifest.num_classes)
    sets = {s: ManifestDataset(manifest, s, root=root, image_size=(height, width)) for s in SPLITS}
    needed = cache_bytes(manifest, (height, width))
    _check_space(cache_dir, needed)
    shard_size = max(1, SHARD_BYTES // sample_bytes(manifest.task, (height, width), manifest.num_classes))
    with atomic_dir(cache_dir) as tmp:
        splits: dict[str, Any] = {}
        for name, dataset in sets.items():
            (tmp / name).mkdir()
            shards: list[dict[str, Any]] = []
            arrays = allocate_shards(tmp / name, shards, (height, width), len(dataset), shard_size, target)
            for array in (a for pair in arrays for a in pair):
                array.flush()  # headers and sizes on disk before any worker opens them
            del arrays
            splits[name] = {
                "count": len(dataset),
                "folder": name,
                "shards": shards,
                "image_shape": [3, height, width],
                "image_dtype": "uint8",
                "target_shape": target[0],
                "target_dtype": target[1],
            }
        writer = _Writer(sets, tmp, {n: s["shards"] for n, s in splits.items()}, shard_size)
        jobs = [
            (name, start, min(start + CHUNK, len(d))) for name, d in sets.items() for start in range(0, len(d), CHUNK)
        ]
        _run(writer, jobs, _workers(workers, sum(len(d) for d in sets.values()), len(jobs)))
        for name, split in splits.items():
            for shard in split["shards"]:
                record_shard(tmp / name, shard)
        index = {
            "enabled": True,
            "format": FORMAT_VERSION,
            "task": manifest.task,
            "resize": "fit",
            "image_size": [height, width],
            "num_classes": manifest.num_classes,
            "manifest_fingerprint": manifest.fingerprint,
            "manifest_digest": manifest_digest(manifest),
            "bytes": needed,
            "splits": splits,
        }
        write_json(tmp / INDEX, index)
    return index


def _write_native(
    cache_dir: Path,
    manifest: Manifest,
    *,
    root: str | Path,
    image_size: int | list[int] | tuple[int, int],
    workers: int | None,
    max_side: int | None = None,
) -> dict[str, Any]:
    """The cache at native resolution (shrunk to ``max_side`` where larger, as training reads it) (``data.resize: none``): each job of :data:`CHUNK` samples writes
    one shard, its images' [3,h,w] planes and its masks' [h,w] one after another in two flat uint8
    ``.npy`` files; the index lists every sample's (h, w), from which the offsets follow. Sizes are only
    known once decoded, so no disk-space check is made beforehand."""
    if manifest.task != "segmentation":
        raise PipelineError("data.resize none (native resolution) is for segmentation; use fit")
    sets = {
        s: ManifestDataset(manifest, s, root=root, image_size=image_size, resize="none", max_side=max_side)
        for s in SPLITS
    }
    with atomic_dir(cache_dir) as tmp:
        for name in sets:
            (tmp / name).mkdir()
        jobs = [
            (name, start, min(start + CHUNK, len(d))) for name, d in sets.items() for start in range(0, len(d), CHUNK)
        ]
        results = _run(_NativeWriter(sets, tmp), jobs, _workers(workers, sum(len(d) for d in sets.values()), len(jobs)))
        splits: dict[str, Any] = {
            name: {
                "count": len(d),
                "folder": name,
                "layout": "native",
                "shards": [],
                "image_shape": None,
                "image_dtype": "uint8",
                "target_shape": None,
                "target_dtype": "uint8",
            }
            for name, d in sets.items()
        }
        total = 0
        for (name, start, stop), shapes in zip(jobs, results):
            shard = {**_native_names(start), "start": start, "count": stop - start, "shapes": shapes}
            record_shard(tmp / name, shard)
            total += sum(shard["bytes"].values())
            splits[name]["shards"].append(shard)
        index = {
            "enabled": True,
            "format": FORMAT_VERSION,
            "task": manifest.task,
            "resize": "none",
            "image_size": None,
            "max_side": max_side,
            "num_classes": manifest.num_classes,
            "manifest_fingerprint": manifest.fingerprint,
            "manifest_digest": manifest_digest(manifest),
            "bytes": total,
            "splits": splits,
        }
        write_json(tmp / INDEX, index)
    return index


def _native_names(start: int) -> dict[str, str]:
    number = start // CHUNK
    return {"images": f"shard-{number:05d}.images.npy", "targets": f"shard-{number:05d}.targets.npy"}


@dataclass
class _NativeWriter:
    """Decodes one job's samples at native size into one flat shard; returns their [h, w]."""

    sets: dict[str, ManifestDataset]
    folder: Path

    def __call__(self, job: tuple[str, int, int]) -> list[list[int]]:
        name, start, stop = job
        loaded = [self.sets[name].load(i) for i in range(start, stop)]
        names = _native_names(start)
        images = np.concatenate([image.transpose(2, 0, 1).reshape(-1) for image, _ in loaded])
        masks = np.concatenate([np.asarray(mask).reshape(-1) for _, mask in loaded])
        np.save(self.folder / name / names["images"], images, allow_pickle=False)
        np.save(self.folder / name / names["targets"], masks, allow_pickle=False)
        return [[int(image.shape[0]), int(image.shape[1])] for image, _ in loaded]


def _check_space(cache_dir: Path, needed: int) -> None:
    """Refuse before writing when the disk cannot hold the cache (plus 5%)."""
    existing = next(p for p in (cache_dir, *cache_dir.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if needed * 1.05 > free:
        raise PipelineError(
            f"{cache_dir}: the decoded cache needs {human_bytes(needed)} but only "
            f"{human_bytes(free)} are free there; free some space, or set data.cache: none "
            "(training then decodes every image each epoch)"
        )


def _workers(asked: int | None, samples: int, jobs: int) -> int:
    if asked is None:
        asked = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        asked = asked if samples >= PARALLEL_FROM else 1
    return max(1, min(asked, jobs))


@dataclass
class _Writer:
    """Decodes a range of one split's samples into its shards (opened read-write by whoever runs it)."""

    sets: dict[str, ManifestDataset]
    folder: Path
    shards: dict[str, list[dict[str, Any]]]
    shard_size: int

    def __call__(self, job: tuple[str, int, int]) -> int:
        name, start, stop = job
        dataset, opened = self.sets[name], {}
        for i in range(start, stop):
            number, row = divmod(i, self.shard_size)
            if number not in opened:
                shard = self.shards[name][number]
                opened[number] = (
                    np.load(self.folder / name / shard["images"], mmap_mode="r+"),
                    np.load(self.folder / name / shard["targets"], mmap_mode="r+"),
                )
            images, targets = opened[number]
            image, mask = dataset.load(i)
            images[row] = image.transpose(2, 0, 1)
            task = dataset.task
            targets[row] = (
                mask if task == "segmentation" else stored_target(task, dataset.entries[i], dataset.num_classes)
            )
        for array in (a for pair in opened.values() for a in pair):
            array.flush()
        return stop - start


_WORKER: list[Any] = []  # a pool process's writer, installed once by _install


def _install(writer: Any) -> None:
    _WORKER[:] = [writer]


def _job(job: tuple[str, int, int]) -> Any:
    return _WORKER[0](job)


def _run(writer: Any, jobs: list[tuple[str, int, int]], workers: int) -> list[Any]:
    """Run ``jobs`` here, or on a pool of ``workers`` processes (the writer is sent once to each);
    return each job's result, in order."""
    if workers <= 1:
        return [writer(job) for job in jobs]
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    pool = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=dying_with_parent(_install), initargs=(writer,)
    )  # no worker outlives a killed stage
    try:
        return list(pool.map(_job, jobs))
    finally:  # on a failure, drop the queued jobs instead of decoding them first
        pool.shutdown(wait=True, cancel_futures=True)


class DecodedDataset(ManifestDataset):
    """One split read from the decoded cache: ``(image uint8 [3,H,W], target)`` exactly as
    :class:`ManifestDataset` returns it, with the same ``transform``, ``batch_transform`` and
    ``set_epoch``. The shards are memory-mapped lazily in the process that reads (each DataLoader
    worker maps its own; pickling drops them). Before that, :mod:`pipeline.data.decoded_index` checks
    the index and every shard's size and sha256: a cache that changed after the decode stage wrote it
    is refused here, before the first epoch."""

    def __init__(
        self,
        cache_dir: str | Path,
        manifest: Manifest,
        split: str,
        *,
        root: str | Path,
        image_size: int | list[int] | tuple[int, int],
        transform: Transform | None = None,
        batch_transform: BatchTransform | None = None,
        resize: str = "fit",
        crop: dict[str, Any] | None = None,
        max_side: int | None = None,
    ):
        super().__init__(
            manifest,
            split,
            root=root,
            image_size=image_size,
            transform=transform,
            batch_transform=batch_transform,
            resize=resize,
            crop=crop,
            max_side=max_side,
        )
        self.cache_dir = Path(cache_dir)
        index = read_index(self.cache_dir)
        hw = None if self.native else (self.height, self.width)
        check_index(index, self.cache_dir, manifest, hw, self.max_side)
        self.folder, self.shards = split_layout(
            index,
            self.cache_dir,
            split,
            task=self.task,
            hw=hw,
            count=len(self.entries),
            num_classes=self.num_classes,
        )
        self._starts = [s["start"] for s in self.shards]
        started = time.perf_counter()
        checked = verify_shards(self.folder, self.shards)
        seconds = time.perf_counter() - started
        if seconds > VERIFY_NOTE_SECONDS:
            print(
                f"note: checked the decoded {split} shards ({human_bytes(checked)}) in {seconds:.1f} s", file=sys.stderr
            )
        self._arrays: list[tuple[np.ndarray, np.ndarray]] | None = None
        self._map_shards()  # shapes and dtypes checked here, once; each reading process maps its own

    def _map_shards(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every shard memory-mapped, refused unless its arrays have the index's shapes and dtypes (a
        native shard: flat, as long as its samples' sizes add up to)."""
        arrays = []
        for shard in self.shards:
            pair = []
            layout: list[tuple[str, np.dtype[Any] | type[np.generic], tuple[int, ...]]]  # kind, dtype, shape
            if self.native:
                pixels = sum(h * w for h, w in shard["shapes"])
                layout = [("images", np.uint8, (3 * pixels,)), ("targets", np.uint8, (pixels,))]
            else:
                target_shape, target_dtype = target_layout(self.task, (self.height, self.width), self.num_classes)
                layout = [
                    ("images", np.uint8, (3, self.height, self.width)),
                    ("targets", np.dtype(target_dtype), tuple(target_shape)),
                ]
            for kind, dtype, shape in layout:
                path = self.folder / shard[kind]
                try:
                    array = np.load(path, mmap_mode="r", allow_pickle=False)
                except (OSError, ValueError) as exc:
                    raise PipelineError(f"{path}: cannot read this shard ({exc}); {REBUILD}") from None
                expected = shape if self.native else (shard["count"], *shape)
                if array.dtype != dtype or array.shape != expected:
                    raise PipelineError(
                        f"{path}: holds {array.dtype} {list(array.shape)}, not {np.dtype(dtype)} "
                        f"{list(expected)}; {REBUILD}"
                    )
                pair.append(array)
            arrays.append((pair[0], pair[1]))
        return arrays

    def _open_shards(self) -> list[tuple[np.ndarray, np.ndarray]]:
        if self._arrays is None:
            self._arrays = self._map_shards()
        return self._arrays

    def _row(self, index: int) -> tuple[np.ndarray, np.ndarray, int]:
        n = len(self.entries)
        if not -n <= index < n:
            raise IndexError(f"sample {index} out of range for {n} samples")
        index %= n
        shard, row = locate(self._starts, index)
        images, targets = self._open_shards()[shard]
        return images, targets, row

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """As :meth:`ManifestDataset.load`: HxWx3 image and HxW mask (or None), writable copies."""
        import cv2  # interleaves the stored planes in ~8 us at 224 px; numpy's transposing copy takes ~250

        images, targets, row = self._row(index)
        if self.native:
            shard = self.shards[locate(self._starts, index % len(self.entries))[0]]
            height, width = shard["shapes"][row]
            offset = sum(h * w for h, w in shard["shapes"][:row])
            planes = images[3 * offset : 3 * (offset + height * width)].reshape(3, height, width)
            image = cv2.merge([np.asarray(planes[c]) for c in range(3)])
            return image, np.array(targets[offset : offset + height * width].reshape(height, width))
        planes = images[row]
        image = cv2.merge([np.asarray(planes[c]) for c in range(3)])
        return image, np.array(targets[row], dtype=np.uint8) if self.task == "segmentation" else None

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        # A transform works on HxWx3 arrays; an empty one (augment.eval: [], AugmentTransform with no
        # augmenters returns its input) would only cost that round trip.
        if self.native or (self.transform is not None and getattr(self.transform, "spec", None) != []):
            return super().__getitem__(index)
        images, targets, row = self._row(index)  # stored as [3,H,W]: one copy, no transpose
        image = torch.from_numpy(np.array(images[row]))
        return image, target_tensor(self.task, targets[row])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": None}


_NOTED: set[Path] = set()


def open_split(
    cache_dir: str | Path,
    manifest: Manifest,
    split: str,
    *,
    root: str | Path,
    image_size: int | list[int] | tuple[int, int],
    transform: Transform | None = None,
    batch_transform: BatchTransform | None = None,
    resize: str = "fit",
    crop: dict[str, Any] | None = None,
    max_side: int | None = None,
) -> ManifestDataset:
    """``split`` from the decoded cache when the decode stage wrote one, else decoded from the files
    every epoch (``data.cache: none``; or no decode stage run: said once on stderr). A cache decoded
    for another manifest or size (or resize mode, or data.max_side) is refused."""
    cache_dir = Path(cache_dir)
    kwargs: dict[str, Any] = {
        "root": root,
        "image_size": image_size,
        "transform": transform,
        "batch_transform": batch_transform,
        "resize": resize,
        "crop": crop,
        "max_side": max_side,
    }
    if (cache_dir / INDEX).exists() and read_index(cache_dir).get("enabled"):
        return DecodedDataset(cache_dir, manifest, split, **kwargs)
    if not (cache_dir / INDEX).exists() and cache_dir not in _NOTED:
        _NOTED.add(cache_dir)
        print(
            f"note: no decoded cache at {cache_dir} (dvc repro decode writes it): decoding every image each epoch",
            file=sys.stderr,
        )
    return ManifestDataset(manifest, split, **kwargs)
