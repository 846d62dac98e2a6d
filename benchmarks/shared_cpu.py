"""Shared CPUs: a lone training loop against two identical ones running at once, with ``train.threads:
auto`` and with torch's default thread count (the behaviour before train.threads).

Each run is a child process: a tiny U-Net (params.yaml's loss and optimizer, fp32) trained on
synthetic 64 px batches from a DataLoader with ``--workers`` workers (params.yaml's train.workers by
default; the workers only hand over in-memory batches, so the step loop is what is timed), stepped
by the train stage's own step (``pipeline.training.loop.TrainStep``). A mode is timed alone, then
as two processes started together (both time the same window: each warms up, says so, and
starts when told that all have). Printed per mode:
each run's images/s, and each co-scheduled run's share of the lone run's speed (target with auto:
0.40 or more each, on the 2 cores this was written for).

``--passive`` adds both modes again with ``OMP_WAIT_POLICY=PASSIVE`` in the children's environment
(it only acts when set before torch is imported). Not a test: run it by hand, on an otherwise idle
machine (the load average is printed; other jobs skew every figure).

    python benchmarks/shared_cpu.py                     # about 30 s
    python benchmarks/shared_cpu.py --workers 0 --passive --json shared.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
MODES = {"default": "torch's default threads (before train.threads)", "auto": "train.threads: auto"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from pipeline.training.threads import resolve_workers

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0, help="timed window of every run (default 5)")
    p.add_argument(
        "--workers",
        type=int,
        default=resolve_workers(params["train"]["workers"]),
        help="DataLoader workers of every run (default params.yaml's train.workers, resolved here)",
    )
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--base-channels", type=int, default=8, help="classic U-Net width (depth 3)")
    p.add_argument("--passive", action="store_true", help="also run both modes with OMP_WAIT_POLICY=PASSIVE")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--child", choices=tuple(MODES), help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --- one run (a child process) -------------------------------------------------------------------


def child(args: argparse.Namespace) -> dict[str, Any]:
    """Warm up, say so on stdout and wait for the go on stdin, then train for ``--seconds``;
    return images/s."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    sys.path.insert(0, str(REPO))
    from pipeline.models.unet import ClassicUNet
    from pipeline.seeding import worker_init_fn
    from pipeline.training.batches import to_device
    from pipeline.training.loop import TrainStep
    from pipeline.training.losses import build_loss
    from pipeline.training.precision import resolve_precision
    from pipeline.training.scheduler import build_scheduler
    from pipeline.training.threads import apply_threads

    if args.child == "auto":
        apply_threads("auto", workers=args.workers)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    torch.manual_seed(0)
    net = ClassicUNet(in_chans=3, num_outputs=1, base_channels=args.base_channels, depth=3, upsampling="bilinear")
    plan = resolve_precision({"dtype": "fp32", "channels_last": False}, torch.device("cpu"))
    loss_fn = build_loss(params["loss"], task="segmentation", num_outputs=1)
    optimizer = torch.optim.AdamW(net.parameters(), lr=params["optimizer"]["lr"])
    no_schedule = build_scheduler({"name": "none"}, optimizer, epochs=1, steps_per_epoch=1)
    step = TrainStep(net.train(), loss_fn, optimizer, plan, no_schedule, grad_clip=1.0)
    size, count = args.image_size, 16 * args.batch
    data = TensorDataset(
        torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8),
        torch.randint(0, 2, (count, size, size), dtype=torch.uint8),
    )
    loader = DataLoader(
        data,
        batch_size=args.batch,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        worker_init_fn=worker_init_fn if args.workers else None,
        persistent_workers=args.workers > 0,
    )

    def batches():
        while True:
            yield from loader

    stream = batches()
    for _ in range(3):  # warm-up: starts the workers, first-call allocations
        step(*to_device(*next(stream), plan.device), apply=True)
    print("ready", flush=True)
    sys.stdin.readline()
    seen, started = 0, time.perf_counter()
    while time.perf_counter() - started < args.seconds:
        images, targets = next(stream)
        step(*to_device(images, targets, plan.device), apply=True)
        seen += images.shape[0]
    return {"images_per_s": seen / (time.perf_counter() - started), "threads": torch.get_num_threads()}


# --- the comparison (the parent) -----------------------------------------------------------------


def run_together(mode: str, copies: int, args: argparse.Namespace, env: dict[str, str]) -> list[dict[str, Any]]:
    """``copies`` children of ``mode`` timing the same window; their results."""
    command = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--seconds",
        str(args.seconds),
        "--workers",
        str(args.workers),
        "--image-size",
        str(args.image_size),
        "--batch",
        str(args.batch),
        "--base-channels",
        str(args.base_channels),
    ]
    procs = [
        subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(copies)
    ]
    for proc in procs:  # every child has warmed up ...
        proc.stdout.readline()
    for proc in procs:  # ... before any starts its clock
        proc.stdin.write("go\n")
        proc.stdin.flush()
    outputs = [proc.communicate()[0] for proc in procs]
    if any(proc.returncode for proc in procs):
        raise SystemExit(f"shared_cpu: a {mode} run failed")
    return [json.loads(out.strip().splitlines()[-1]) for out in outputs]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    variants = [(mode, {}) for mode in MODES]
    if args.passive:
        variants += [(mode, {"OMP_WAIT_POLICY": "PASSIVE"}) for mode in MODES]
    results = []
    for mode, extra in variants:
        env = {**os.environ, **extra}
        if not extra:
            env.pop("OMP_WAIT_POLICY", None)
        lone = run_together(mode, 1, args, env)[0]
        pair = run_together(mode, 2, args, env)
        results.append(
            {
                "mode": mode,
                "env": extra,
                "threads": lone["threads"],
                "lone": lone["images_per_s"],
                "pair": [r["images_per_s"] for r in pair],
                "share": [r["images_per_s"] / lone["images_per_s"] for r in pair],
            }
        )
    return {
        "cores": len(os.sched_getaffinity(0)),
        "workers": args.workers,
        "image_size": args.image_size,
        "batch": args.batch,
        "seconds": args.seconds,
        "results": results,
    }


def print_report(report: dict[str, Any], loads: tuple[float, float]) -> None:
    print(
        f"{report['cores']} cores, {report['workers']} DataLoader workers per run, U-Net at "
        f"{report['image_size']} px, batch {report['batch']}, {report['seconds']:g} s windows; "
        f"load average {loads[0]:.1f} before, {loads[1]:.1f} after"
    )
    best_lone = max(r["lone"] for r in report["results"])
    print(
        f"{'mode':72s} {'threads':>7s} {'lone':>6s} {'two at once (each)':>19s} {'share of lone':>14s} "
        f"{'of fastest lone':>16s}"
    )
    for r in report["results"]:
        label = MODES[r["mode"]] + (" + OMP_WAIT_POLICY=PASSIVE" if r["env"] else "")
        pair = " / ".join(f"{v:.0f}" for v in r["pair"])
        share = " / ".join(f"{v:.2f}" for v in r["share"])
        of_best = " / ".join(f"{v / best_lone:.2f}" for v in r["pair"])
        print(f"{label:72s} {r['threads']:7d} {r['lone']:6.0f} {pair:>19s} {share:>14s} {of_best:>16s}")
    print(f"(images/s; the fastest lone run: {best_lone:.0f})")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    before = os.getloadavg()[0]
    report = measure(args)
    print_report(report, (before, os.getloadavg()[0]))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
