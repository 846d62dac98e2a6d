"""Benchmark: the training recipe's parts, each alone against the default, on the embedded classification
data over several seeds: test accuracy (mean ± spread) and seconds per epoch.

The workspace is search_bench's: ``configs/classification.yaml`` at ``--image-size`` px, ``--model`` without
pretrained weights, tracking off, one torch thread, on ``--data``:

    embedded        ``data/shapes-cls`` (210 train / 45 val / 45 test): shapes on random textures, which a
                    model trained from scratch on so few images barely learns (about chance: a plain
                    PyTorch loop does no better), so it shows costs more than gains
    digits          scikit-learn's handwritten digits (1797 8x8 scans, 10 classes, shipped with it: no
                    download) written as PNG folders at ``--image-size`` px: real data a small model learns

split and decode run once, then per variant and seed the model, train and evaluate stages (``train.seed`` =
seed: the same initial weights and data order for every variant of a seed).

    default         the example as shipped (its augmentation chain, no EMA, no mixing)
    ema             train.ema.enabled (decay 0.9998 with timm's warmup; keep: auto)
    mix             augment.mix: mixup_alpha 0.2, cutmix_alpha 1.0 (switch 0.5, label smoothing 0.1)
    randaugment     RandAugment {n: 2, m: 9} appended to the chain
    trivialaugment  TrivialAugment {} appended to the chain
    distill         train.distill from ``--teacher`` (a larger model, trained once here with the default
                    recipe for twice the epochs: its own test accuracy is printed), alpha 0.5, T 4

Not a test: run it by hand, on a quiet machine.

    python -m benchmarks.recipe_bench                       # digits, 16 px, 3 seeds
    python -m benchmarks.recipe_bench --data embedded --image-size 32 --variants default,ema
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.search_bench import REPO, base_params, run_stage, write_params

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "ema": {"train.ema.enabled": True},
    "mix": {"augment.mix.mixup_alpha": 0.2, "augment.mix.cutmix_alpha": 1.0},
    "randaugment": {"augment.train": "+RandAugment"},
    "trivialaugment": {"augment.train": "+TrivialAugment"},
    "distill": {"train.distill": "teacher"},
}
POLICIES = {"+RandAugment": {"RandAugment": {"n": 2, "m": 9}}, "+TrivialAugment": {"TrivialAugment": {}}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=("digits", "embedded"), default="digits")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--model", default="resnet10t")
    p.add_argument("--teacher", default="resnet26d", help="the distillation teacher's timm model")
    p.add_argument("--threads", default="1", help="train.threads: N or auto (default 1)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of: " + ", ".join(VARIANTS))
    p.add_argument("--json", type=Path, help="also write the per-run results here")
    return p.parse_args(argv)


def _stage(name: str) -> Any:
    return importlib.import_module(f"stages.{name}")


def overrides(variant: str, params: dict[str, Any], teacher: Path | None) -> dict[str, Any]:
    """The dotted params of ``variant`` over the base ``params``."""
    values: dict[str, Any] = {}
    for key, value in VARIANTS[variant].items():
        if value in POLICIES:
            values[key] = [*params["augment"]["train"], POLICIES[value]]
        elif value == "teacher":
            assert teacher is not None
            values[key] = {"teacher": str(teacher), "alpha": 0.5, "temperature": 4}
        else:
            values[key] = value
    return values


def train_and_test(ws: Path, params: dict[str, Any], log: Path, **values: Any) -> dict[str, float]:
    """model, train and evaluate on ``ws`` with ``values``: test accuracy and seconds per epoch."""
    path = write_params(ws, params, **values)
    run_stage(_stage("model"), path, log)
    started = time.perf_counter()
    run_stage(_stage("train"), path, log)
    seconds = time.perf_counter() - started
    run_stage(_stage("evaluate"), path, log)
    summary = json.loads((ws / "outputs/train/summary.json").read_text())
    metrics = json.loads((ws / "outputs/evaluate/metrics.json").read_text())
    return {"accuracy": metrics["accuracy"], "s_per_epoch": seconds / summary["epochs_run"]}


def write_digits(root: Path, size: int) -> None:
    """scikit-learn's digits as class folders ``root/0`` ... ``root/9`` of ``size`` px grey PNGs."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = Image.fromarray(np.round(image * 255 / 16).astype(np.uint8))
        pixels.resize((size, size), Image.Resampling.BILINEAR).save(folder / f"{i:04d}.png")


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3f} ± {sd:.3f}"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants: {', '.join(unknown)} (choose from {', '.join(VARIANTS)})")
    params = base_params(args)
    results: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        log = ws / "stages.log"
        if args.data == "digits":
            write_digits(ws / "data", args.image_size)
        else:
            shutil.copytree(REPO / "data/shapes-cls", ws / "data")
        path = write_params(ws, params)
        for name in ("split", "decode"):
            run_stage(_stage(name), path, log)
        teacher = None
        if "distill" in variants:
            kept = ws / "teacher.safetensors"
            got = train_and_test(
                ws, params, log, **{"model.name": args.teacher, "train.epochs": 2 * args.epochs, "train.seed": 0}
            )
            shutil.copy(ws / "outputs/train/best.safetensors", kept)
            teacher = kept
            print(f"teacher {args.teacher}: test accuracy {got['accuracy']:.3f} ({got['s_per_epoch']:.1f} s/epoch)")
        for seed in range(args.seeds):
            for variant in variants:
                got = train_and_test(ws, params, log, **overrides(variant, params, teacher), **{"train.seed": seed})
                results[variant].append(got)
                print(
                    f"seed {seed} {variant:<15} accuracy {got['accuracy']:.3f}  {got['s_per_epoch']:.2f} s/epoch",
                    flush=True,
                )
    print(f"\n{args.data} data, {args.model}, {args.image_size} px, {args.epochs} epochs, {args.seeds} seeds")
    print("| variant | test accuracy (mean ± sd) | s/epoch |\n| --- | ---: | ---: |")
    for variant, runs in results.items():
        accuracy = spread([r["accuracy"] for r in runs])
        print(f"| {variant} | {accuracy} | {statistics.fmean(r['s_per_epoch'] for r in runs):.2f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
