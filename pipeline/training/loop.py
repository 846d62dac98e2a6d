"""The training loop, nanoGPT style: :func:`build` turns the params into data, model, loss, optimizer
and schedule once; :func:`fit` is then a flat loop over epochs (train, validate, record, checkpoint,
maybe stop); each batch is one call of :class:`TrainStep`, whose ``__call__`` is the whole step. The
train stage opens the tracking run around the two and writes the final outputs.

Every epoch's randomness derives from (train.seed, epoch) alone, so a run resumed from its checkpoint
replays exactly what the uninterrupted run would have done (bit for bit with train.deterministic on CPU).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, overload

import torch
from torch import nn
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from pipeline import outputs
from pipeline.atomic import write_text
from pipeline.augment.mix import BatchMix
from pipeline.config.errors import PipelineError
from pipeline.config.params import ParamsView
from pipeline.data.dataset import image_hw
from pipeline.data.manifest import Manifest
from pipeline.models.file import ModelInfo, save_model
from pipeline.models.networks import set_grad_checkpointing
from pipeline.models.tiling import tile_settings, tiled_model
from pipeline.seeding import loader_generator, seed_everything
from pipeline.training import checkpoint, sampling
from pipeline.training import distributed as dist
from pipeline.training.batches import to_device
from pipeline.training.distill import Distiller, build_distiller
from pipeline.training.early_stopping import EarlyStopping, resolve_monitor
from pipeline.training.ema import ModelEma, kept_weights
from pipeline.training.feed import DeviceFeed, TrainData
from pipeline.training.history import history_csv, validation_csv
from pipeline.training.inputs import augment_batch, datasets, make_loader
from pipeline.training.losses import build_loss
from pipeline.training.losses.auto import resolve_auto, train_counts
from pipeline.training.metrics import Meter, make_meter
from pipeline.training.optimizer import build_optimizer, parameter_groups
from pipeline.training.precision import PrecisionPlan, resolve_precision
from pipeline.training.scheduler import LRSchedule, build_scheduler
from pipeline.training.scoring import LossSum, score
from pipeline.training.threads import apply_threads

if TYPE_CHECKING:
    from pipeline.search.trial import TrialReporter
    from pipeline.tracking.run import Run

T = TypeVar("T")

# Part of the resume fingerprint: a checkpoint laid out otherwise (say, by an older loop) is not resumed.
CHECKPOINT_FORMAT = 3  # 3: the EMA's state (train.ema)


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class TrainStep:
    """What one training step touches; calling it runs the step, all of it in :meth:`__call__`.

    The loop (and the throughput benchmark) call it once per batch with ``apply`` true on every
    ``accumulate``-th batch and the epoch's last. Nothing in it reads a value back to the host."""

    model: nn.Module  # what is trained, in DDP's wrapper when distributed (:func:`dist.wrap_model`)
    loss_fn: LossFn
    optimizer: torch.optim.Optimizer
    precision: PrecisionPlan  # the autocast context, the GradScaler (enabled for fp16 only), the device
    schedule: LRSchedule  # advanced once per optimizer step
    grad_clip: float | None = None
    accumulate: int = 1
    distill: Distiller | None = None  # train.distill: the teacher's softened logits join the loss
    skipped: torch.Tensor = field(init=False)  # fp16 steps the scaler skipped (inf/NaN gradients), on the device

    def __post_init__(self) -> None:
        self.skipped = torch.zeros((), dtype=torch.long, device=self.precision.device)
        self._one = torch.ones((), device=self.precision.device)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, *, apply: bool) -> torch.Tensor:
        """Forward under autocast, float32 loss, backward on the model inputs ``x`` and targets ``y``
        (on the device: :func:`to_device`); when ``apply``: unscale, clip, optimizer step, scaler update,
        schedule step, zero_grad. Returns the detached loss."""
        scaler = self.precision.scaler  # disabled (every call below a pass-through) unless fp16
        with dist.maybe_no_sync(self.model, apply):  # DDP all-reduces the gradients on stepping batches only
            with self.precision.autocast():
                logits = self.model(x)
            loss = self.loss_fn(logits, y)  # outside autocast: the loss in float32
            if self.distill is not None:  # the teacher sees the same x, under the same autocast
                loss = self.distill(loss, logits, x, self.precision)
            scaler.scale(loss / self.accumulate).backward()
        if not apply:
            return loss.detach()
        if self.grad_clip is not None:
            scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        scale = scaler.scale(self._one)  # the scale, left on the device (get_scale() would sync the host)
        scaler.step(self.optimizer)  # skipped when the gradients hold inf/NaN
        scaler.update()  # which, and only which, lowers the scale
        self.skipped += (scaler.scale(self._one) < scale).long()
        self.schedule.step_batch()  # per optimizer step, skipped or not (knowing would cost a host sync)
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()


