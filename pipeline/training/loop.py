"""The training loop, nanoGPT style: :func:`build` turns the params into data, model, loss, optimizer
and schedule once; :func:`fit` is then a flat loop over epochs (train, validate, record, checkpoint,
maybe stop). The train stage opens the tracking run around the two and writes the final outputs.

Every epoch's randomness derives from (train.seed, epoch) alone, so a run resumed from its checkpoint
replays exactly what the uninterrupted run would have done (bit for bit with train.deterministic on CPU).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline import outputs
from pipeline.atomic import write_text
from pipeline.augment.cache import OfflineCacheDataset
from pipeline.config.errors import PipelineError
from pipeline.config.params import ParamsView
from pipeline.data.dataset import ManifestDataset
from pipeline.data.manifest import Manifest
from pipeline.models.file import ModelInfo, save_model
from pipeline.seeding import loader_generator, seed_everything
from pipeline.training import checkpoint
from pipeline.training import distributed as dist
from pipeline.training.batches import to_device
from pipeline.training.early_stopping import EarlyStopping, resolve_monitor
from pipeline.training.feed import DeviceFeed
from pipeline.training.history import history_csv, validation_csv
from pipeline.training.inputs import augment_batch, datasets, make_loader
from pipeline.training.losses import build_loss
from pipeline.training.metrics import ConfusionMeter, make_meter
from pipeline.training.optimizer import build_optimizer, parameter_groups
from pipeline.training.precision import PrecisionPlan, resolve_precision
from pipeline.training.scheduler import LRSchedule, build_scheduler
from pipeline.training.scoring import LossSum, score
from pipeline.training.threads import apply_threads

# Part of the resume fingerprint: a checkpoint laid out otherwise (say, by an older loop) is not resumed.
CHECKPOINT_FORMAT = 2


def epoch_seed(seed: int, epoch: int) -> int:
    """Each epoch's randomness derives from (seed, epoch) alone, so a resumed run replays it exactly."""
    return (seed * 1_000_003 + epoch * 7919) % (2**31 - 1)


def make_train_step(
    net: torch.nn.Module,
    loss_fn: Any,
    optimizer: torch.optim.Optimizer,
    plan: Any,
    *,
    grad_clip: float | None,
    accumulate: int,
) -> Any:
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
            stepped = plan.backward_and_step(loss / accumulate, optimizer, model=net, grad_clip=grad_clip, step=apply)
        return loss.detach(), stepped

    return step


@dataclass
class Trainer:
    """Everything the build phase makes and the loop uses."""

    cfg: dict[str, Any]  # the train section
    ctx: dist.Context
    plan: PrecisionPlan
    model: torch.nn.Module  # the plain module: state dicts and saved weights
    info: ModelInfo
    net: torch.nn.Module  # prepared (device, channels_last, compile): validation
    ddp_net: torch.nn.Module  # ``net`` wrapped for DDP (``net`` itself when single)
    train_step: Any  # make_train_step over ``ddp_net``
    train_set: ManifestDataset | OfflineCacheDataset
    sampler: Any  # DDP's DistributedSampler, None when single
    generator: torch.Generator
    train_loader: DataLoader
    val_loader: DataLoader
    train_feed: DeviceFeed  # the loaders' batches on the device, copied ahead
    val_feed: DeviceFeed
    writer: checkpoint.BackgroundWriter  # checkpoints written off the training thread
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    meter: ConfusionMeter
    monitor: str
    stopper: EarlyStopping


