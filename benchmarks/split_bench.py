"""Benchmark: how long the split stage's core takes on a large dataset of tiny files.

Creates a dataset in a temp dir (distinct 16x16 PNGs; segmentation also writes one mask per image),
then times :func:`pipeline.data.split.build_manifest` (files just written, so in the page cache, as on a
machine that just unpacked its data). Prints wall time and CPU time (this process plus its worker
processes): on a shared machine the wall time depends on the load, the CPU time much less. Not a
test: run it by hand.

    python benchmarks/split_bench.py                       # 100,000 classification images, 10 classes
    python benchmarks/split_bench.py --task segmentation   # 100,000 images + 100,000 masks
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline.data.split import build_manifest

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def make_dataset(root: Path, task: str, n: int, classes: int, size: int = 16) -> None:
    """Write ``n`` distinct tiny images (and masks) in the layout ``task`` reads."""
    rng = np.random.default_rng(0)
    if task == "classification":
        folders = [root / f"class_{c:02d}" for c in range(classes)]
    else:
        folders = [root / "images", root / "masks"]
    for folder in folders:
        folder.mkdir(parents=True)
    for i in range(n):
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        if task == "classification":
            (folders[i % classes] / f"img_{i:06d}.png").write_bytes(_png(image))
        else:
            (root / "images" / f"img_{i:06d}.png").write_bytes(_png(image))
            mask = (image[..., 0] > 127).astype(np.uint8) * 255
            (root / "masks" / f"img_{i:06d}.png").write_bytes(_png(mask))


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("classification", "segmentation"), default="classification")
    parser.add_argument("-n", type=int, default=100_000, help="number of images")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="split-bench-") as tmp:
        root = Path(tmp) / "data"
        start = time.perf_counter()
        make_dataset(root, args.task, args.n, args.classes)
        print(f"created {args.n} {args.task} images in {time.perf_counter() - start:.1f}s")
        for attempt in range(args.repeat):
            start, cpu = time.perf_counter(), _cpu_seconds()
            manifest = build_manifest(
                root,
                task=args.task,
                root_as_written="data",
                num_classes=None,
                seed=42,
                fractions=FRACTIONS,
                stratify=True,
            )
            elapsed, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
            sizes = {s: len(v) for s, v in manifest["splits"].items()}
            print(
                f"split #{attempt + 1}: {elapsed:.2f}s wall, {cpu:.2f}s CPU for {args.n} images "
                f"({args.n / elapsed:,.0f} images/s; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}) "
                f"-> {sizes}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
