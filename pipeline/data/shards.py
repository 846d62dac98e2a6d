"""The shard format both caches use: the decode stage's (:mod:`pipeline.data.decoded`) and the augment
stage's offline copies (:mod:`pipeline.augment.cache`). Each owns its ``index.json`` content; this module
owns what they share, so editing one cache's code re-runs only the stages that read that cache.

A cache folder holds ``index.json`` and shards, each a pair of ``.npy`` files opened memory-mapped::

    shard-00000.images.npy      uint8 [n, 3, H, W]
    shard-00000.targets.npy     uint8 [n, H, W] (segmentation), int64 [n] (classification) or
                                uint8 [n, C] (multilabel: 1 where the class is present)

The index lists the shards as ``{"images": ..., "targets": ..., "start": ..., "count": ...}``: shard
``k`` holds samples ``start .. start + count - 1``.
"""

from __future__ import annotations

import bisect
import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.atomic import atomic_dir, write_json
from pipeline.config.errors import PipelineError

INDEX = "index.json"


def write_disabled(cache_dir: str | Path, *, reason: str, format_version: int) -> dict[str, Any]:
    """An empty cache whose index says so and why (``augment.offline.enabled: false``,
    ``data.cache: none``): DVC needs the stage's output to exist."""
    index = {"enabled": False, "format": format_version, "reason": reason}
    with atomic_dir(cache_dir) as tmp:
        write_json(tmp / INDEX, index)
    return index


def target_layout(task: str, hw: tuple[int, int], num_classes: int) -> tuple[list[int], str]:
    """The shape of one stored target and its dtype name: a mask ``[H, W]`` uint8, a class index
    ``[]`` int64, or a multilabel multi-hot vector ``[C]`` uint8."""
    if task == "segmentation":
        return [hw[0], hw[1]], "uint8"
    if task == "multilabel":
        return [num_classes], "uint8"
    return [], "int64"


def allocate_shards(
    folder: Path,
    shards: list[dict[str, Any]],
    hw: tuple[int, int],
    total: int,
    shard_size: int,
    target: tuple[list[int], str] | bool,
) -> list[tuple[np.memmap, np.memmap]]:
    """Create every shard's memory-mapped .npy files for ``total`` samples of ``hw`` (height, width),
    ``shard_size`` samples each, targets of ``target`` (:func:`target_layout`; a bool says
    segmentation masks or class indices, as before multilabel), and append each shard's entry to
    ``shards``."""
    height, width = hw
    if isinstance(target, bool):
        target = target_layout("segmentation" if target else "classification", hw, 1)
    target_shape, target_dtype = target
    arrays: list[tuple[np.memmap, np.memmap]] = []
    for number, start in enumerate(range(0, total, shard_size)):
        count = min(shard_size, total - start)
        names = {"images": f"shard-{number:05d}.images.npy", "targets": f"shard-{number:05d}.targets.npy"}
        images = np.lib.format.open_memmap(
            folder / names["images"], mode="w+", dtype=np.uint8, shape=(count, 3, height, width)
        )
        targets = np.lib.format.open_memmap(
            folder / names["targets"], mode="w+", dtype=np.dtype(target_dtype), shape=(count, *target_shape)
        )
        arrays.append((images, targets))
        shards.append({**names, "start": start, "count": count})
    return arrays


def locate(starts: list[int], sample: int) -> tuple[int, int]:
    """(shard number, row in it) of ``sample``, given each shard's first sample ``starts``."""
    shard = bisect.bisect_right(starts, sample) - 1
    return shard, sample - starts[shard]


def read_index(cache_dir: str | Path, *, stage: str) -> dict[str, Any]:
    """A cache folder's ``index.json`` (``stage`` names the stage that writes it, for the message when
    it is missing or unreadable)."""
    path = Path(cache_dir) / INDEX
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path} not found: run the {stage} stage first (dvc repro {stage})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PipelineError(
            f"{path} is not a readable index ({exc}); re-run the {stage} stage (dvc repro {stage})"
        ) from None
