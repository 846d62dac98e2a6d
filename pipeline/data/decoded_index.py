"""The decoded cache's ``index.json``, and what training checks before it trusts the cache.

The index is data (DESIGN 6): whatever it says, nothing is read from outside the cache folder. Every
shard path it names must be relative and resolve (symlinks followed) inside the folder; its counts,
shapes and dtypes must be those of the manifest and ``data.image_size``; and each shard file must
still have the byte size and sha256 the decode stage recorded, so a shard zeroed, truncated or swapped
after the decode stage ran stops training before its first epoch. Every refusal names ``index.json``
or the shard, and says ``dvc repro decode``.

sha256 because it is the cheapest strong digest here: with SHA-NI ~1.4 GB/s on one core from the page
cache, against ~0.8 GB/s for blake2b (``benchmarks/decode_bench.py`` measures verify).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from pipeline.config.errors import PipelineError
from pipeline.data import shards as shard_files
from pipeline.data.manifest import Manifest
from pipeline.data.shards import target_layout
from pipeline.hashing import file_sha256

FORMAT_VERSION = 2  # 2: per-shard byte sizes and sha256
INDEX = shard_files.INDEX
SPLITS = ("train", "val")  # what training reads every epoch
REBUILD = "rebuild it: dvc repro decode"
KINDS = ("images", "targets")  # a shard's two files
_SHA256 = re.compile(r"[0-9a-f]{64}")


def manifest_digest(manifest: Manifest) -> str:
    """A hash of what the cached arrays depend on in the manifest beyond its data fingerprint: the
    task, the class count (masks are mapped to class indices) and the cached splits' entries. A
    re-split with another seed keeps the fingerprint (same files) but changes this."""
    content = {
        "task": manifest.task,
        "num_classes": manifest.num_classes,
        "splits": {s: manifest.splits.get(s, []) for s in SPLITS},
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode("utf-8")).hexdigest()


def record_shard(folder: Path, shard: dict[str, Any]) -> None:
    """Add the byte size and sha256 of ``shard``'s files (in ``folder``) to its entry: what
    :func:`verify_shards` checks before training reads them."""
    shard["bytes"] = {kind: (folder / shard[kind]).stat().st_size for kind in KINDS}
    shard["sha256"] = {kind: file_sha256(folder / shard[kind]) for kind in KINDS}


def read_index(cache_dir: str | Path) -> dict[str, Any]:
    """The decode stage's ``index.json``: a JSON object, else a :class:`PipelineError` naming it."""
    index = shard_files.read_index(cache_dir, stage="decode")
    if not isinstance(index, dict):
        raise PipelineError(
            f"{Path(cache_dir) / INDEX} holds a JSON {type(index).__name__}, not the decoded cache's index; {REBUILD}"
        )
    return index


def check_index(
    index: dict[str, Any], cache_dir: Path, manifest: Manifest, hw: tuple[int, int] | None, max_side: int | None = None
) -> None:
    """Refuse a cache that was not decoded from this manifest at this size (``hw`` None: at native
    resolution, ``data.resize: none``, shrunk to ``max_side`` where larger), or by another format."""
    if not index.get("enabled"):
        raise PipelineError(
            f"{cache_dir} holds no decoded images (data.cache was none when the decode "
            "stage ran); set data.cache: decoded and run dvc repro decode"
        )
    if index.get("format") != FORMAT_VERSION:
        raise PipelineError(f"{cache_dir}: cache format {index.get('format')} is not {FORMAT_VERSION}; {REBUILD}")
    for what, cached, wanted in (
        ("task", index.get("task"), manifest.task),
        ("data.resize", index.get("resize", "fit"), "fit" if hw is not None else "none"),
        ("image size", index.get("image_size"), list(hw) if hw is not None else None),
        ("data.max_side", index.get("max_side"), max_side),
        ("manifest (data fingerprint)", index.get("manifest_fingerprint"), manifest.fingerprint),
        ("manifest (split entries and classes)", index.get("manifest_digest"), manifest_digest(manifest)),
    ):
        if cached != wanted:
            raise PipelineError(f"{cache_dir} was decoded for another {what} ({cached!r}, now {wanted!r}); {REBUILD}")
    if not isinstance(index.get("splits"), dict):
        raise PipelineError(f"{cache_dir / INDEX}: 'splits' is missing or not an object; {REBUILD}")