@dataclass
class Trainer:
    """Everything the build phase makes and the loop uses."""

    cfg: dict[str, Any]  # the train section
    ctx: dist.Context
    model: nn.Module  # what is trained, on its device (compiled in place when asked): state dicts, weights
    info: ModelInfo
    step: TrainStep  # over ``model`` (in DDP's wrapper when distributed), its loss, optimizer, schedule, scaler
    data: TrainData  # the training set, its loader and feed; ``data.start_epoch(epoch)`` seeds an epoch
    val_feed: DeviceFeed  # the validation batches on the device
    meter: Meter
    monitor: str
    stopper: EarlyStopping
    writer: checkpoint.BackgroundWriter  # checkpoints written off the training thread
    auto_loss: dict[str, Any] = field(default_factory=dict)  # loss arguments computed from the counts (auto)
    val_model: nn.Module | None = None  # data.resize none: ``model`` by tiles over each whole image
    mix: BatchMix = field(default_factory=BatchMix)  # augment.mix: mixup/cutmix per training batch (off: a no-op)
    ema: ModelEma | None = None  # train.ema: the weights' moving average, validated beside the model
    val_ema: nn.Module | None = None  # ``ema.module`` as validation runs it (by tiles, as ``val_model``)


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
    native = view["data.resize"] == "none"
    hw, max_side = image_hw(view["data.image_size"]), view["data.max_side"]
    info.tile = tile_settings(view["evaluate.tile"], hw, max_side) if native else None
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
    # this rank's share of the epoch: train.sampler's weighted draw, else DDP's shuffled shard (None: single)
    shard: DistributedSampler | sampling.WeightedDraw | None = sampling.train_sampler(
        cfg["sampler"], manifest, len(train_set), ctx, seed=cfg["seed"]
    )
    if shard is None:
        shard = dist.train_sampler(train_set, ctx, seed=cfg["seed"])
    train_loader = make_loader(train_set, cfg, device, shuffle=True, generator=generator, sampler=shard)
    # native resolution: whole validation images, each its own size, one per batch, scored by tiles
    val_cfg = {**cfg, "batch_size": 1} if native else cfg
    val_loader = make_loader(val_set, val_cfg, device, shuffle=False, sampler=dist.eval_sampler(val_set, ctx))
    data = TrainData(train_set, train_loader, DeviceFeed(train_loader, device), generator, shard, cfg["seed"], ctx)

    # -- model, loss, optimizer, schedule
    if view["model.grad_checkpointing"]:  # activations recomputed in the backward pass: less memory, more time
        set_grad_checkpointing(model, f"{info.config['source']}/{info.config['name']}")
    model = plan.prepare_model(model)  # in place: the same module, on the device
    trained = dist.wrap_model(model, ctx, device, sync_batchnorm=cfg["sync_batchnorm"])  # in DDP's wrapper, or model
    counts = train_counts(manifest)  # what weight: auto / pos_weight: auto are computed from
    _, auto_loss = resolve_auto(view["loss"], counts, info.config["num_outputs"])
    if auto_loss and ctx.is_main:
        print("train: " + "; ".join(f"{key}: auto = {value}" for key, value in auto_loss.items()))
    loss_fn = build_loss(view["loss"], task=task, num_outputs=info.config["num_outputs"], counts=counts)
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
    teacher = cfg["distill"]["teacher"]
    distiller = build_distiller(cfg["distill"], view.resolve_path(teacher) if teacher else None, info, plan)
    step = TrainStep(
        trained,
        loss_fn,
        optimizer,
        plan,
        schedule,
        grad_clip=cfg["grad_clip"],
        accumulate=cfg["accumulate"],
        distill=distiller,
    )
    ema_cfg = cfg["ema"]  # over the unwrapped model, each rank its own (the ranks' weights are the same)
    ema = (
        ModelEma(model, decay=ema_cfg["decay"], warmup=ema_cfg["warmup"], every=ema_cfg["every"])
        if ema_cfg["enabled"]
        else None
    )
    return Trainer(
        cfg=cfg,
        ctx=ctx,
        model=model,
        info=info,
        step=step,
        data=data,
        val_feed=DeviceFeed(val_loader, device),
        meter=make_meter(task, manifest.num_classes, class_names=manifest.class_names),
        monitor=monitor,
        stopper=EarlyStopping(mode=mode, min_delta=stopping["min_delta"], patience=stopping["patience"]),
        writer=checkpoint.BackgroundWriter(),
        auto_loss=auto_loss,
        val_model=tiled_model(model, info.tile) if info.tile else None,
        mix=BatchMix.from_params(
            view["augment.mix"], task=task, num_classes=info.config["num_outputs"], seed=cfg["seed"]
        ),
        ema=ema,
        val_ema=None if ema is None else tiled_model(ema.module, info.tile) if info.tile else ema.module,
    )


