"""Native resolution against resizing, on generated shapes larger than the training size.

``python -m benchmarks.tiles_bench [--images 120] [--size 128] [--crop 64] [--epochs 8]`` generates
``--images`` segmentation scenes of ``--size`` px (pipeline.data.synthetic), then runs split, model,
decode, train and evaluate twice in temporary workspaces on the CPU: ``data.resize: fit`` (every image
resized to ``--crop``, the mask predicted there and scaled back to the image size) and ``none`` (random
crops of ``--crop`` to train, whole test images by tiles). Prints each run's test Dice and time.
Note: the resized run's Dice is computed at the resized size (what its evaluate stage reports).
"""

from __future__ import annotations

import argparse
import importlib
import json
import tempfile
import time
from pathlib import Path

from pipeline.data.synthetic import generate_segmentation
from tests.conftest import make_workspace


def run(root: Path, data: Path, resize: str, crop: int, epochs: int) -> tuple[float, float]:
    overrides = {
        "data.resize": resize,
        "data.image_size": [crop, crop],
        "data.crop": {"foreground_prob": 0.3},
        "train.epochs": epochs,
        "train.batch_size": 8,
        "optimizer.lr": 0.01,
        "model.unet": {"base_channels": 8, "depth": 3, "upsampling": "bilinear"},
    }
    started = time.perf_counter()
    params = make_workspace(root, dataset=data, stages=("split", "model", "decode", "train", "evaluate"), **overrides)
    seconds = time.perf_counter() - started
    metrics = json.loads((params.parent / "outputs/evaluate/metrics.json").read_text())
    return metrics["dice"], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    importlib.import_module("stages.decode")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "shapes"
        generate_segmentation(data, n=args.images, size=args.size, seed=11)
        for resize in ("fit", "none"):
            dice, seconds = run(Path(tmp) / resize, data, resize, args.crop, args.epochs)
            print(f"resize {resize}: test dice {dice:.4f} ({seconds:.0f} s, {args.images} images of {args.size} px)")


if __name__ == "__main__":
    main()
