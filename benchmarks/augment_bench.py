"""Benchmark: images/s of the default training augmentation, online and from the offline cache.

Uses ``augment.train`` and ``data.*`` from a params file (default: the repo's params.yaml) and the
images under ``data.root`` (every image counts as training here); with ``--generated``, or when the
dataset is not there, random arrays of ``data.image_size`` instead. Measures, for the same samples:

- online, one core: the process pinned to one CPU, OpenCV and torch single-threaded, decode +
  resize + augment per sample (what a DataLoader worker does), and augment alone (arrays in memory);
- online, through a DataLoader with ``--workers`` workers (batches of ``--batch-size``; the second
  epoch of persistent workers, so worker start-up is not counted);
- the offline cache: writing it (``--copies`` per image, one process), then reading it on one core
  and through the same DataLoader.

Not a test: run it by hand, on a quiet machine.

    python benchmarks/augment_bench.py
    python benchmarks/augment_bench.py --samples 2000 --workers 2 --json bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline.augment.cache import (
    OfflineCacheDataset,
    write_cache,
)
from pipeline.augment.transform import build_transform
from pipeline.config.params import load_params
from pipeline.data.dataset import (
    ManifestDataset,
    image_hw,
)
from pipeline.data.files import IMAGE_EXTENSIONS, segmentation_class_names
from pipeline.data.manifest import Manifest
from pipeline.seeding import loader_generator, seed_everything, worker_init_fn


class GeneratedDataset(Dataset):
    """Random images (and masks) already in memory: no decoding."""

    def __init__(self, n: int, size: tuple[int, int], task: str, transform: Callable | None = None):
        rng = np.random.default_rng(0)
        self.images = rng.integers(0, 256, (n, *size, 3), dtype=np.uint8)
        self.masks = (self.images[..., 0] > 127).astype(np.uint8)
        self.task, self.transform = task, transform

    def __len__(self) -> int:
        return len(self.images)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        return self.images[i], self.masks[i] if self.task == "segmentation" else None

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.load(i)
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        target = torch.from_numpy(np.ascontiguousarray(mask)) if mask is not None else torch.tensor(i % 2)
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), target


def embedded_dataset(params: Any, limit: int, transform: Callable | None) -> Dataset | None:
    """The images under data.root as one training split (None when the folder is missing)."""
    task, root = params.get("data.task"), params.resolve_path(params.get("data.root"))
    if task == "segmentation":
        images_dir, masks_dir = root / params.get("data.images_dir"), root / params.get("data.masks_dir")
        if not images_dir.is_dir():
            return None
        suffix = params.get("data.mask_suffix")
        entries = []
        for image in sorted(images_dir.iterdir()):
            masks = sorted(masks_dir.glob(f"{image.stem}{suffix}.*"))
            if image.suffix.lower() in IMAGE_EXTENSIONS and masks:
                entries.append({"image": str(image.relative_to(root)), "mask": str(masks[0].relative_to(root))})
        classes = segmentation_class_names(params.get("data.num_classes") or 2)
    else:
        if not root.is_dir():
            return None
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        entries = [
            {"image": str(f.relative_to(root)), "label": label}
            for label, name in enumerate(classes)
            for f in sorted((root / name).iterdir())
        ]
    if not entries:
        return None
    entries = [entries[i % len(entries)] for i in range(limit)]  # repeat to reach --samples
    manifest = Manifest(
        task=task,
        root=str(root),
        num_classes=len(classes),
        class_names=classes,
        splits={"train": entries, "val": [], "test": []},
        counts={},
        fingerprint="bench",
    )
    return ManifestDataset(manifest, "train", root=root, image_size=params.get("data.image_size"), transform=transform)


CPU_RATES: dict[str, float] = {}  # one-core figures per CPU-second: robust to a busy machine


def rate(count: int, run: Callable[[], None], name: str | None = None) -> float:
    started, cpu = time.perf_counter(), time.process_time()
    run()
    if name:
        CPU_RATES[name] = count / (time.process_time() - cpu)
    return count / (time.perf_counter() - started)


def one_core() -> None:
    """Pin this process to one CPU and make OpenCV and torch single-threaded."""
    import cv2

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def through_loader(dataset: Dataset, workers: int, batch_size: int) -> float:
    """Steady state: the second epoch of persistent workers (the first pays for starting them)."""
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        worker_init_fn=worker_init_fn,
        generator=loader_generator(0),
        persistent_workers=workers > 0,
    )
    for _ in loader:
        pass
    return rate(len(dataset), lambda: [None for _ in loader])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(Path(__file__).resolve().parent.parent / "params.yaml"))
    parser.add_argument("--samples", type=int, default=1000, help="samples per measurement")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--copies", type=int, default=2, help="offline copies per image")
    parser.add_argument("--generated", action="store_true", help="random arrays instead of the dataset")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)

    params = load_params(args.params, semantic=False)
    task, size = params.get("data.task"), image_hw(params.get("data.image_size"))
    transform = build_transform(params.get("augment.train"), task=task, random_order=params.get("augment.random_order"))
    dataset = None if args.generated else embedded_dataset(params, args.samples, transform)
    source = f"{params.get('data.root')} (decoded from disk)"
    if dataset is None:
        dataset, source = GeneratedDataset(args.samples, size, task, transform), "generated arrays"
    n = len(dataset)
    print(
        f"augment.train: {len(transform.spec)} augmenters, task {task}, {size[0]}x{size[1]}, {n} samples "
        f"of {source}; {os.cpu_count()} CPUs"
    )
    figures: dict[str, float] = {}
    seed_everything(0)

    # DataLoader first: forked workers must not inherit this process's one-core pinning.
    figures["online_loader"] = through_loader(dataset, args.workers, args.batch_size)
    with tempfile.TemporaryDirectory(prefix="augment-bench-") as tmp:
        plain = type(dataset).__new__(type(dataset))
        plain.__dict__.update({**dataset.__dict__, "transform": None})
        copies_n = max(1, n // args.copies)
        base = torch.utils.data.Subset(plain, range(copies_n))
        started = time.perf_counter()
        write_cache(Path(tmp) / "cache", base, transform, task=task, copies=args.copies, shard_size=1024, seed=0)
        figures["offline_write"] = copies_n * args.copies / (time.perf_counter() - started)
        cache = OfflineCacheDataset(Path(tmp) / "cache")
        figures["offline_loader"] = through_loader(cache, args.workers, args.batch_size)

        one_core()
        figures["online_1core"] = rate(n, lambda: [dataset[i] for i in range(n)], "online_1core")
        arrays = [plain.load(i) for i in range(n)]
        figures["augment_only_1core"] = rate(
            n, lambda: [transform(img, mask) for img, mask in arrays], "augment_only_1core"
        )
        figures["decode_only_1core"] = rate(n, lambda: [plain[i] for i in range(n)], "decode_only_1core")
        figures["offline_1core"] = rate(len(cache), lambda: [cache[i] for i in range(len(cache))], "offline_1core")

    labels = {
        "online_1core": "online, one core (decode + resize + augment)",
        "augment_only_1core": "augmentation alone, one core (arrays in memory)",
        "decode_only_1core": "decode + resize alone, one core (no augmentation)",
        "online_loader": f"online, DataLoader with {args.workers} workers",
        "offline_write": "offline cache, writing (one process)",
        "offline_1core": "offline cache, reading, one core",
        "offline_loader": f"offline cache, DataLoader with {args.workers} workers",
    }
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{'':55s} {'images/s':>9s} {'per CPU-s':>10s}   (load average {load:.1f})")
    for key, label in labels.items():
        cpu = f"{CPU_RATES[key]:10.0f}" if key in CPU_RATES else ""
        print(f"{label:55s} {figures[key]:9.0f} {cpu}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "samples": n,
                    "source": source,
                    "load_average": load,
                    "images_per_s": figures,
                    "images_per_cpu_s": CPU_RATES,
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
