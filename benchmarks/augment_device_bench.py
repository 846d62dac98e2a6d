"""Benchmark: host cost per sample of the training augmentation, imgaug per sample (the CPU path, what a
DataLoader worker does) against the device path (pipeline/augment/device_augment.py) on this machine's tensors.

For the ``augment.train`` chain of a params file (default: the repo's params.yaml) at ``--size`` px,
on random uint8 images (and masks, for segmentation), it times:

- cpu_imgaug: ``AugmentTransform`` on one HxWx3 array at a time (one core, as one worker runs it);
- device_draw: drawing a batch's parameters with imgaug's stochastic parameters (host work that stays
  on the host when the batch is on a GPU);
- device_apply: the torch ops on a batch of CPU tensors (on a GPU this is device time instead);
- device_total: both (the whole device path when the "device" is this CPU).

Each figure is the best of ``--rounds`` and is per sample, in milliseconds. ``measure`` is what
benchmarks/throughput.py can call. Not a test: run it by hand, on a quiet machine.

    python benchmarks/augment_device_bench.py
    python benchmarks/augment_device_bench.py --size 224 --batch 64 --threads 2 --json device.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline.augment.device_augment import device_plan
from pipeline.augment.device_support import fallback_reasons
from pipeline.augment.transform import build_transform
from pipeline.config.params import load_params


def _best_ms(count: int, run: Callable[[], Any], rounds: int) -> float:
    """Best wall time of ``rounds`` runs of ``run`` (which handles ``count`` samples), ms per sample."""
    run()  # warm-up: imports, allocator, OpenCV's first calls
    best = min(_timed(run) for _ in range(rounds))
    return 1000 * best / count


def _timed(run: Callable[[], Any]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def measure(
    spec: list,
    *,
    task: str,
    size: int = 224,
    batch: int = 32,
    batches: int = 4,
    rounds: int = 3,
    threads: int | None = 1,
    random_order: bool = False,
) -> dict[str, float]:
    """ms per sample of the CPU path and of the device path on CPU tensors (see the module doc);
    ``threads`` sets torch's CPU threads for the device path (None: leave as is)."""
    if threads is not None:
        torch.set_num_threads(threads)
    plan = device_plan(spec, task=task, random_order=random_order)
    if plan is None:
        raise SystemExit("augment.train has no device version: " + "; ".join(fallback_reasons(spec, task=task)))
    transform = build_transform(spec, task=task, random_order=random_order)
    rng = np.random.default_rng(0)
    n = batch * batches
    arrays = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    masks = (arrays[..., 0] > 127).astype(np.uint8) if task == "segmentation" else None
    images = torch.from_numpy(arrays.transpose(0, 3, 1, 2).copy()).split(batch)
    mask_batches = torch.from_numpy(masks).split(batch) if masks is not None else [None] * batches

    def cpu() -> None:
        for i in range(n):
            transform(arrays[i], masks[i] if masks is not None else None)

    draws: list[Any] = []

    def draw() -> None:
        draws[:] = [plan.draw(batch, (size, size), 3, seed=k) for k in range(batches)]

    def apply() -> None:
        for x, m, drawn in zip(images, mask_batches, draws):
            plan.apply(x, m, drawn)

    figures = {
        "cpu_imgaug": _best_ms(n, cpu, rounds),
        "device_draw": _best_ms(n, draw, rounds),
        "device_apply": _best_ms(n, apply, rounds),
    }
    figures["device_total"] = figures["device_draw"] + figures["device_apply"]
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(Path(__file__).resolve().parent.parent / "params.yaml"))
    parser.add_argument("--size", type=int, default=224, help="image height and width")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=4, help="batches per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for the device path")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)

    params = load_params(args.params, semantic=False)
    spec, task = params.get("augment.train"), params.get("data.task")
    figures = measure(
        spec,
        task=task,
        size=args.size,
        batch=args.batch,
        batches=args.batches,
        rounds=args.rounds,
        threads=args.threads,
        random_order=params.get("augment.random_order"),
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"augment.train: {len(spec)} augmenters, {task}, {args.size}x{args.size}, batches of {args.batch}, "
        f"torch threads {args.threads}; load average {load:.1f}"
    )
    labels = {
        "cpu_imgaug": "CPU path: imgaug per sample (one core)",
        "device_draw": "device path: drawing parameters (host)",
        "device_apply": "device path: torch ops on CPU tensors",
        "device_total": "device path on this CPU: draw + apply",
    }
    for key, label in labels.items():
        print(f"{label:45s} {figures[key]:7.3f} ms/sample")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "size": args.size,
                    "batch": args.batch,
                    "threads": args.threads,
                    "load_average": load,
                    "ms_per_sample": figures,
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
