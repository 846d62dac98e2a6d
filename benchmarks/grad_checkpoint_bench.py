"""Gradient checkpointing (``model.grad_checkpointing``): the peak memory a training step saves and the
step time it pays.

``python benchmarks/grad_checkpoint_bench.py [--models unet/classic timm/resnet18] [--size 256]
[--batch 8] [--steps 3] [--repeats 2] [--threads 2] [--device cpu]`` runs, for each model, without and
with checkpointing, one warm-up and ``--steps`` timed training steps (forward, a mean-square loss,
backward, SGD step) on random ``--size`` px images, each setting in a fresh subprocess, the two settings
alternating ``--repeats`` times. A setting's step time is its fastest step over all of them (on shared
CPUs the others only measure the neighbours), its peak memory the largest. Peak memory: on CUDA
``torch.cuda.max_memory_allocated``; on the CPU the process's peak resident set (``getrusage`` maxrss,
which tracemalloc cannot see for torch's tensors) less the resident set before the first step, so it
counts what training allocates beyond the model and the batch. Prints a table.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Sequence

import torch

from pipeline.models import networks

UNET = {"base_channels": 16, "depth": 3, "upsampling": "bilinear"}  # the shipped params.yaml's U-Net


def build(model: str, size: int) -> torch.nn.Module:
    """``source/name`` (unet/classic, unet/<timm encoder>, timm/<name>) as the model stage builds it."""
    source, name = model.split("/", 1)
    task = "segmentation" if source == "unet" else "classification"
    config = networks.architecture(
        {"source": source, "name": name, "in_chans": 3, "unet": UNET}, task=task, num_classes=2, image_size=size
    )
    return networks.build_model(config)


def measure(model_name: str, checkpointing: bool, size: int, batch: int, steps: int, device: str) -> dict[str, float]:
    """One setting, in this process: seconds per step and peak MiB above the state before training."""
    torch.manual_seed(0)
    target = torch.device(device)
    model = build(model_name, size).to(target).train()
    if checkpointing:
        networks.set_grad_checkpointing(model, model_name)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(batch, 3, size, size, device=target)

    def step() -> None:
        loss = model(x).float().square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if target.type == "cuda":
        torch.cuda.reset_peak_memory_stats(target)
        base_bytes = torch.cuda.memory_allocated(target)
    step()  # warm-up: the optimizer's state, the kernels' first calls
    if target.type == "cuda":
        torch.cuda.synchronize(target)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        if target.type == "cuda":
            torch.cuda.synchronize(target)
        times.append(time.perf_counter() - started)
    if target.type == "cuda":
        peak_mib = (torch.cuda.max_memory_allocated(target) - base_bytes) / 2**20
    else:
        peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kib) / 1024
    return {"step_s": min(times), "peak_mib": peak_mib}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["unet/classic", "timm/resnet18"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "ON"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:  # one setting in a fresh process: its peak memory is its own
        model_name, on = args.child
        print(json.dumps(measure(model_name, on == "1", args.size, args.batch, args.steps, args.device)))
        return
    common = [f"--{k}={getattr(args, k)}" for k in ("size", "batch", "steps", "threads", "device")]
    print(
        f"{args.device}, {args.size} px, batch {args.batch}, {args.threads} threads, "
        f"fastest of {args.steps} steps x {args.repeats} runs"
    )
    print(f"{'model':<18} {'peak MiB off':>12} {'on':>8} {'saved':>7} {'step s off':>10} {'on':>7} {'paid':>7}")
    for model_name in args.models:
        runs: dict[str, list[dict[str, float]]] = {"0": [], "1": []}
        for _ in range(args.repeats):
            for on, found in runs.items():
                cmd = [sys.executable, __file__, *common, "--child", model_name, on]
                found.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
        off, on_ = (
            {"step_s": min(r["step_s"] for r in found), "peak_mib": max(r["peak_mib"] for r in found)}
            for found in runs.values()
        )
        saved = 1 - on_["peak_mib"] / off["peak_mib"]
        paid = on_["step_s"] / off["step_s"] - 1
        print(
            f"{model_name:<18} {off['peak_mib']:>12.0f} {on_['peak_mib']:>8.0f} {saved:>7.0%} "
            f"{off['step_s']:>10.2f} {on_['step_s']:>7.2f} {paid:>+7.0%}"
        )


if __name__ == "__main__":
    main()
