"""Learning-rate schedules: the ``scheduler`` section -> an :class:`LRSchedule` the train loop steps.

Any ``torch.optim.lr_scheduler`` class by name, the custom ``step_decay``, ``none``, or
``module.path:Class``; an optional linear warmup composes with all of them the way
``SequentialLR([LinearLR, main], milestones=[warmup])`` would: during warmup the rate climbs linearly
from ``start_factor`` times the schedule's first rate to that rate, then the schedule runs from its
own step 0 for the remaining epochs/steps. The wrapper does this itself (rather than with
SequentialLR) so that warmup also works in front of ReduceLROnPlateau and mixes units (warmup in
steps, schedule per epoch).

The train loop calls :meth:`LRSchedule.step_batch` after every optimizer step and
:meth:`LRSchedule.step_epoch` after each epoch's validation; the schedule steps on one of them
(``interval``: auto = OneCycleLR and CyclicLR per batch, the rest per epoch). ``steps_per_epoch``
counts optimizer steps (batches / accumulate).
"""

from __future__ import annotations

import inspect
import math
import warnings
from typing import Any

import torch
from torch.optim import lr_scheduler as torch_schedulers

from pipeline.config.building import blamed_attempt, check_binding, required_arguments, resolve
from pipeline.config.dotted import is_import_path
from pipeline.config.errors import ComponentError, PipelineError, Problem
from pipeline.config.params import Params
from pipeline.config.registry import Registry

# The schedule advances on every optimizer step, fp16 steps the GradScaler skipped included (knowing
# which were skipped would cost a host sync per step); a skipped first step would make torch warn
# "lr_scheduler.step() before optimizer.step()" about exactly that. Said once here, not per step.
warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before `optimizer\.step\(\)`")

# Need Python callables or scheduler objects, which params.yaml cannot hold (warmup is built in).
UNSUPPORTED = {
    "LambdaLR": "LambdaLR needs a Python function; write a 'module.path:Class' scheduler instead",
    "MultiplicativeLR": "MultiplicativeLR needs a Python function; use ExponentialLR or 'module.path:Class'",
    "SequentialLR": "SequentialLR needs scheduler objects; use scheduler.warmup, or 'module.path:Class'",
    "ChainedScheduler": "ChainedScheduler needs scheduler objects; use scheduler.warmup, or 'module.path:Class'",
}
PER_STEP = ("OneCycleLR", "CyclicLR")


def _torch_schedulers() -> dict[str, Any]:
    base = torch_schedulers.LRScheduler
    return {
        name: obj
        for name, obj in vars(torch_schedulers).items()
        if inspect.isclass(obj)
        and (issubclass(obj, base) or obj is torch_schedulers.ReduceLROnPlateau)
        and obj is not base
        and not name.startswith("_")
        and name not in UNSUPPORTED
    }


schedulers = Registry("schedulers", provider=_torch_schedulers)


