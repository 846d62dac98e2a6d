"""The train stage: a flat, readable loop over the pieces the other modules build.

``python -m stages.train`` reads the split manifest, the augmentation (online, or the offline cache),
and the initial weights from the model stage; trains with the declared loss, optimizer, scheduler and
precision; checkpoints every epoch (resumable); writes the best weights, per-epoch history (DVC plots),
final metrics (DVC metrics) and the MLflow run id that evaluate logs into.
"""
from __future__ import annotations

import csv
import io
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.tracking import run as tracking
from pipeline import outputs
from pipeline.atomic import write_json, write_text
from pipeline.config.params import ParamsView, flatten
from pipeline.config.errors import PipelineError
from pipeline.seeding import loader_generator, seed_everything, worker_init_fn
from pipeline.stage import run_stage
from pipeline.training import checkpoint
from pipeline.training import distributed as dist
from pipeline.augment.cache import OfflineCacheDataset
from pipeline.augment.transform import build_transform
from pipeline.data.dataset import ManifestDataset
from pipeline.data.manifest import load_manifest
from pipeline.training.device import resolve_device, to_device
from pipeline.training.loss import build_loss
from pipeline.training.metrics import make_meter
from pipeline.plots import draw_history, save_png
from pipeline.training.optimizer import parameter_groups
from pipeline.models.file import load_model, save_model
from pipeline.training.optimizer import build_optimizer
from pipeline.training.precision import resolve_precision
from pipeline.training.scheduler import build_scheduler

PARAMS = (
    "data.task", "data.image_size", "augment.train", "augment.eval", "augment.random_order",
    "augment.offline", "model.lr_mult", "loss", "optimizer", "scheduler", "precision", "train",
    "tracking",
)
MANIFEST = outputs.MANIFEST
CACHE = outputs.AUGMENT_CACHE
PREVIEW = outputs.AUGMENT_PREVIEW
INIT = outputs.MODEL_INIT
OUT = outputs.TRAIN


def resolve_monitor(task: str, monitor: str, mode: str) -> tuple[str, str]:
    """``auto`` -> val_dice (segmentation) / val_accuracy (classification); mode from the name."""
    if monitor == "auto":
        monitor = "val_dice" if task == "segmentation" else "val_accuracy"
    if mode == "auto":
        mode = "min" if monitor.endswith("loss") else "max"
    return monitor, mode


def epoch_seed(seed: int, epoch: int) -> int:
    """Each epoch's randomness derives from (seed, epoch) alone, so a resumed run replays it exactly."""
    return (seed * 1_000_003 + epoch * 7919) % (2**31 - 1)


def _loader(dataset: Any, cfg: dict[str, Any], device: torch.device, *, shuffle: bool,
            generator: torch.Generator | None = None, sampler: Any = None) -> DataLoader:
    workers = cfg["workers"]
    share = len(sampler) if sampler is not None else len(dataset)  # this rank's samples
    return DataLoader(
        dataset, batch_size=cfg["batch_size"], shuffle=shuffle and sampler is None, sampler=sampler,
        num_workers=workers, worker_init_fn=worker_init_fn if workers else None, generator=generator,
        pin_memory=device.type == "cuda", drop_last=shuffle and share > cfg["batch_size"],
        prefetch_factor=4 if workers else None)


def make_train_step(net: torch.nn.Module, loss_fn: Any, optimizer: torch.optim.Optimizer, plan: Any, *,
                    grad_clip: float | None, accumulate: int) -> Any:
    """The one training step the loop (and the throughput benchmark) runs: uint8 batch -> device,
    forward under autocast, float32 loss, backward, and when ``apply`` the optimizer step (unscale,
    clip, step). Returns ``(detached loss, stepped)``; nothing here syncs with the host. A DDP ``net``
    all-reduces gradients only on stepping micro-batches (``no_sync`` on the others)."""

    def step(images: torch.Tensor, targets: torch.Tensor, *, apply: bool) -> tuple[torch.Tensor, bool]:
        x, y = to_device(images, targets, plan.device, channels_last=plan.channels_last)
        with dist.maybe_no_sync(net, apply):
            with plan.autocast():
                logits = net(x)
            loss = loss_fn(logits, y)
            stepped = plan.backward_and_step(loss / accumulate, optimizer, model=net, grad_clip=grad_clip,
                                             step=apply)
        return loss.detach(), stepped

    return step