def build(
    view: ParamsView,
    manifest: Manifest,
    model: torch.nn.Module,
    info: ModelInfo,
    ctx: dist.Context,
    device: torch.device,
) -> Trainer:
    """The build phase: numerics, seeds, data, model, loss, optimizer, schedule, meter, stopper."""
    cfg, task = view["train"], view["data.task"]
    apply_threads(cfg["threads"], workers=cfg["workers"])  # before any parallel work sizes the pools
    info.eval_augment = view["augment.eval"]  # the best weights' file says how evaluation prepares images
    # -- numerics and the run's seed
    if cfg["deterministic"] or torch.are_deterministic_algorithms_enabled():  # the call imports dynamo (s)
        torch.use_deterministic_algorithms(cfg["deterministic"], warn_only=device.type == "cuda")
    torch.backends.cudnn.benchmark = device.type == "cuda" and not cfg["deterministic"]
    plan = resolve_precision(view["precision"], device)
    stopping = cfg["early_stopping"]
    monitor, mode = resolve_monitor(task, stopping["monitor"], stopping["mode"])
    seed_everything(cfg["seed"])

    # -- data: each rank its shard of the training set, validation split likewise
    train_set, val_set = datasets(view, manifest)
    generator = loader_generator(cfg["seed"])
    sampler = dist.train_sampler(train_set, ctx, seed=cfg["seed"])
    train_loader = make_loader(train_set, cfg, device, shuffle=True, generator=generator, sampler=sampler)
    val_loader = make_loader(val_set, cfg, device, shuffle=False, sampler=dist.eval_sampler(val_set, ctx))

    # -- model, loss, optimizer, schedule
    net = plan.prepare_model(model)  # ``model`` stays the plain module for state dicts
    ddp_net = dist.wrap_model(net, ctx, device, sync_batchnorm=cfg["sync_batchnorm"])  # ``net`` when single
    loss_fn = build_loss(view["loss"], task=task, num_outputs=info.config["num_outputs"])
    optimizer = build_optimizer(view["optimizer"], parameter_groups(model, info, view["model.lr_mult"]))
    lr_factor = ctx.world_size if cfg["scale_lr"] else 1
    for group in optimizer.param_groups:  # before the scheduler records its initial learning rates
        group["lr"] *= lr_factor
    dist.print_effective_batch(ctx, cfg["batch_size"], cfg["accumulate"], view["optimizer"]["lr"], lr_factor)
    schedule = build_scheduler(
        view["scheduler"],
        optimizer,
        epochs=cfg["epochs"],
        steps_per_epoch=math.ceil(len(train_loader) / cfg["accumulate"]),
        monitor=monitor,
    )
    train_step = make_train_step(
        ddp_net, loss_fn, optimizer, plan, grad_clip=cfg["grad_clip"], accumulate=cfg["accumulate"]
    )
    return Trainer(
        cfg=cfg,
        ctx=ctx,
        plan=plan,
        model=model,
        info=info,
        net=net,
        ddp_net=ddp_net,
        train_step=train_step,
        train_set=train_set,
        sampler=sampler,
        generator=generator,
        train_loader=train_loader,
        val_loader=val_loader,
        train_feed=DeviceFeed(train_loader, device),
        val_feed=DeviceFeed(val_loader, device),
        writer=checkpoint.BackgroundWriter(),
        loss_fn=loss_fn,
        optimizer=optimizer,
        schedule=schedule,
        meter=make_meter(task, manifest.num_classes, class_names=manifest.class_names),
        monitor=monitor,
        stopper=EarlyStopping(mode=mode, min_delta=stopping["min_delta"], patience=stopping["patience"]),
    )


def fit(
    t: Trainer, run: Any, *, root: Path, fingerprint: str, state: dict[str, Any] | None = None, trial: Any = None
) -> list[dict[str, float]]:
    """The epoch loop, from the start or from the checkpoint ``state``; returns the whole history.

    Rank 0 writes ``history.csv``, the best weights and the checkpoint after every epoch. ``trial``
    (a search trial's :class:`~pipeline.search.trial.TrialReporter`) hears the monitored score each
    epoch; when its pruner says so, the run stops there as an early stop does."""
    history: list[dict[str, float]] = []
    start = 0
    # -- resume: everything that carries over between epochs, as the checkpoint left it
    if state is not None:
        t.model.load_state_dict(state["model"])
        t.optimizer.load_state_dict(state["optimizer"])
        t.schedule.load_state_dict(state["scheduler"])
        t.plan.scaler.load_state_dict(state["scaler"])
        t.stopper.load_state_dict(state["early_stopping"])
        history, start = state["history"], state["epoch"] + 1
        if t.ctx.is_main:
            print(f"train: resuming after epoch {start} from {root / outputs.TRAIN_CHECKPOINT / 'last.pt'}")

    # -- the loop: train, validate, record, checkpoint, maybe stop
    epochs = progress(range(start, t.cfg["epochs"]), t.ctx, desc="epochs", initial=start, total=t.cfg["epochs"])
    try:
        _epochs(t, epochs, run, root=root, fingerprint=fingerprint, history=history, trial=trial)
    finally:
        t.writer.wait()  # the last checkpoint is on disk (or its error raised) before fit returns
    return history