@schedulers.register("step_decay")
class StepDecay(torch_schedulers.LRScheduler):
    """lr = base_lr * factor ** (epoch // every); a real LRScheduler, so its state is checkpointed."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, factor: float = 0.1, every: int = 10, last_epoch: int = -1):
        if every < 1:
            raise PipelineError("scheduler.params.every must be at least 1")
        self.factor, self.every = factor, every
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float | torch.Tensor]:
        return self._get_closed_form_lr()

    def _get_closed_form_lr(self) -> list[float | torch.Tensor]:
        return [base * self.factor ** (self.last_epoch // self.every) for base in self.base_lrs]


class _NoSchedule:
    """``none``: the rate stays where the optimizer (and warmup) put it."""


schedulers.add("none", _NoSchedule)


def auto_interval(name: str, interval: str) -> str:
    """``epoch`` or ``step``: OneCycleLR and CyclicLR per batch by default, everything else per epoch."""
    if interval != "auto":
        return interval
    return "step" if name in PER_STEP else "epoch"


def _warmup_units(warmup: dict[str, Any]) -> tuple[str, int]:
    steps, epochs = int(warmup.get("steps") or 0), int(warmup.get("epochs") or 0)
    return ("step", steps) if steps > 0 else ("epoch", epochs)


def _main_length(interval: str, warmup: dict[str, Any], epochs: int, steps_per_epoch: int) -> int:
    """How many times the schedule itself steps after warmup (its T_max / total_steps)."""
    unit, length = _warmup_units(warmup)
    if interval == "step":
        warm_steps = length if unit == "step" else length * steps_per_epoch
        return max(1, epochs * steps_per_epoch - warm_steps)
    warm_epochs = length if unit == "epoch" else math.ceil(length / steps_per_epoch)
    return max(1, epochs - warm_epochs)


def _auto_args(
    cls: Any,
    kwargs: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    length: int,
    steps_per_epoch: int,
    monitor: str | None,
) -> dict[str, Any]:
    """Sensible values for arguments the user left out (T_max, max_lr, total_steps, ...)."""
    lrs = [g["lr"] for g in optimizer.param_groups]
    name = cls.__name__
    out = dict(kwargs)
    if name == "CosineAnnealingLR":
        out.setdefault("T_max", length)
    elif name == "PolynomialLR":
        out.setdefault("total_iters", length)
    elif name == "OneCycleLR":
        out.setdefault("max_lr", lrs)
        if "epochs" not in out and "steps_per_epoch" not in out:
            out.setdefault("total_steps", length)
    elif name == "CyclicLR":
        out.setdefault("max_lr", lrs)
        out.setdefault("base_lr", [lr / 10 for lr in lrs])
        out.setdefault("step_size_up", max(1, 2 * steps_per_epoch))  # half a cycle = 2 epochs
        if not any(k in optimizer.defaults for k in ("momentum", "betas")):
            out.setdefault("cycle_momentum", False)
    elif name == "ReduceLROnPlateau" and monitor:
        out.setdefault("mode", "min" if "loss" in monitor else "max")
    return out


# Arguments the pipeline fills in per class (so validate does not call them missing).
AUTO_ARGS = {
    "CosineAnnealingLR": ("T_max",),
    "PolynomialLR": ("total_iters",),
    "OneCycleLR": ("max_lr", "total_steps"),
    "CyclicLR": ("max_lr", "base_lr"),
}


class LRSchedule:
    """A scheduler plus warmup plus the stepping interval, behind one small interface."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, main: Any, *, interval: str, warmup: dict[str, Any], monitor: str | None
    ):
        self.optimizer, self.main, self.interval, self.monitor = optimizer, main, interval, monitor
        self.plateau = isinstance(main, torch_schedulers.ReduceLROnPlateau)
        self.warm_unit, self.warm_length = _warmup_units(warmup)
        self.start_factor = float(warmup.get("start_factor", 0.1))
        # The schedule's own first rates: warmup climbs to them, then hands over.
        self.target = [g["lr"] for g in optimizer.param_groups]
        self.steps_done = self.epochs_done = 0
        self.warming = self.warm_length > 0
        self.main_ran_this_epoch = not self.warming
        if self.warming:
            self._set_warm(0)

    def _set_warm(self, t: int) -> None:
        factor = self.start_factor + (1 - self.start_factor) * t / self.warm_length
        for group, target in zip(self.optimizer.param_groups, self.target):
            group["lr"] = target * factor

    def _advance_warmup(self, t: int) -> None:
        if t < self.warm_length:
            self._set_warm(t)
        else:
            self.warming = False
            for group, target in zip(self.optimizer.param_groups, self.target):
                group["lr"] = target

    def step_batch(self) -> None:
        """After every optimizer step, skipped fp16 steps included: whether the scaler skipped one is
        known on the device only (asking would be a host sync per step), and a skip is one step of a
        schedule's thousands (torch's warning about it is silenced once, at import: see above)."""
        self.steps_done += 1
        if self.warming and self.warm_unit == "step":
            self._advance_warmup(self.steps_done)
        elif not self.warming and self.interval == "step" and self.main is not None:
            self.main.step()

    def step_epoch(self, metrics: dict[str, float] | None = None) -> None:
        """After each epoch's validation; ReduceLROnPlateau gets ``metrics[monitor]``."""
        self.epochs_done += 1
        if self.main_ran_this_epoch and self.interval == "epoch" and self.main is not None:
            if self.plateau:
                self.main.step(self._monitored(metrics or {}))
            else:
                self.main.step()
        if self.warming and self.warm_unit == "epoch":
            self._advance_warmup(self.epochs_done)
        self.main_ran_this_epoch = not self.warming

    def _monitored(self, metrics: dict[str, float]) -> float:
        if not self.monitor:
            raise PipelineError("scheduler.monitor: ReduceLROnPlateau needs a monitored metric")
        if self.monitor not in metrics:
            raise PipelineError(
                f"scheduler.monitor: {self.monitor!r} is not among this epoch's metrics "
                f"({', '.join(sorted(metrics)) or 'none'})"
            )
        return float(metrics[self.monitor])

    def last_lr(self) -> list[float]:
        """The current rate of every optimizer param group."""
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {
            "main": None if self.main is None else self.main.state_dict(),
            "target": self.target,
            "steps_done": self.steps_done,
            "epochs_done": self.epochs_done,
            "warming": self.warming,
            "main_ran_this_epoch": self.main_ran_this_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.main is not None and state.get("main") is not None:
            self.main.load_state_dict(state["main"])
        self.target = list(state["target"])
        self.steps_done, self.epochs_done = state["steps_done"], state["epochs_done"]
        self.warming, self.main_ran_this_epoch = state["warming"], state["main_ran_this_epoch"]


def build_scheduler(
    cfg: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    steps_per_epoch: int,
    monitor: str | None = None,
) -> LRSchedule:
    """The schedule for the resolved ``scheduler`` section. ``monitor`` is the train stage's
    resolution of ``monitor: auto`` (an explicit ``scheduler.monitor`` wins). ``validate`` runs this
    very function on a stand-in optimizer (:func:`exercise_scheduler`); problems raise
    :class:`ComponentError` at their key."""
    name = cfg["name"]
    if name in UNSUPPORTED:
        raise ComponentError.at("scheduler.name", UNSUPPORTED[name])
    cls = resolve(schedulers, name, "scheduler.name")
    warmup = dict(cfg.get("warmup") or {})
    if int(warmup.get("epochs") or 0) > 0 and int(warmup.get("steps") or 0) > 0:
        raise ComponentError.at("scheduler.warmup", "set warmup.epochs or warmup.steps, not both")
    if int(warmup.get("epochs") or 0) >= epochs:
        raise ComponentError.at(
            "scheduler.warmup.epochs", f"{warmup['epochs']} warmup epochs leave nothing of train.epochs = {epochs}"
        )
    interval = auto_interval(name, cfg.get("interval", "auto"))
    if cfg.get("monitor", "auto") != "auto":
        monitor = cfg["monitor"]
    if cls is torch_schedulers.ReduceLROnPlateau and interval == "step":
        raise ComponentError.at(
            "scheduler.interval",
            "ReduceLROnPlateau steps on a validation metric, i.e. per epoch; use interval: epoch or auto",
        )
    kwargs = dict(cfg.get("params") or {})
    if cls is _NoSchedule:
        if kwargs:
            raise ComponentError.at("scheduler.params", f"scheduler {name!r} takes no params")
        return LRSchedule(optimizer, None, interval=interval, warmup=warmup, monitor=monitor)
    if "optimizer" in kwargs:
        raise ComponentError.at("scheduler.params.optimizer", "set by the pipeline")
    provided = AUTO_ARGS.get(getattr(cls, "__name__", ""), ()) if not is_import_path(name) else ()
    check_binding(cls, kwargs, key="scheduler.params", skip=1, provided=provided)
    length = _main_length(interval, warmup, epochs, max(1, steps_per_epoch))

    def attempt(args: dict[str, Any]) -> LRSchedule:
        main = cls(optimizer, **_auto_args(cls, args, optimizer, length, steps_per_epoch, monitor))
        return LRSchedule(optimizer, main, interval=interval, warmup=warmup, monitor=monitor)

    return blamed_attempt(attempt, kwargs, key="scheduler.params", what=name, required=required_arguments(cls))


def exercise_scheduler(cfg: dict[str, Any], *, epochs: int, monitor: str = "val_loss") -> None:
    """Build the schedule on a one-parameter optimizer and run it as the train loop would, two
    optimizer steps an epoch, through warmup and across the next epoch boundary: values that only fail
    when stepped (``gamma: 'abc'``) fail here, at validate time."""
    steps_per_epoch = 2
    warm_epochs = int((cfg.get("warmup") or {}).get("epochs") or 0)
    warm_steps = int((cfg.get("warmup") or {}).get("steps") or 0)
    run_epochs = min(epochs, warm_epochs + math.ceil(warm_steps / steps_per_epoch) + 2)
    watched = cfg["monitor"] if cfg.get("monitor", "auto") != "auto" else monitor

    def attempt(args: dict[str, Any]) -> None:
        parameter = torch.zeros(1, requires_grad=True)
        optimizer = torch.optim.SGD([parameter], lr=0.1, momentum=0.9)
        schedule = build_scheduler(
            {**cfg, "params": args}, optimizer, epochs=epochs, steps_per_epoch=steps_per_epoch, monitor=monitor
        )
        for _ in range(run_epochs):
            for _ in range(steps_per_epoch):
                optimizer.step()
                schedule.step_batch()
            schedule.step_epoch({watched: 0.5})
        if not all(math.isfinite(lr) for lr in schedule.last_lr()):
            raise ValueError(f"the learning rate became {schedule.last_lr()}")

    blamed_attempt(attempt, dict(cfg.get("params") or {}), key="scheduler.params", what=f"{cfg['name']} when stepped")


def check_scheduler(params: Params) -> list[Problem]:
    """Build the declared schedule (the train stage's own builder) and step it across epochs. With
    train.epochs rejected it runs for a long stand-in, which no warmup outlasts."""
    try:
        exercise_scheduler(params.get("scheduler"), epochs=params.get("train.epochs"))
    except ComponentError as exc:
        return exc.problems
    return []
