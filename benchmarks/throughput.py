"""Throughput: the train stage against a raw PyTorch loop, and the data path, in images/s.

Measures in one process, on one device, with one model, batch size and precision:

  (a) raw_loop    a plain loop on float tensors already normalised on the device (the ceiling):
                  autocast forward, float32 loss, backward, clip, step; same channels_last/compile;
  (b) train_step  the train stage's own step (``pipeline.training.loop.TrainStep``) on the same
                  synthetic data, as uint8 on the host the way the loader gives it (pinned memory on CUDA);
  (c) data        ManifestDataset + the params.yaml training augmentation + a DataLoader with
                  ``--workers`` persistent workers (prefetch, pin_memory on CUDA), no model, over
                  the split's train set (``--offline``: the offline cache instead);
  (d) end_to_end  ``python -m stages.train`` in a temp workspace (the split and model stages run first,
                  tracking off), two epochs of about ``--steps`` batches each: the second epoch's
                  ``images_per_s`` from the stage's own history (the first pays for start-up).

and prints the ratios b/a (target 0.95 on a GPU) and d/min(a, c) (target 0.9). Each of (a), (b) and
(c) is warmed up, then timed ``--rounds`` times (``--steps`` batches each; (a) and (b) alternate) and
its best round counts, so a busy host skews them alike. On CUDA it also counts the host syncs per step
of (a) and (b) (``torch.cuda.set_sync_debug_mode``). On a shared CPU host, ``--threads 1`` gives steadier
figures. Not a test: run it by hand (``--smoke`` is what tests/test_throughput.py runs).

    python benchmarks/throughput.py --smoke                      # CPU: tiny U-Net, seconds
    python benchmarks/throughput.py --model unet --image-size 256 --batch 32 --precision bf16
    python benchmarks/throughput.py --model resnet50 --image-size 224 --batch 256 --compile --json r.json
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from benchmarks import host_cost  # noqa: E402
from pipeline.atomic import write_json  # noqa: E402
from pipeline.augment.cache import OfflineCacheDataset  # noqa: E402
from pipeline.augment.transform import build_transform  # noqa: E402
from pipeline.config.errors import PipelineError  # noqa: E402
from pipeline.config.params import load_params  # noqa: E402
from pipeline.data.dataset import ManifestDataset  # noqa: E402
from pipeline.data.manifest import load_manifest  # noqa: E402
from pipeline.models.file import load_model  # noqa: E402
from pipeline.models.input_contract import resolve_device  # noqa: E402
from pipeline.seeding import loader_generator, worker_init_fn  # noqa: E402
from pipeline.training.batches import to_device  # noqa: E402
from pipeline.training.loop import TrainStep  # noqa: E402
from pipeline.training.losses import build_loss  # noqa: E402
from pipeline.training.optimizer import build_optimizer, parameter_groups  # noqa: E402
from pipeline.training.precision import resolve_precision  # noqa: E402
from pipeline.training.scheduler import build_scheduler  # noqa: E402
from stages import augment as augment_stage  # noqa: E402
from stages import decode as decode_stage  # noqa: E402
from stages import model as model_stage  # noqa: E402
from stages import split as split_stage  # noqa: E402
from stages import train as train_stage  # noqa: E402

SMOKE = {
    "model": "unet",
    "image_size": 32,
    "batch": 4,
    "steps": 5,
    "warmup": 2,
    "rounds": 2,
    "workers": 2,
    "threads": 1,
    "unet_base_channels": 4,
    "unet_depth": 2,
}
LABELS = {
    "raw_loop": "(a) raw PyTorch loop, synthetic",
    "train_step": "(b) train stage's step, synthetic",
    "data": "(c) data path alone",
    "end_to_end": "(d) train stage end to end",
}
RATIOS = {"b/a": ("train_step", ("raw_loop",)), "d/min(a,c)": ("end_to_end", ("raw_loop", "data"))}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = yaml.safe_load((REPO / "params.yaml").read_text())["model"]["unet"]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--model",
        default="unet",
        help="unet (classic), unet/<timm encoder>, a torchvision "
        "name (resnet50) or timm/<name>; non-U-Nets train on data/shapes-cls",
    )
    p.add_argument("--image-size", type=int, default=None, help="square side (default 256, smoke 32)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 32, smoke 4)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto")
    p.add_argument(
        "--channels-last", action=argparse.BooleanOptionalAction, default=None, help="default: auto (on for CUDA)"
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: CPUs, at most 16)")
    p.add_argument("--steps", type=int, default=None, help="timed steps/batches per figure (default 50)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5, 20 with --compile)")
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="(a) and (b) are timed alternately this many times; the best round counts (default 3)",
    )
    p.add_argument(
        "--unet-base-channels",
        type=int,
        default=None,
        help=f"classic U-Net width (default params.yaml's {defaults['base_channels']}, smoke 4)",
    )
    p.add_argument(
        "--unet-depth",
        type=int,
        default=None,
        help=f"U-Net levels (default params.yaml's {defaults['depth']}, smoke 2)",
    )
    p.add_argument("--offline", action="store_true", help="(c) and (d) read the offline augmentation cache")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads of this process (default: torch's; smoke 1, steadier on a shared host)",
    )
    p.add_argument(
        "--smoke", action="store_true", help="tiny U-Net, 32 px, batch 4, a few steps, one thread (the CPU test)"
    )
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--table", nargs="+", metavar="JSON", help="print one table of earlier --json results and exit")
    args = p.parse_args(argv)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    fallback = {
        "image_size": 256,
        "batch": 32,
        "steps": 50,
        "rounds": 3,
        "warmup": 20 if args.compile else 5,
        "workers": min(cpus, 16),
        "threads": None,
        "unet_base_channels": defaults["base_channels"],
        "unet_depth": defaults["depth"],
    }
    for key, value in fallback.items():
        if getattr(args, key) is None:
            setattr(args, key, SMOKE[key] if args.smoke and key in SMOKE else value)
    return args


# --- the temp workspace: the stages themselves build the split and the initial weights ----------


def model_settings(name: str) -> dict[str, Any]:
    """params.yaml overrides for ``--model``: a U-Net segments shapes-seg, anything else classifies
    shapes-cls."""
    if name == "unet" or name.startswith("unet/"):
        return {
            "model.source": "unet",
            "model.name": name.partition("/")[2] or "classic",
            "data.task": "segmentation",
            "dataset": "shapes-seg",
            "data.num_classes": 2,
        }
    source, _, model = name.rpartition("/")
    return {
        "model.source": source or "torchvision",
        "model.name": model,
        "data.task": "classification",
        "dataset": "shapes-cls",
        "data.num_classes": None,
        "loss": {"name": "cross_entropy", "params": {}, "terms": []},
    }


def _copy_repeated(src: Path, dst: Path, repeat: int) -> None:
    """``src`` into ``dst`` ``repeat`` times (name suffix ``_rK``), hard-linked where possible."""
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        for k in range(repeat):
            target = dst / path.relative_to(src).with_stem(f"{path.stem}_r{k}")
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, target)
            except OSError:
                shutil.copyfile(path, target)


def build_workspace(ws: Path, args: argparse.Namespace) -> Path:
    """params.yaml (the repo's, with the benchmark's settings, tracking off) and a dataset sized so
    that an epoch is about ``--steps`` batches; the split and model stages (and with ``--offline``
    the augment stage) run on it, and the decode stage, so (d) reads the decoded cache. Returns the params path."""
    overrides = model_settings(args.model)
    src = REPO / "data" / overrides.pop("dataset")
    images = sum(1 for p in src.rglob("*.png") if "masks" not in p.parts)
    train_n, val_n = args.steps * args.batch + max(1, args.batch // 2), max(args.batch, 8)
    repeat = -(-(train_n + val_n + 2) // images)
    total = images * repeat
    _copy_repeated(src, ws / "data", repeat)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    overrides.update(
        {
            "data.root": "data",
            "data.image_size": [args.image_size] * 2,
            "split.fractions": {
                "train": train_n / total,
                "val": val_n / total,
                "test": 1 - train_n / total - val_n / total,
            },
            "augment.offline": {**params["augment"]["offline"], "enabled": args.offline, "copies": 2},
            "model.pretrained": False,
            "model.freeze": "none",
            "model.num_classes": None,
            "model.unet": {
                **params["model"]["unet"],
                "base_channels": args.unet_base_channels,
                "depth": args.unet_depth,
            },
            "precision.dtype": args.precision,
            "precision.compile": args.compile,
            "precision.channels_last": "auto" if args.channels_last is None else args.channels_last,
            "train.epochs": 2,
            "train.batch_size": args.batch,
            "train.workers": args.workers,
            "train.device": args.device,
            "train.resume": False,
            "train.accumulate": 1,
            "train.early_stopping.patience": None,
            "tracking.enabled": False,
        }
    )
    for key, value in overrides.items():
        *parents, last = key.split(".")
        node = params
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    path = ws / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    # decode: training and validation read the decoded cache (data.cache: decoded, the default)
    stages = [split_stage, decode_stage] + ([augment_stage] if args.offline else []) + [model_stage]
    for stage in stages:
        if stage.main(["--params", str(path)]) != 0:
            raise PipelineError(f"the {stage.__name__} stage failed on the benchmark workspace {ws}")
    return path


# --- the four measurements ----------------------------------------------------------------------


def timed_rate(run_one: Callable[[], Any], *, steps: int, batch: int, device: torch.device) -> float:
    """images/s of ``steps`` calls, the device synced before and after (no sync inside)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda _: None
    sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        run_one()
    sync(device)
    return steps * batch / (time.perf_counter() - started)


