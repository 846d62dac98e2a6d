"""An exponential moving average of the weights (``train.ema``), as timm's ``ModelEmaV3`` keeps it: every
floating-point entry of the state dict, parameters and buffers alike (BatchNorm's running statistics
included: timm's default, ``exclude_buffers=False``), is averaged; integer buffers (``num_batches_tracked``)
are copied. The averaged copy is validated each epoch beside the model, and ``train.ema.keep`` decides
which of the two becomes the best weights file.

The update runs after optimizer steps with in-place multi-tensor ops on the device
(``torch._foreach_lerp_``); the decay is a Python float computed from the optimizer-step count, which the
host knows without asking the device, so an update never waits on it.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from pipeline.config.errors import Problem

# timm ModelEmaV3's warmup (its defaults warmup_gamma=1, warmup_power=2/3): 1 - (1 + step) ** -2/3.
WARMUP_POWER = 2 / 3


def ema_decay(step: int, decay: float, *, warmup: bool) -> float:
    """The decay of the update after optimizer step ``step`` (1-based), as ``ModelEmaV3.get_decay(step)``
    computes it: 0 at the first step (the average starts as a copy of the model), then ``decay``, or
    with ``warmup`` ``min(decay, 1 - (1 + s) ** -2/3)`` for ``s = step - 1``, which reaches 0.999 near
    31.6k steps, so a short fine-tuning run's average is not dominated by its starting weights."""
    step = max(0, step - 1)
    if step <= 0:
        return 0.0
    if warmup:
        return max(min(1 - (1 + step) ** -WARMUP_POWER, decay), 0.0)
    return decay


class ModelEma:
    """The averaged copy of a model and its update rule.

    ``module`` is a deep copy of the model (on its device, in eval mode, without gradients) that
    validation scores and :meth:`state_dict` checkpoints. Call :meth:`step` after every optimizer step
    (skipped or not by fp16's scaler: a skipped step left the model as it was, and the average moves
    towards those unchanged weights, as timm's does); every ``every``-th step updates the average.
    Under DDP each rank keeps its own over the unwrapped model, whose weights are the same on all ranks,
    so the averages are too."""

    def __init__(self, model: nn.Module, *, decay: float, warmup: bool = True, every: int = 1) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.warmup, self.every = decay, warmup, every
        self.steps = 0  # optimizer steps seen: counted on the host, no device read
        self.best_weights = "model"  # which weights the best file holds (train.ema.keep), for the summary

    def step(self, model: nn.Module) -> None:
        """Count one optimizer step of ``model``; update the average on every ``every``-th."""
        self.steps += 1
        if self.steps % self.every == 0:
            self.update(model, ema_decay(self.steps, self.decay, warmup=self.warmup))

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float) -> None:
        """``ema = decay * ema + (1 - decay) * model`` over the floating-point state (one fused lerp);
        integer buffers copied. ``model`` is the unwrapped module (not DDP's wrapper)."""
        source = model.state_dict()
        averaged, current = [], []
        for key, ema_value in self.module.state_dict().items():
            value = source[key]
            if ema_value.is_floating_point():
                averaged.append(ema_value)
                current.append(value)
            else:
                ema_value.copy_(value)
        if averaged:
            torch._foreach_lerp_(averaged, current, weight=1.0 - decay)

    def state_dict(self) -> dict[str, Any]:
        """The average and the step count: what a resumed run needs to go on exactly."""
        return {"module": self.module.state_dict(), "steps": self.steps, "best_weights": self.best_weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.steps, self.best_weights = int(state["steps"]), str(state["best_weights"])


def ema_column(column: str) -> str:
    """The history column of the EMA's score for the model's ``column``: val_dice -> val_ema_dice. A
    column that is no validation score (train_loss) is the same for both."""
    return "val_ema_" + column.removeprefix("val_") if column.startswith("val_") else column


def kept_weights(row: dict[str, float], monitor: str, *, keep: str, mode: str) -> tuple[str, float]:
    """Which weights an epoch offers as the best (``model`` or ``ema``) and their monitored score.

    ``keep: auto`` takes the EMA when it validates strictly better on ``monitor`` (``mode`` max: higher),
    else the model; ``model`` and ``ema`` always take that one."""
    model_score, ema_score = row[monitor], row[ema_column(monitor)]
    if keep == "auto":
        better = ema_score > model_score if mode == "max" else ema_score < model_score
        keep = "ema" if better else "model"
    return (keep, ema_score) if keep == "ema" else (keep, model_score)


def check_ema_monitor(params: Any) -> list[Problem]:
    """``train.early_stopping.monitor`` names the model's score: with train.ema on, ``train.ema.keep``
    picks between the model and its EMA on it, so the EMA's own column (val_ema_*) is no monitor."""
    monitor = params.get("train.early_stopping.monitor")
    if isinstance(monitor, str) and monitor.startswith("val_ema_"):
        model = "val_" + monitor.removeprefix("val_ema_")
        return [
            Problem(
                "train.early_stopping.monitor",
                f"{monitor!r} is the EMA's score; name the model's ({model!r}): train.ema.keep chooses between "
                "the model and its EMA on it",
            )
        ]
    return []