def split_layout(
    index: dict[str, Any],
    cache_dir: Path,
    split: str,
    *,
    task: str,
    hw: tuple[int, int] | None,
    count: int,
    num_classes: int = 1,
) -> tuple[Path, list[dict[str, Any]]]:
    """``split``'s folder and shard entries from a checked index (:func:`check_index`), once they hold
    ``count`` samples of ``hw`` (None: native sizes, each shard listing its samples' [h, w]) for
    ``task`` in shards whose paths stay inside ``cache_dir``."""
    where = cache_dir / INDEX

    def refuse(key: str, why: str) -> PipelineError:
        return PipelineError(f"{where}: splits.{split}{key} {why}; {REBUILD}")

    if split not in index["splits"]:
        raise PipelineError(
            f"{cache_dir} holds the splits {', '.join(map(str, index['splits']))}, not {split!r}; {REBUILD}"
        )
    cached = index["splits"][split]
    if not isinstance(cached, dict):
        raise refuse("", "is not an object")
    # native sizes (segmentation only): flat shards, a uint8 mask per image, its [h, w] in the shard entry
    target_shape, target_dtype = target_layout(task, hw, num_classes) if hw is not None else (None, "uint8")
    wanted: dict[str, Any] = {
        "count": count,
        "image_shape": [3, *hw] if hw is not None else None,
        "image_dtype": "uint8",
        "target_shape": target_shape,
        "target_dtype": target_dtype,
    }
    if hw is None:
        wanted["layout"] = "native"
    for key, value in wanted.items():
        if key not in cached:
            raise refuse(f".{key}", "is missing")
        if cached[key] != value or type(cached[key]) is not type(value):
            raise refuse(f".{key}", f"is {cached[key]!r}, not {value!r}")
    folder = _inside(cache_dir, cached.get("folder"), (), refuse, ".folder")
    shards = cached.get("shards")
    if not isinstance(shards, list):
        raise refuse(".shards", "is missing or not a list")
    if not shards and count:
        raise refuse(".shards", f"is empty but the split has {count} samples")
    start = 0
    for i, shard in enumerate(shards):
        key = f".shards[{i}]"
        if not isinstance(shard, dict):
            raise refuse(key, "is not an object")
        for field in ("start", "count"):
            if type(shard.get(field)) is not int:
                raise refuse(f"{key}.{field}", "is missing or not an integer")
        if shard["start"] != start or shard["count"] < 1:
            raise refuse(
                key,
                f"starts at sample {shard['start']} with {shard['count']} samples; the shards before it end at {start}",
            )
        start += shard["count"]
        if hw is None:
            shapes = shard.get("shapes")
            if not (
                isinstance(shapes, list)
                and len(shapes) == shard["count"]
                and all(
                    isinstance(hw_, list) and len(hw_) == 2 and all(type(v) is int and v > 0 for v in hw_)
                    for hw_ in shapes
                )
            ):
                raise refuse(f"{key}.shapes", f"is not a list of {shard['count']} [height, width] pairs")
        for kind in KINDS:
            _inside(cache_dir, cached["folder"], (shard.get(kind),), refuse, f"{key}.{kind}")
            size, digest = (value if isinstance(value := shard.get(f), dict) else {} for f in ("bytes", "sha256"))
            if type(size.get(kind)) is not int or not _SHA256.fullmatch(str(digest.get(kind))):
                raise refuse(key, f"lacks the byte size or sha256 of its {kind}")
    if start != count:
        raise refuse(".shards", f"hold {start} samples, not the split's {count}")
    return folder, shards


def _inside(cache_dir: Path, folder: Any, names: tuple[Any, ...], refuse: Any, key: str) -> Path:
    """``cache_dir / folder / *names``, refused unless every part is a relative path (a string) and
    the whole resolves, symlinks followed, inside ``cache_dir``."""
    parts = (folder, *names)
    if not all(isinstance(p, str) and p for p in parts):
        raise refuse(key, "is missing or not a path")
    value = parts[-1]
    if any(os.path.isabs(p) for p in parts):
        raise refuse(key, f"is {value!r}, an absolute path; the decoded cache is read only from inside {cache_dir}")
    path = cache_dir.joinpath(*parts)
    try:
        resolved, real = path.resolve(), cache_dir.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise refuse(key, f"{value!r} cannot be resolved ({exc})") from None
    if not resolved.is_relative_to(real):
        raise refuse(
            key,
            f"{value!r} leads outside {cache_dir} (to {resolved}); the decoded cache is read only "
            "from inside its folder",
        )
    return path


def verify_shards(folder: Path, shards: list[dict[str, Any]]) -> int:
    """Check that every shard file in ``folder`` still has the byte size and sha256 that
    :func:`record_shard` recorded; return the bytes read. A shard that changed (zeroed, truncated,
    replaced) is refused, named."""
    total = 0
    for shard in shards:
        for kind in KINDS:
            path = folder / shard[kind]
            try:
                info = path.stat()
            except OSError as exc:
                raise PipelineError(
                    f"{path}: cannot read this shard of the decoded cache ({exc.strerror or exc}); {REBUILD}"
                ) from None
            if not stat.S_ISREG(info.st_mode):
                raise PipelineError(f"{path}: this shard of the decoded cache is not a file; {REBUILD}")
            if info.st_size != shard["bytes"][kind]:
                raise PipelineError(
                    f"{path}: {info.st_size} bytes, but {INDEX} recorded {shard['bytes'][kind]}: the "
                    f"shard changed after the decode stage wrote it; {REBUILD}"
                )
            if file_sha256(path) != shard["sha256"][kind]:
                raise PipelineError(
                    f"{path}: its content differs from the sha256 {INDEX} recorded: the shard changed "
                    f"after the decode stage wrote it; {REBUILD}"
                )
            total += info.st_size
    return total