def fit(
    t: Trainer,
    run: Run,
    *,
    root: Path,
    fingerprint: str,
    state: dict[str, Any] | None = None,
    trial: TrialReporter | None = None,
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
        t.step.optimizer.load_state_dict(state["optimizer"])
        t.step.schedule.load_state_dict(state["scheduler"])
        t.step.precision.scaler.load_state_dict(state["scaler"])
        t.stopper.load_state_dict(state["early_stopping"])
        if t.ema is not None:
            t.ema.load_state_dict(state["ema"])
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
    epochs: tqdm[int],
    run: Run,
    *,
    root: Path,
    fingerprint: str,
    history: list[dict[str, float]],
    trial: TrialReporter | None = None,
) -> None:
    """The epochs of :func:`fit`, appending to ``history``."""
    for epoch in epochs:
        trained = train_epoch(t, epoch)
        row = {"epoch": epoch + 1, "train_loss": trained.pop("train_loss"), **validate(t)}
        row["lr"] = t.step.schedule.last_lr()[0]
        row |= trained  # images_per_s, data_wait (and skipped_steps with fp16)
        if t.monitor not in row:
            raise PipelineError(
                f"train.early_stopping.monitor {t.monitor!r} is not a validation metric; "
                f"available: {', '.join(k for k in row if k.startswith('val_') and not k.startswith('val_ema_'))}"
            )
        t.step.schedule.step_epoch(row)
        history.append(row)
        # the score of the weights this epoch offers as the best: the model's, or with train.ema its EMA's
        kept, value = (
            ("model", row[t.monitor])
            if t.ema is None
            else kept_weights(row, t.monitor, keep=t.cfg["ema"]["keep"], mode=t.stopper.mode)
        )
        if t.stopper.step(value):
            if t.ema is not None:
                t.ema.best_weights = kept
            if t.ctx.is_main:
                best = t.ema.module if t.ema is not None and kept == "ema" else t.model
                save_model(root / outputs.TRAIN_BEST, best, t.info)
        if trial is not None and trial.report(epoch + 1, value, last=epoch + 1 == t.cfg["epochs"]):
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
                    "optimizer": t.step.optimizer.state_dict(),
                    "scheduler": t.step.schedule.state_dict(),
                    "scaler": t.step.precision.scaler.state_dict(),
                    "early_stopping": t.stopper.state_dict(),
                    "ema": None if t.ema is None else t.ema.state_dict(),
                    "history": history,
                    "run_id": run.run_id,
                    "finished": t.stopper.should_stop or epoch + 1 == t.cfg["epochs"],
                },
            )
        epochs.set_postfix({t.monitor: f"{row[t.monitor]:.4f}"})
        if t.stopper.should_stop:
            if t.ctx.is_main and t.stopper.pruned and trial is not None:
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