def best_rates(
    steps_by_name: dict[str, Callable[[], Any]], args: argparse.Namespace, device: torch.device
) -> dict[str, float]:
    """Warm every step up, then time them in alternating rounds and keep each one's best round: a
    shared or busy host (and CPU clocks) then skews both alike instead of whichever ran first."""
    for run_one in steps_by_name.values():
        for _ in range(args.warmup):
            run_one()
    best = dict.fromkeys(steps_by_name, 0.0)
    for _ in range(args.rounds):
        for name, run_one in steps_by_name.items():
            rate = timed_rate(run_one, steps=args.steps, batch=args.batch, device=device)
            best[name] = max(best[name], rate)
    return best


def host_syncs_per_step(run_one: Callable[[], Any], steps: int = 3) -> float:
    """CUDA: synchronising calls per step, as ``torch.cuda.set_sync_debug_mode`` reports them."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                run_one()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught) / steps


def synthetic_batch(task: str, batch: int, size: int, num_outputs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N,3,H,W] and targets as the DataLoader gives them (seg: uint8 masks, cls: int64)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator)
    if task == "segmentation":
        classes = max(num_outputs, 2)
        targets = torch.randint(0, classes, (batch, size, size), dtype=torch.uint8, generator=generator)
    else:
        targets = torch.randint(0, num_outputs, (batch,), dtype=torch.int64, generator=generator)
    return images, targets


def raw_loop(view: Any, init: Path, plan: Any, args: argparse.Namespace) -> Callable[[], None]:
    """(a): plain PyTorch on float tensors already normalised on the device."""
    model, info = load_model(init, trust_code=True)  # the model stage's output of this workspace
    device, cfg, opt_cfg = plan.device, view["train"], view["optimizer"]
    net = model.to(device)
    if plan.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if plan.compile:
        net = torch.compile(net)
    net.train()
    images, targets = synthetic_batch(view["data.task"], args.batch, args.image_size, info.num_outputs)
    x = torch.randn(images.shape, device=device)
    x = x.contiguous(memory_format=torch.channels_last) if plan.channels_last else x
    y = targets.to(device).long()
    loss_fn = build_loss(view["loss"], task=view["data.task"], num_outputs=info.num_outputs)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = getattr(torch.optim, opt_cfg["name"])(params, lr=opt_cfg["lr"], **opt_cfg["params"])
    scaler = torch.amp.GradScaler(device.type, enabled=plan.dtype == torch.float16)
    autocast = torch.autocast(device.type, dtype=plan.dtype, enabled=plan.dtype != torch.float32)

    def step() -> None:
        with autocast:
            logits = net(x)
        scaler.scale(loss_fn(logits, y)).backward()
        if cfg["grad_clip"] is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, cfg["grad_clip"])
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return step


def stage_step(view: Any, init: Path, plan: Any, args: argparse.Namespace) -> Callable[[], None]:
    """(b): ``TrainStep`` with the stage's loss and optimizer, uint8 batches from the host."""
    model, info = load_model(init, trust_code=True)  # the model stage's output of this workspace
    net = plan.prepare_model(model)
    net.train()
    loss_fn = build_loss(view["loss"], task=view["data.task"], num_outputs=info.num_outputs)
    optimizer = build_optimizer(view["optimizer"], parameter_groups(model, info, view["model.lr_mult"]))
    no_schedule = build_scheduler({"name": "none"}, optimizer, epochs=1, steps_per_epoch=1)  # timing the step alone
    step_fn = TrainStep(net, loss_fn, optimizer, plan, no_schedule, grad_clip=view["train"]["grad_clip"])
    images, targets = synthetic_batch(view["data.task"], args.batch, args.image_size, info.num_outputs)
    if plan.device.type == "cuda":
        images, targets = images.pin_memory(), targets.pin_memory()

    def step() -> None:
        step_fn(*to_device(images, targets, plan.device, channels_last=plan.channels_last), apply=True)

    return step


