"""Host milliseconds per training sample: the online data path against the fast one, in one run.

On realistic JPEGs it generates (640x480 photos-like images: gradients, shapes, sensor noise, quality
90), resized to ``--size`` px, with the ``augment.train`` chain of a params file (default params.yaml):

- online: what a DataLoader worker does per sample without a cache: seed the sample's RNGs, decode
  the JPEG, resize, run the imgaug chain (``SeededSamples`` over ``ManifestDataset`` + ``AugmentTransform``);
- fast: read the sample from the decoded cache (``pipeline/data/decoded.py``, written once by the decode
  stage) plus the host share of augmentation on the device: drawing the batch's parameters with imgaug's
  own stochastic parameters (``DevicePlan.draw``, per batch, divided by the batch size). The torch ops
  then run on the GPU, so they are no host cost.

Each figure is the best of ``--rounds`` passes, on one core. ``measure`` is what
benchmarks/throughput.py reports as ``host_ms_per_sample``; the issue's bar is fast <= online / 20.

    python benchmarks/host_cost.py
    python benchmarks/host_cost.py --size 224 --images 64 --json host.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from pipeline.atomic import write_json  # noqa: E402
from pipeline.augment.device_augment import device_plan  # noqa: E402
from pipeline.augment.device_support import fallback_reasons  # noqa: E402
from pipeline.augment.transform import build_transform  # noqa: E402
from pipeline.data.dataset import ManifestDataset  # noqa: E402
from pipeline.data.decoded import DecodedDataset, write_decoded  # noqa: E402
from pipeline.data.manifest import Manifest  # noqa: E402
from pipeline.data.split import build_manifest  # noqa: E402
from pipeline.training.feed import SeededSamples  # noqa: E402


def realistic_jpegs(root: Path, count: int, *, size: tuple[int, int] = (640, 480), seed: int = 0) -> None:
    """``count`` photo-like JPEGs in two class folders under ``root``: smooth lighting, a few solid
    shapes, sensor noise; what a decoder really has to work through (not flat synthetic tiles)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(count):
        base = rng.uniform(40, 200, 3)
        slope = rng.uniform(-0.15, 0.15, (2, 3))
        image = base + xx[..., None] * slope[0] + yy[..., None] * slope[1]
        for _ in range(int(rng.integers(3, 8))):
            cx, cy, rx, ry = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(20, 160), rng.uniform(20, 160)
            inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
            image[inside] = rng.uniform(0, 255, 3)
        image += rng.normal(0, 6, image.shape)
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"{i:04d}.jpg", quality=90)


def _best_ms(count: int, run: Callable[[], Any], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best / count * 1000.0


def measure(
    spec: list, *, size: int = 224, images: int = 32, batch: int = 32, rounds: int = 3, random_order: bool = False
) -> dict[str, Any]:
    """Host ms per sample of the online and the fast path for ``spec`` at ``size`` px (one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="host-cost-") as tmp:
            root = Path(tmp) / "data"
            realistic_jpegs(root, images)
            manifest = Manifest(
                **build_manifest(
                    root,
                    task="classification",
                    root_as_written=str(root),
                    num_classes=None,
                    seed=0,
                    stratify=False,
                    fractions={"train": 0.8, "val": 0.1, "test": 0.1},
                )
            )
            online = SeededSamples(
                ManifestDataset(
                    manifest,
                    "train",
                    root=root,
                    image_size=[size, size],
                    transform=build_transform(spec, task="classification", random_order=random_order),
                )
            )
            n = len(online)
            result: dict[str, Any] = {"size": size, "images": n, "batch": batch, "source": "640x480 JPEG q90"}
            result["online"] = _best_ms(n, lambda: [online[(0, 7, i)] for i in range(n)], rounds)
            plan = device_plan(spec, task="classification", random_order=random_order)
            if plan is None:
                result |= {
                    "fast": None,
                    "ratio": None,
                    "fallback": fallback_reasons(spec, task="classification", random_order=random_order),
                }
                return result
            write_decoded(Path(tmp) / "decoded", manifest, root=root, image_size=[size, size], workers=1)
            # read as the training loader does: keyed samples, no per-sample transform to seed for
            cached = SeededSamples(
                DecodedDataset(Path(tmp) / "decoded", manifest, "train", root=root, image_size=[size, size])
            )
            result["read"] = _best_ms(n, lambda: [cached[(0, 7, i)] for i in range(n)], rounds)
            result["draw"] = _best_ms(batch, lambda: plan.draw(batch, (size, size), 3, seed=7), rounds)
            result["fast"] = result["read"] + result["draw"]
            result["ratio"] = result["online"] / result["fast"]
            return result
    finally:
        torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--params", default=str(REPO / "params.yaml"), help="whose augment.train chain (default params.yaml)"
    )
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)
    augment = yaml.safe_load(Path(args.params).read_text())["augment"]
    result = measure(
        augment["train"],
        size=args.size,
        images=args.images,
        batch=args.batch,
        rounds=args.rounds,
        random_order=bool(augment.get("random_order", False)),
    )
    print(f"host ms per sample at {args.size} px ({result['source']}, one core):")
    print(f"  online (decode + resize + imgaug)        {result['online']:8.3f}")
    if result["fast"] is None:
        print("  fast: the chain has no device version: " + "; ".join(result["fallback"]))
    else:
        print(
            f"  fast (decoded read + device-aug draw)    {result['fast']:8.3f}"
            f"   (read {result['read']:.3f}, draw {result['draw']:.3f})"
        )
        print(f"  online / fast                            {result['ratio']:8.1f}x")
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
