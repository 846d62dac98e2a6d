"""Native resolution against resizing, with the shipped recipe on the embedded segmentation data.

``python -m benchmarks.tiles_bench [--seeds 3] [--epochs 8] [--native-epochs 16] [--crop 32] [--tile N]`` runs split,
model, decode, train and evaluate in a temporary workspace on the CPU per seed and mode, from the shipped
params.yaml (the pretrained U-Net 16/3, AdamW 0.003, cosine, batch 16; tracking off) on ``data/shapes-seg``
(400 scenes of 64 px):

    fit    data.resize fit at data.image_size 64 (the images' own size: the whole image per sample), --epochs
    none   data.resize none: random --crop px crops (foreground_prob 0.3, configs/segmentation-tiles.yaml) to
           train, each whole val/test image by overlapping tiles of --tile px (default: --crop), --native-epochs

A crop holds (crop/64)^2 of an image's pixels, so a native epoch costs less: the default gives native
twice the epochs, about the same training time. Prints each run's best validation Dice, test Dice and
time, then the means and spreads.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib
import json
import statistics
import tempfile
import time
from pathlib import Path

from tests.conftest import REPO, write_params

STAGES = ("split", "model", "decode", "train", "evaluate")


def run(ws: Path, seed: int, **overrides: object) -> dict[str, float]:
    """The five stages in ``ws`` (data and weights linked from the repository) with ``overrides``."""
    ws.mkdir(parents=True)
    for name in ("data", "weights"):
        (ws / name).symlink_to(REPO / name, target_is_directory=True)
    params = write_params(
        ws / "params.yaml", REPO / "params.yaml", **{"tracking.enabled": False, "train.seed": seed, **overrides}
    )
    started = time.perf_counter()
    with open(ws / "stages.log", "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        for stage in STAGES:
            if importlib.import_module(f"stages.{stage}").main(["--params", str(params)]) != 0:
                raise RuntimeError(f"{stage} failed: see {ws / 'stages.log'}")
    seconds = time.perf_counter() - started
    with open(ws / "outputs/train/history.csv") as fh:
        val = max(float(row["val_dice"]) for row in csv.DictReader(fh))
    test = json.loads((ws / "outputs/evaluate/metrics.json").read_text())["dice"]
    return {"val": val, "test": test, "seconds": seconds}


def spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {sd:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--native-epochs", type=int, default=16)
    parser.add_argument("--crop", type=int, default=32)
    parser.add_argument("--tile", type=int, default=None, help="evaluate.tile.size (default: the crop)")
    parser.add_argument("--modes", default="fit,none", help="which of fit, none to run")
    args = parser.parse_args()
    modes = {
        "fit": {"data.resize": "fit", "train.epochs": args.epochs},
        "none": {
            "data.resize": "none",
            "data.image_size": [args.crop, args.crop],
            "data.crop": {"foreground_prob": 0.3},
            "evaluate.tile.size": args.tile,
            "train.epochs": args.native_epochs,
        },
    }
    modes = {mode: modes[mode] for mode in args.modes.split(",")}
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for mode, overrides in modes.items():
                got = run(Path(tmp) / f"{mode}-{seed}", seed, **overrides)
                results[mode].append(got)
                print(
                    f"seed {seed} resize {mode}: best val dice {got['val']:.4f}, test dice {got['test']:.4f} "
                    f"({got['seconds']:.0f} s)",
                    flush=True,
                )
    print("\n| data.resize | epochs | best val Dice | test Dice | time per run |\n| --- | ---: | ---: | ---: | ---: |")
    for mode, runs in results.items():
        epochs = modes[mode]["train.epochs"]
        print(
            f"| {mode} | {epochs} | {spread([r['val'] for r in runs])} | {spread([r['test'] for r in runs])} | "
            f"{statistics.fmean(r['seconds'] for r in runs):.0f} s |"
        )


if __name__ == "__main__":
    main()