def data_path(view: Any, root: Path, device: torch.device, args: argparse.Namespace) -> float:
    """(c): persistent workers over the train split, best epoch after the first (which starts them)."""
    if args.offline:
        dataset = OfflineCacheDataset(root / "outputs/augment/cache")
    else:
        manifest = load_manifest(root / "outputs/split/manifest.json")
        transform = build_transform(
            view["augment.train"], task=view["data.task"], random_order=view["augment.random_order"]
        )
        dataset = ManifestDataset(
            manifest,
            "train",
            root=view.resolve_path(manifest.root),
            image_size=view["data.image_size"],
            transform=transform,
        )
    workers = args.workers
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        worker_init_fn=worker_init_fn if workers else None,
        generator=loader_generator(0),
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers else None,
    )
    for _ in loader:  # warm-up epoch: starts the workers
        pass
    rate = 0.0
    for _ in range(args.rounds):  # the best of ``--rounds`` epochs, as for (a) and (b)
        started, seen = time.perf_counter(), 0
        for images, _ in loader:
            seen += images.shape[0]
        rate = max(rate, seen / (time.perf_counter() - started))
    del loader  # stops the persistent workers before (d) starts its own
    gc.collect()
    return rate


def end_to_end(params_path: Path) -> dict[str, Any]:
    """(d): the train stage itself; its history's images_per_s of epoch 2 (epoch 1 includes start-up)."""
    started = time.perf_counter()
    if train_stage.main(["--params", str(params_path)]) != 0:
        raise PipelineError("the train stage failed on the benchmark workspace")
    wall = time.perf_counter() - started
    with open(params_path.parent / "outputs/train/history.csv", newline="") as fh:
        history = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]
    return {
        "images_per_s": history[-1]["images_per_s"],
        "epochs": len(history),
        "stage_wall_s": wall,
        "source": "history.csv images_per_s of epoch 2 (train loop only; epoch 1 is warm-up)",
    }