def _epochs(
    t: Trainer,
    epochs: Any,
    run: Any,
    *,
    root: Path,
    fingerprint: str,
    history: list[dict[str, float]],
    trial: Any = None,
) -> None:
    """The epochs of :func:`fit`, appending to ``history``."""
    for epoch in epochs:
        trained = train_epoch(t, epoch)
        row = {"epoch": epoch + 1, "train_loss": trained.pop("train_loss"), **validate(t)}
        row["lr"] = t.schedule.last_lr()[0]
        row |= trained  # images_per_s, data_wait (and skipped_steps with fp16)
        if t.monitor not in row:
            raise PipelineError(
                f"train.early_stopping.monitor {t.monitor!r} is not a validation metric; "
                f"available: {', '.join(k for k in row if k.startswith('val_'))}"
            )
        t.schedule.step_epoch(row)
        history.append(row)
        if t.stopper.step(row[t.monitor]) and t.ctx.is_main:
            save_model(root / outputs.TRAIN_BEST, t.model, t.info)
        if trial is not None and trial.report(epoch + 1, row[t.monitor], last=epoch + 1 == t.cfg["epochs"]):
            t.stopper.pruned = True
        run.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch + 1)
        if t.ctx.is_main:  # DDP keeps every rank's weights identical: rank 0's checkpoint serves all
            write_text(root / outputs.TRAIN_HISTORY, history_csv(history))
            write_text(root / outputs.TRAIN_VALIDATION, validation_csv(history))
            t.writer.save(
                root / outputs.TRAIN_CHECKPOINT / "last.pt",
                {
                    "fingerprint": fingerprint,
                    "epoch": epoch,
                    "model": t.model.state_dict(),
                    "optimizer": t.optimizer.state_dict(),
                    "scheduler": t.schedule.state_dict(),
                    "scaler": t.plan.scaler.state_dict(),
                    "early_stopping": t.stopper.state_dict(),
                    "history": history,
                    "run_id": run.run_id,
                    "finished": t.stopper.should_stop or epoch + 1 == t.cfg["epochs"],
                },
            )
        epochs.set_postfix({t.monitor: f"{row[t.monitor]:.4f}"})
        if t.stopper.should_stop:
            if t.ctx.is_main and t.stopper.pruned:
                print(
                    f"train: pruned after epoch {epoch + 1} by the search (trial {trial.number}): "
                    f"{t.monitor} {row[t.monitor]:.4f}"
                )
            elif t.ctx.is_main:
                print(
                    f"train: early stop after epoch {epoch + 1}: {t.monitor} did not improve for "
                    f"{t.stopper.stale} epochs"
                )
            break


def progress(iterable: Any, ctx: dist.Context, **kwargs: Any) -> tqdm:
    """A progress bar on stdout: rank 0 only, and quiet when stdout is not a terminal (logs, DVC)."""
    return tqdm(iterable, disable=None if ctx.is_main else True, file=sys.stdout, dynamic_ncols=True, **kwargs)


