"""Benchmark: what one sample costs to read, decoded from its files (ManifestDataset) against the
decode stage's cache (DecodedDataset), in the same run on the same samples.

Generates ``--samples`` segmentation scenes (PNG images and masks) of ``--source-size`` px, splits
them with the split stage's own code (80/10/10), decodes train and val at ``--size`` into a cache
(timed: one process, then ``--workers`` processes), and times ``__getitem__`` without transform over
every training sample, on one core (the process is pinned, torch single-threaded), as a DataLoader
worker runs it. Each dataset is read once untimed first (files and shards in the page cache), then
``--repeats`` times timed; printed: mean and median microseconds per sample, for ``__getitem__`` and
for ``load`` (the HxWx3 arrays a CPU transform receives). Also timed: the check training makes of
every shard's size and sha256 before its first epoch (shards in the page cache), on this cache and,
with ``--verify-mb``, on a synthetic shard set of that many MB.

Not a test: run it by hand, on a quiet machine.

    python benchmarks/decode_bench.py
    python benchmarks/decode_bench.py --samples 500 --size 224 --json decode.json
    python benchmarks/decode_bench.py --verify-mb 500
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline.data.dataset import ManifestDataset
from pipeline.data.decoded import DecodedDataset, human_bytes, write_decoded
from pipeline.data.decoded_index import record_shard, verify_shards
from pipeline.data.manifest import Manifest
from pipeline.data.split import build_manifest
from pipeline.data.synthetic import generate_segmentation


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=400, help="images generated (80%% train; default 400)")
    p.add_argument("--source-size", type=int, default=320, help="generated image side, px (default 320)")
    p.add_argument("--size", type=int, default=224, help="data.image_size, px (default 224)")
    p.add_argument("--workers", type=int, default=2, help="processes for the parallel cache write (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes over the training set (default 3)")
    p.add_argument(
        "--verify-mb",
        type=int,
        default=0,
        help="also time the shard check on a synthetic shard set of this many MB (default: none)",
    )
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args(argv)


def time_reads(read: Callable[[int], Any], n: int, repeats: int) -> list[float]:
    """Seconds per ``read(i)`` over samples 0..n-1, ``repeats`` times, after one untimed pass."""
    for i in range(n):
        read(i)
    times = []
    for _ in range(repeats):
        for i in range(n):
            started = time.perf_counter()
            read(i)
            times.append(time.perf_counter() - started)
    return times


def time_verify(cache: Path, index: dict[str, Any]) -> tuple[int, float]:
    """(bytes, seconds) of the check training makes before its first epoch: every shard's size and
    sha256 (:func:`pipeline.data.decoded_index.verify_shards`), best of 3."""
    best, checked = float("inf"), 0
    for _ in range(3):
        started = time.perf_counter()
        checked = sum(verify_shards(cache / s["folder"], s["shards"]) for s in index["splits"].values())
        best = min(best, time.perf_counter() - started)
    return checked, best


def synthetic_shards(folder: Path, megabytes: int) -> dict[str, Any]:
    """An index of ``megabytes`` MB of random uint8 shards (512 MB each at most) in ``folder``/train."""
    (folder / "train").mkdir(parents=True)
    shards, left, number = [], megabytes * 10**6, 0
    rng = np.random.default_rng(0)
    while left > 0:
        rows = min(left, 512 << 20) // (3 * 224 * 224) + 1
        shard = {"images": f"shard-{number:05d}.images.npy", "targets": f"shard-{number:05d}.targets.npy"}
        np.save(folder / "train" / shard["images"], rng.integers(0, 256, (rows, 3, 224, 224), np.uint8))
        np.save(folder / "train" / shard["targets"], np.zeros(rows, np.int64))
        record_shard(folder / "train", shard)
        shards.append(shard)
        left, number = left - rows * 3 * 224 * 224, number + 1
    return {"splits": {"train": {"folder": "train", "shards": shards}}}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data, cache = Path(tmp) / "data", Path(tmp) / "decode"
        generate_segmentation(data, n=args.samples, size=args.source_size, seed=0)
        manifest = Manifest(
            **build_manifest(
                data,
                task="segmentation",
                root_as_written=str(data),
                num_classes=2,
                seed=0,
                stratify=False,
                fractions={"train": 0.8, "val": 0.1, "test": 0.1},
            )
        )
        size = [args.size, args.size]
        started = time.perf_counter()
        index = write_decoded(cache, manifest, root=data, image_size=size, workers=1)
        write_one = time.perf_counter() - started
        started = time.perf_counter()
        write_decoded(cache, manifest, root=data, image_size=size, workers=args.workers)
        write_many = time.perf_counter() - started
        cached = sum(s["count"] for s in index["splits"].values())
        verified = time_verify(cache, index)
        synthetic = (
            time_verify(Path(tmp) / "synthetic", synthetic_shards(Path(tmp) / "synthetic", args.verify_mb))
            if args.verify_mb
            else None
        )

        if hasattr(os, "sched_setaffinity"):  # one core, as a DataLoader worker
            os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        torch.set_num_threads(1)
        files = ManifestDataset(manifest, "train", root=data, image_size=size)
        decoded = DecodedDataset(cache, manifest, "train", root=data, image_size=size)
        results: dict[str, Any] = {
            "samples_train": len(files),
            "source_px": args.source_size,
            "size_px": args.size,
            "cache_bytes": index["bytes"],
            "write_images_per_s_1_process": cached / write_one,
            f"write_images_per_s_{args.workers}_processes": cached / write_many,
            "verify_bytes": verified[0],
            "verify_s": verified[1],
        }
        if synthetic:
            results.update(verify_synthetic_bytes=synthetic[0], verify_synthetic_s=synthetic[1])
        for name, dataset in (("ManifestDataset", files), ("DecodedDataset", decoded)):
            results[name] = {}
            for what, read in (("getitem", dataset.__getitem__), ("load", dataset.load)):
                times = time_reads(read, len(dataset), args.repeats)
                results[name][what] = {
                    "mean_us": 1e6 * statistics.fmean(times),
                    "median_us": 1e6 * statistics.median(times),
                }

    print(
        f"{results['samples_train']} training samples, {args.source_size} px PNGs -> {args.size} px; cache of "
        f"{cached} train+val samples: {human_bytes(results['cache_bytes'])}, written at "
        f"{results['write_images_per_s_1_process']:.0f} images/s (1 process), "
        f"{results[f'write_images_per_s_{args.workers}_processes']:.0f} images/s ({args.workers} processes)"
    )
    for what, label in (("getitem", "__getitem__, no transform"), ("load", "load (a CPU transform's input)")):
        for name in ("ManifestDataset", "DecodedDataset"):
            r = results[name][what]
            print(f"  {name:16s} {label:30s} mean {r['mean_us']:8.1f} us, median {r['median_us']:8.1f} us")
    for label, (checked, seconds) in (("this cache", verified), ("synthetic shards", synthetic or (0, 0.0))):
        if checked:
            print(
                f"  shard check before training (sizes + sha256, page cache), {label}: {human_bytes(checked)} in "
                f"{1e3 * seconds:.1f} ms ({checked / 1e6 / max(seconds, 1e-9):.0f} MB/s)"
            )
    speedup = results["ManifestDataset"]["getitem"]["mean_us"] / results["DecodedDataset"]["getitem"]["mean_us"]
    print(f"  reading a sample from the cache is {speedup:.0f}x faster")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