# --- report ---------------------------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def measure(args: argparse.Namespace, ws: Path) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device, key="--device")
    # Checked before any work, so an impossible setting (fp16 on a CPU) fails at once.
    resolve_precision(
        {
            "dtype": args.precision,
            "compile": args.compile,
            "channels_last": "auto" if args.channels_last is None else args.channels_last,
        },
        device,
    )
    params_path = build_workspace(ws, args)
    view = load_params(params_path).view(train_stage.PARAMS + ("model.source",), stage="throughput")
    plan = resolve_precision(view["precision"], device)  # exactly the plan the train stage makes
    torch.backends.cudnn.benchmark = device.type == "cuda"  # as the train stage sets it (not deterministic)
    init = ws / "outputs/model/init.safetensors"
    steps = {"raw_loop": raw_loop(view, init, plan, args), "train_step": stage_step(view, init, plan, args)}
    figures = best_rates(steps, args, device)
    syncs = {name: host_syncs_per_step(step) for name, step in steps.items()} if device.type == "cuda" else None
    del steps
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    figures["data"] = data_path(view, ws, device, args)
    # (c) as host cost: online imgaug against the decoded cache + device augmentation, at 224 px JPEGs
    host = host_cost.measure(
        view["augment.train"],
        size=224,
        images=16 if args.smoke else 64,
        batch=args.batch,
        rounds=args.rounds,
        random_order=view["augment.random_order"],
    )
    e2e = end_to_end(params_path)
    figures["end_to_end"] = e2e.pop("images_per_s")
    ratios = {name: figures[num] / min(figures[d] for d in dens) for name, (num, dens) in RATIOS.items()}
    settings = {
        "model": args.model,
        "source": view["model.source"],
        "task": view["data.task"],
        "image_size": args.image_size,
        "batch": args.batch,
        "precision": plan.name,
        "channels_last": plan.channels_last,
        "compile": plan.compile,
        "workers": args.workers,
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "threads": torch.get_num_threads(),
        "offline_cache": args.offline,
        "optimizer": view["optimizer"]["name"],
        "loss": view["loss"]["name"],
        "grad_clip": view["train"]["grad_clip"],
    }
    if view["model.source"] == "unet":
        settings["unet"] = {"base_channels": args.unet_base_channels, "depth": args.unet_depth}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # a busy host skews CPU figures
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "settings": settings,
        "load_average": load,
        "images_per_s": figures,
        "ratios": ratios,
        "end_to_end": e2e,
        "host_syncs_per_step": syncs,
        "host_ms_per_sample": host,
    }