def readback_steps(batches: int, log_every: int) -> frozenset[int]:
    """The steps (1-based) after which an epoch of ``batches`` reads its loss back to the host: every
    ``log_every`` steps when that comes four times an epoch or more, else at each quarter of the epoch;
    and the last step. A NaN then stops the run within a quarter of an epoch and the bar's running
    loss moves at least four times an epoch, at a handful of host syncs rather than one per step."""
    if batches >= 4 * log_every:
        steps = set(range(log_every, batches + 1, log_every))
    else:
        steps = {-(-quarter * batches // 4) for quarter in range(1, 5)}  # ceil(quarter * batches / 4)
    return frozenset(steps | {batches})


def train_epoch(t: Trainer, epoch: int) -> dict[str, float]:
    """One pass over the training data: the mean step loss over every rank (``train_loss``), images per
    second, the share of the epoch spent waiting for data (``data_wait``) and, with fp16, the optimizer
    steps skipped for overflowing gradients so far."""
    # Ranks add their rank to the epoch's seed, so their augmentations (and dropout) differ; rank 0
    # alone is exactly a single-process run.
    seed = epoch_seed(t.cfg["seed"], epoch) + t.ctx.rank
    seed_everything(seed)
    t.generator.manual_seed(seed)
    if t.sampler is not None:
        t.sampler.set_epoch(epoch)  # a new shuffle every epoch, the same on every rank
        dist.write_debug_samples(t.sampler, t.ctx, epoch)
    t.train_set.set_epoch(epoch)
    t.train_loader.sampler.set_epoch(epoch, seed)  # the workers seed each sample from (seed, index)
    t.ddp_net.train()
    device, accumulate = t.plan.device, t.cfg["accumulate"]
    checks = readback_steps(len(t.train_loader), t.cfg["log_every_steps"])
    running = torch.zeros((), device=device)
    bad_step = torch.full((), -1, dtype=torch.long, device=device)
    seen, started = 0, time.perf_counter()
    # The bar is advanced by hand: a bar wrapping the loader redraws its postfix with a stale count.
    with progress(None, t.ctx, total=len(t.train_loader), desc=f"epoch {epoch + 1}", leave=False) as bar:
        for step, (images, targets) in enumerate(t.train_feed):
            last = step + 1 == len(t.train_loader)
            images, targets = augment_batch(t.train_set, images, targets, device)  # augment.device
            loss, stepped = t.train_step(images, targets, apply=(step + 1) % accumulate == 0 or last)
            if stepped:
                t.schedule.step_batch()
            # The first non-finite step is recorded on the device and read back at the checks only.
            bad_step = torch.where((bad_step < 0) & ~torch.isfinite(loss), step, bad_step)
            running += loss
            seen += images.shape[0]
            bar.update()
            if step + 1 in checks:
                _raise_if_nonfinite(bad_step, epoch, t.plan.name, t.ctx)
                bar.set_postfix(loss=f"{running.item() / (step + 1):.4f}")
    elapsed = time.perf_counter() - started
    totals = dist.all_reduce_sum(torch.stack([running.double(), torch.tensor(seen, device=device).double()]), t.ctx)
    result = {
        "train_loss": totals[0].item() / (len(t.train_loader) * t.ctx.world_size),
        "images_per_s": totals[1].item() / elapsed if elapsed > 0 else 0.0,
        "data_wait": t.train_feed.wait_s / elapsed if elapsed > 0 else 0.0,
    }
    if t.plan.scaler.is_enabled():
        result["skipped_steps"] = float(t.plan.skipped_steps.item())
    return result


def validate(t: Trainer) -> dict[str, float]:
    """Validation loss and metrics; under DDP each rank scores its shard and the confusion matrix, loss
    sum and count are all-reduced, so every rank gets the numbers of the whole split."""
    t.net.eval()
    batches = progress(t.val_feed, t.ctx, desc="validate", leave=False)  # no running value: no host syncs
    shard = score(t.net, batches, t.loss_fn, t.meter, t.plan)
    whole = LossSum(*dist.reduce_meter(t.meter, shard.total, shard.count, t.ctx))
    metrics = {f"val_{k}": v for k, v in t.meter.compute().items() if "/" not in k}
    metrics["val_loss"] = whole.mean()
    return metrics


NAN_PRECISION_HINTS = {"fp16": ", or precision.dtype bf16 or fp32", "bf16": ", or precision.dtype fp32"}


def _raise_if_nonfinite(bad_step: torch.Tensor, epoch: int, precision: str, ctx: dist.Context = dist.SINGLE) -> None:
    """Stop on the first non-finite step; under DDP the ranks agree on the earliest one, so all stop.
    The hint names a wider precision only to a run that has one to go to."""
    step = int(dist.earliest_step(bad_step, ctx).item())
    if step >= 0:
        raise PipelineError(
            f"the loss became NaN or Inf at epoch {epoch + 1}, step {step + 1}; lower optimizer.lr or set "
            f"train.grad_clip{NAN_PRECISION_HINTS.get(precision, '')}"
        )