def _evaluate(model: torch.nn.Module, loader: DataLoader, loss_fn: Any, meter: Any, plan: Any,
              device: torch.device, ctx: dist.Context = dist.SINGLE) -> dict[str, float]:
    """Validation loss and metrics; under DDP each rank scores its shard and the confusion matrix, loss
    sum and count are all-reduced, so every rank gets the numbers of the whole split."""
    model.eval()
    meter.reset()
    total = torch.zeros((), device=device)
    count = 0
    with torch.no_grad(), plan.autocast():
        for images, targets in loader:
            x, y = to_device(images, targets, device, channels_last=plan.channels_last)
            logits = model(x)
            total += loss_fn(logits, y).detach().float() * x.shape[0]
            count += x.shape[0]
            meter.update(logits.float(), y)
    total, count = dist.reduce_meter(meter, total, count, ctx)
    metrics = {f"val_{k}": v for k, v in meter.compute().items() if "/" not in k}
    metrics["val_loss"] = float(total.item() / max(count, 1))
    return metrics


def _history_csv(rows: list[dict[str, float]]) -> str:
    buffer = io.StringIO()
    columns = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def train(view: ParamsView) -> dict[str, Any]:
    """Train on the split manifest from the model stage's initial weights; return final metrics."""
    cfg, task, root = view["train"], view["data.task"], view.root
    manifest_path = outputs.require(root, MANIFEST)
    init_path = outputs.require(root, INIT)
    offline = view["augment.offline"]
    inputs = [manifest_path, init_path] + ([root / CACHE] if offline["enabled"] else [])
    fp = checkpoint.fingerprint({key: view[key] for key in PARAMS if key != "tracking"}, inputs)
    ckpt_path = root / OUT / "checkpoint" / "last.pt"
    state = checkpoint.load_resumable(ckpt_path, fp) if cfg["resume"] else None  # every rank: same file
    model, info = load_model(init_path)
    hint = f"{task}-{info.config['name']}"
    device = resolve_device(cfg["device"], key="train.device")
    ctx, device = dist.setup(cfg["devices"], device)
    # Opening the run first fails fast on an unreachable tracking server, before any work. Only rank 0
    # records anything; the other ranks get the do-nothing run.
    tracking_cfg = view["tracking"] if ctx.is_main else {**view["tracking"], "enabled": False}
    with tracking.start_run(tracking_cfg, repo_root=root, run_name=hint,
                            run_id=state["run_id"] if state else None) as run:
        if state is None:
            run.log_params(flatten(view.all_params()))
        metrics = _fit(view, run, model, info, state, fp, ctx, device)
    dist.teardown(ctx)
    return metrics