@overload
def progress(iterable: Iterable[T], ctx: dist.Context, **kwargs: Any) -> tqdm[T]: ...
@overload
def progress(iterable: None, ctx: dist.Context, **kwargs: Any) -> tqdm[NoReturn]: ...  # advanced by hand
def progress(iterable: Iterable[T] | None, ctx: dist.Context, **kwargs: Any) -> tqdm[T] | tqdm[NoReturn]:
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
    t.data.start_epoch(epoch)
    t.step.model.train()
    device, accumulate, batches = t.step.precision.device, t.step.accumulate, len(t.data.loader)
    checks = readback_steps(batches, t.cfg["log_every_steps"])
    running = torch.zeros((), device=device)
    bad_step = torch.full((), -1, dtype=torch.long, device=device)
    seen, started = 0, time.perf_counter()
    # The bar is advanced by hand: a bar wrapping the loader redraws its postfix with a stale count.
    with progress(None, t.ctx, total=batches, desc=f"epoch {epoch + 1}", leave=False) as bar:
        for i, (images, targets) in enumerate(t.data.feed):
            images, targets = augment_batch(t.data.dataset, images, targets, device)  # augment.device
            x, y = to_device(images, targets, device, channels_last=t.step.precision.channels_last)
            x, y = t.mix(x, y, epoch, i)  # augment.mix, on the device: train_loss is the loss on mixed batches
            apply = (i + 1) % accumulate == 0 or i + 1 == batches
            loss = t.step(x, y, apply=apply)
            if apply and t.ema is not None:
                t.ema.step(t.model)  # after the optimizer step: the average of the weights it left
            # The first non-finite step is recorded on the device and read back at the checks only.
            bad_step = torch.where((bad_step < 0) & ~torch.isfinite(loss), i, bad_step)
            running += loss
            seen += images.shape[0]
            bar.update()
            if i + 1 in checks:
                _raise_if_nonfinite(bad_step, epoch, t.step.precision.name, t.ctx)
                bar.set_postfix(loss=f"{running.item() / (i + 1):.4f}")
    elapsed = time.perf_counter() - started
    totals = dist.all_reduce_sum(torch.stack([running.double(), torch.tensor(seen, device=device).double()]), t.ctx)
    result = {
        "train_loss": totals[0].item() / (batches * t.ctx.world_size),
        "images_per_s": totals[1].item() / elapsed if elapsed > 0 else 0.0,
        "data_wait": t.data.feed.wait_s / elapsed if elapsed > 0 else 0.0,
    }
    if t.step.precision.scaler.is_enabled():
        result["skipped_steps"] = float(t.step.skipped.item())
    return result


def validate(t: Trainer) -> dict[str, float]:
    """Validation loss and metrics (``val_*``), and with train.ema its EMA's (``val_ema_*``); under DDP
    each rank scores its shard and the confusion matrix, loss sum and count are all-reduced, so every
    rank gets the numbers of the whole split."""
    t.model.eval()
    metrics = _validate(t, t.val_model or t.model, "val_")
    if t.val_ema is not None:
        metrics |= _validate(t, t.val_ema, "val_ema_")  # in eval mode since built
    return metrics


def _validate(t: Trainer, model: nn.Module, prefix: str) -> dict[str, float]:
    batches = progress(t.val_feed, t.ctx, desc="validate", leave=False)  # no running value: no host syncs
    shard = score(model, batches, t.step.loss_fn, t.meter, t.step.precision)
    whole = LossSum(*dist.reduce_meter(t.meter, shard.total, shard.samples, t.ctx))
    metrics = {f"{prefix}{k}": v for k, v in t.meter.compute().items() if "/" not in k}
    metrics[f"{prefix}loss"] = whole.mean()
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