def print_report(result: dict[str, Any]) -> None:
    load = "" if result["load_average"] is None else f"; load average {result['load_average']:.1f}"
    print(f"\ndevice: {result['device']}; torch {result['torch']}{load}")
    print("settings: " + ", ".join(f"{k} {v}" for k, v in result["settings"].items()))
    print(f"{'':40s} {'images/s':>10s}")
    for key, label in LABELS.items():
        print(f"{label:40s} {result['images_per_s'][key]:10.1f}")
    for name, value in result["ratios"].items():
        print(f"{'ratio ' + name:40s} {value:10.3f}")
    if result["host_syncs_per_step"]:
        print("host syncs per step: " + ", ".join(f"{k} {v:g}" for k, v in result["host_syncs_per_step"].items()))
    print(f"(d) is {result['end_to_end']['source']}; the stage took {result['end_to_end']['stage_wall_s']:.1f} s")
    host = result["host_ms_per_sample"]
    fast = (
        "no device version of the chain"
        if host["fast"] is None
        else f"fast {host['fast']:.3f} (decoded read {host['read']:.3f} + device-aug draw {host['draw']:.3f}), "
        f"{host['ratio']:.1f}x lower"
    )
    print(f"(c) host ms per sample at {host['size']} px JPEGs: online {host['online']:.3f}; {fast}")


def print_table(paths: list[str]) -> None:
    """One row per earlier result (gpu_check.sh's summary): the four figures, the ratios, host syncs per
    step of (a) and (b), and the host milliseconds per sample of the online and the fast data path."""
    import json

    columns = ("run", "device", "(a)", "(b)", "(c)", "(d)", "b/a", "d/min", "syncs a/b", "host ms online/fast")
    rows = [columns]
    for path in paths:
        r = json.loads(Path(path).read_text())
        rates, syncs, host = r["images_per_s"], r.get("host_syncs_per_step") or {}, r.get("host_ms_per_sample") or {}
        rows.append(
            (
                Path(path).stem,
                r["device"][:24],
                *(f"{rates[k]:.0f}" for k in LABELS),
                *(f"{v:.3f}" for v in r["ratios"].values()),
                f"{syncs.get('raw_loop', float('nan')):g}/{syncs.get('train_step', float('nan')):g}",
                f"{host.get('online', float('nan')):.3f}/{host.get('fast', float('nan')):.3f}",
            )
        )
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(columns))]
    for row in rows:
        print("  ".join(str(cell).rjust(width) for cell, width in zip(row, widths)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.table:
        print_table(args.table)
        return 0
    try:
        with tempfile.TemporaryDirectory(prefix="throughput-") as tmp:
            result = measure(args, Path(tmp))
    except PipelineError as exc:
        print(f"throughput: error: {exc}", file=sys.stderr)
        return 2
    print_report(result)
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