def _fit(view: ParamsView, run: Any, model: torch.nn.Module, info: Any, state: dict[str, Any] | None,
         fp: str, ctx: dist.Context, device: torch.device) -> dict[str, Any]:
    cfg, task, root = view["train"], view["data.task"], view.root
    manifest = load_manifest(root / MANIFEST)
    if cfg["deterministic"] or torch.are_deterministic_algorithms_enabled():  # the call imports dynamo (s)
        torch.use_deterministic_algorithms(cfg["deterministic"], warn_only=device.type == "cuda")
    torch.backends.cudnn.benchmark = device.type == "cuda" and not cfg["deterministic"]
    plan = resolve_precision(view["precision"], device)
    monitor, mode = resolve_monitor(task, cfg["early_stopping"]["monitor"], cfg["early_stopping"]["mode"])
    seed_everything(cfg["seed"])

    image_size, data_root = view["data.image_size"], view.resolve_path(manifest.root)
    if view["augment.offline"]["enabled"]:
        train_set = OfflineCacheDataset(root / CACHE)
        if train_set.index.get("manifest_fingerprint") != manifest.fingerprint:
            raise PipelineError(f"{root / CACHE} was built from another split; re-run the augment stage "
                                "(dvc repro augment)")
    else:
        train_set = ManifestDataset(manifest, "train", root=data_root, image_size=image_size,
                                    transform=build_transform(view["augment.train"], task=task,
                                                              random_order=view["augment.random_order"]))
    val_set = ManifestDataset(manifest, "val", root=data_root, image_size=image_size,
                              transform=build_transform(view["augment.eval"], task=task))
    if len(train_set) == 0 or len(val_set) == 0:
        raise PipelineError("the train or validation split is empty; adjust split.fractions")
    generator = loader_generator(cfg["seed"])
    sampler = dist.train_sampler(train_set, ctx, seed=cfg["seed"])
    train_loader = _loader(train_set, cfg, device, shuffle=True, generator=generator, sampler=sampler)
    val_loader = _loader(val_set, cfg, device, shuffle=False, sampler=dist.eval_sampler(val_set, ctx))

    net = plan.prepare_model(model)  # ``model`` stays the plain module for state dicts
    ddp_net = dist.wrap_model(net, ctx, device, sync_batchnorm=cfg["sync_batchnorm"])  # ``net`` when single
    loss_fn = build_loss(view["loss"], task=task, num_outputs=info.config["num_outputs"])
    optimizer = build_optimizer(view["optimizer"], parameter_groups(model, info, view["model.lr_mult"]))
    lr_factor = ctx.world_size if cfg["scale_lr"] else 1
    for group in optimizer.param_groups:  # before the scheduler records its initial learning rates
        group["lr"] *= lr_factor
    dist.print_effective_batch(ctx, cfg["batch_size"], cfg["accumulate"], view["optimizer"]["lr"], lr_factor)
    schedule = build_scheduler(view["scheduler"], optimizer, epochs=cfg["epochs"],
                               steps_per_epoch=math.ceil(len(train_loader) / cfg["accumulate"]),
                               monitor=monitor)
    meter = make_meter(task, manifest.num_classes, class_names=manifest.class_names)

    out = root / OUT
    history: list[dict[str, float]] = []
    best, best_epoch, stale, start_epoch = None, -1, 0, 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["scheduler"])
        plan.scaler.load_state_dict(state["scaler"])
        history, best, best_epoch, stale = state["history"], state["best"], state["best_epoch"], state["stale"]
        start_epoch = state["epoch"] + 1
        if ctx.is_main:
            print(f"train: resuming after epoch {start_epoch} from {out / 'checkpoint' / 'last.pt'}")
    else:
        run.set_tags({"dataset_fingerprint": manifest.fingerprint, "device": str(device),
                      "precision": plan.name})
        if (root / PREVIEW).exists():
            run.log_artifact(root / PREVIEW, "augment")

    train_step = make_train_step(ddp_net, loss_fn, optimizer, plan, grad_clip=cfg["grad_clip"],
                                 accumulate=cfg["accumulate"])
    min_delta, patience = cfg["early_stopping"]["min_delta"], cfg["early_stopping"]["patience"]
    better = (lambda a, b: a < b - min_delta) if mode == "min" else (lambda a, b: a > b + min_delta)
    accumulate, log_every = cfg["accumulate"], cfg["log_every_steps"]
    stopped_early = False
    epochs = tqdm(range(start_epoch, cfg["epochs"]), desc="epochs", initial=start_epoch,
                  total=cfg["epochs"], disable=None if ctx.is_main else True, file=sys.stdout)
    for epoch in epochs:
        # Every epoch's randomness derives from (seed, epoch): a resumed run replays it exactly.
        # Ranks add their rank, so their augmentations (and dropout) differ; rank 0 = a single run.
        seed_everything(epoch_seed(cfg["seed"], epoch) + ctx.rank)
        generator.manual_seed(epoch_seed(cfg["seed"], epoch) + ctx.rank)
        if sampler is not None:
            sampler.set_epoch(epoch)  # a new shuffle every epoch, the same on every rank
            dist.write_debug_samples(sampler, ctx, epoch)
        if hasattr(train_set, "set_epoch"):
            train_set.set_epoch(epoch)
        elif train_set.transform is not None:
            train_set.transform.reset()  # augmenters with private RNGs follow the new seed too
        ddp_net.train()
        running = torch.zeros((), device=device)
        bad_step = torch.full((), -1, dtype=torch.long, device=device)
        seen, started = 0, time.perf_counter()
        batches = tqdm(train_loader, desc=f"epoch {epoch + 1}", leave=False, disable=None if ctx.is_main else True,
                       file=sys.stdout)
        for step, (images, targets) in enumerate(batches):
            last = step + 1 == len(train_loader)
            loss, stepped = train_step(images, targets, apply=(step + 1) % accumulate == 0 or last)
            if stepped:
                schedule.step_batch()
            # The first non-finite step is recorded on the device and read back at log intervals only.
            bad_step = torch.where((bad_step < 0) & ~torch.isfinite(loss), step, bad_step)
            running += loss
            seen += images.shape[0]
            if (step + 1) % log_every == 0 or last:
                _raise_if_nonfinite(bad_step, epoch, ctx)
                batches.set_postfix(loss=f"{running.item() / (step + 1):.4f}")
        elapsed = time.perf_counter() - started
        totals = dist.all_reduce_sum(torch.stack([running.double(), torch.tensor(seen, device=device).double()]), ctx)
        row: dict[str, float] = {"epoch": epoch + 1,
                                 "train_loss": totals[0].item() / (len(train_loader) * ctx.world_size)}
        row.update(_evaluate(net, val_loader, loss_fn, meter, plan, device, ctx))
        row["lr"] = schedule.last_lr()[0]
        row["images_per_s"] = totals[1].item() / elapsed if elapsed > 0 else 0.0
        if monitor not in row:
            raise PipelineError(f"train.early_stopping.monitor {monitor!r} is not a validation metric; "
                                f"available: {', '.join(k for k in row if k.startswith('val_'))}")
        schedule.step_epoch(row)
        history.append(row)
        if best is None or better(row[monitor], best):
            best, best_epoch, stale = row[monitor], epoch + 1, 0
            if ctx.is_main:
                save_model(out / "best.safetensors", model, info)
        else:
            stale += 1
        stopped_early = patience is not None and stale >= patience
        run.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch + 1)
        if ctx.is_main:  # DDP keeps every rank's weights identical: rank 0's checkpoint serves all
            write_text(out / "history.csv", _history_csv(history))
            checkpoint.save(out / "checkpoint" / "last.pt", {
                "fingerprint": fp, "epoch": epoch, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": schedule.state_dict(),
                "scaler": plan.scaler.state_dict(), "history": history, "best": best,
                "best_epoch": best_epoch, "stale": stale, "run_id": run.run_id,
                "finished": stopped_early or epoch + 1 == cfg["epochs"]})
        epochs.set_postfix({monitor: f"{row[monitor]:.4f}"})
        if stopped_early:
            if ctx.is_main:
                print(f"train: early stop after epoch {epoch + 1}: {monitor} did not improve for {stale} "
                      "epochs")
            break

    final = {k: v for k, v in history[-1].items() if k != "epoch"}
    metrics = {**final, "epochs_run": len(history), "best_epoch": best_epoch,
               f"best_{monitor}": best, "stopped_early": stopped_early}
    if not ctx.is_main:
        return metrics
    write_json(out / "metrics.json", metrics)
    write_json(out / "run.json", {"run_id": run.run_id, "tracking_uri": run.uri})
    save_png(out / "history.png", draw_history(history))
    write_text(out / "params.resolved.yaml", yaml.safe_dump(view.all_params(), sort_keys=False))
    for name in ("history.csv", "history.png", "params.resolved.yaml"):
        run.log_artifact(out / name, "train")
    run.log_artifact(out / "best.safetensors", "model")
    print(f"train: best {monitor} {best:.4f} at epoch {best_epoch}; weights in {out / 'best.safetensors'}")
    return metrics


def _raise_if_nonfinite(bad_step: torch.Tensor, epoch: int, ctx: dist.Context = dist.SINGLE) -> None:
    """Stop on the first non-finite step; under DDP the ranks agree on the earliest one, so all stop."""
    step = int(dist.earliest_step(bad_step, ctx).item())
    if step >= 0:
        raise PipelineError(
            f"the loss became NaN or Inf at epoch {epoch + 1}, step {step + 1}; lower optimizer.lr, "
            f"set train.grad_clip, or use precision.dtype bf16/fp32")


def _body(view: ParamsView) -> None:
    """Train the model declared in params.yaml."""
    train(view)


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage("train", PARAMS, _body, argv)


if __name__ == "__main__":
    sys.exit(main())
