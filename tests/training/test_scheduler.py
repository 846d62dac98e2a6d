"""Schedulers: every registered scheduler builds, steps and resumes; warmup + schedule LR sequences
against hand-computed values; per-batch OneCycleLR; ReduceLROnPlateau fed the monitored metric;
step_decay state through a checkpoint; validate-time errors at their key."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch

from pipeline.config.errors import PipelineError
from pipeline.training.scheduler import LRSchedule, build_scheduler, schedulers
from tests.conftest import problems_by_key, write_params

# Required arguments the pipeline cannot guess; everything else is auto-filled or defaulted.
MINIMAL = {
    "StepLR": {"step_size": 1},
    "MultiStepLR": {"milestones": [1]},
    "ExponentialLR": {"gamma": 0.9},
    "CosineAnnealingWarmRestarts": {"T_0": 2},
}


def _optimizer(lr: float = 1.0, groups: int = 1) -> torch.optim.Optimizer:
    params = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr * (i + 1)} for i in range(groups)]
    return torch.optim.SGD(params, lr=lr, momentum=0.9)


def _cfg(name: str, *, warmup: dict | None = None, interval: str = "auto", monitor: str = "auto", **params) -> dict:
    return {
        "name": name,
        "params": params,
        "interval": interval,
        "monitor": monitor,
        "warmup": {"epochs": 0, "steps": 0, "start_factor": 0.1, **(warmup or {})},
    }


def _run(
    schedule: LRSchedule,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    steps: int,
    metrics: list[float] | None = None,
    per_step: bool = False,
) -> list[float]:
    """The LR each batch (per_step) or each epoch's first batch trained with, like the train loop."""
    seen = []
    for epoch in range(epochs):
        for step in range(steps):
            if per_step or step == 0:
                seen.append(schedule.last_lr()[0])
            optimizer.step()
            schedule.step_batch()
        schedule.step_epoch({"val_loss": metrics[epoch] if metrics else 1.0, "val_dice": 0.5})
    return seen


@pytest.mark.parametrize("name", schedulers.names())
def test_every_scheduler_builds_steps_and_resumes(name: str) -> None:
    cfg = _cfg(name, warmup={"steps": 3}, **MINIMAL.get(name, {}))
    opt = _optimizer(groups=2)
    schedule = build_scheduler(cfg, opt, epochs=4, steps_per_epoch=3, monitor="val_loss")
    first = _run(schedule, opt, 2, 3, per_step=True)
    buffer = io.BytesIO()  # a checkpoint, loaded the safe way
    torch.save({"optimizer": opt.state_dict(), "scheduler": schedule.state_dict()}, buffer)
    rest = _run(schedule, opt, 2, 3, metrics=[2.0, 3.0], per_step=True)
    assert all(math.isfinite(lr) and lr >= 0 for lr in first + rest)
    # Warmup (in steps) climbs from 0.1x to the schedule's own first rate (OneCycleLR: max_lr / 25).
    no_warmup = build_scheduler(
        {**cfg, "warmup": {}}, _optimizer(groups=2), epochs=4, steps_per_epoch=3, monitor="val_loss"
    )
    assert first[:4] == pytest.approx([f * no_warmup.last_lr()[0] for f in (0.1, 0.4, 0.7, 1.0)])
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    opt2 = _optimizer(groups=2)
    resumed = build_scheduler(cfg, opt2, epochs=4, steps_per_epoch=3, monitor="val_loss")
    opt2.load_state_dict(state["optimizer"])
    resumed.load_state_dict(state["scheduler"])
    assert _run(resumed, opt2, 2, 3, metrics=[2.0, 3.0], per_step=True) == pytest.approx(rest)


def test_warmup_two_epochs_then_steplr() -> None:
    opt = _optimizer()
    schedule = build_scheduler(
        _cfg("StepLR", warmup={"epochs": 2}, step_size=2, gamma=0.1), opt, epochs=6, steps_per_epoch=4
    )
    assert _run(schedule, opt, 6, 4) == pytest.approx([0.1, 0.55, 1.0, 1.0, 0.1, 0.1])


def test_warmup_matches_torch_linearlr_plus_sequentiallr() -> None:
    opt, ref_opt = _optimizer(), _optimizer()
    schedule = build_scheduler(
        _cfg("ExponentialLR", warmup={"epochs": 3, "start_factor": 0.25}, gamma=0.5), opt, epochs=7, steps_per_epoch=1
    )
    warm = torch.optim.lr_scheduler.LinearLR(ref_opt, start_factor=0.25, total_iters=3)
    main = torch.optim.lr_scheduler.ExponentialLR(ref_opt, gamma=0.5)
    ref = torch.optim.lr_scheduler.SequentialLR(ref_opt, [warm, main], milestones=[3])
    expected = []
    for _ in range(7):
        expected.append(ref_opt.param_groups[0]["lr"])
        ref_opt.step()
        ref.step()
    assert _run(schedule, opt, 7, 1) == pytest.approx(expected)
    assert expected == pytest.approx([0.25, 0.5, 0.75, 1.0, 0.5, 0.25, 0.125])


def test_warmup_then_cosine_over_the_remaining_epochs() -> None:
    opt = _optimizer()
    schedule = build_scheduler(_cfg("CosineAnnealingLR", warmup={"epochs": 1}), opt, epochs=5, steps_per_epoch=2)
    cos = [0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]  # T_max auto = 5 - 1 epochs
    assert _run(schedule, opt, 5, 2) == pytest.approx([0.1] + cos)
    assert schedule.last_lr() == pytest.approx([0.0], abs=1e-12)  # annealed to eta_min at the end


def test_step_warmup_then_epoch_cosine() -> None:
    opt = _optimizer()
    schedule = build_scheduler(_cfg("CosineAnnealingLR", warmup={"steps": 3}), opt, epochs=4, steps_per_epoch=2)
    # Warmup ends inside epoch 1, so the cosine gets the 2 epochs after it (T_max = 4 - ceil(3/2)).
    assert _run(schedule, opt, 4, 2, per_step=True) == pytest.approx([0.1, 0.4, 0.7, 1.0, 1.0, 1.0, 0.5, 0.5])


def test_none_with_step_warmup_and_lr_multipliers() -> None:
    opt = _optimizer(groups=2)  # group lrs 1.0 and 2.0
    schedule = build_scheduler(_cfg("none", warmup={"steps": 2, "start_factor": 0.5}), opt, epochs=2, steps_per_epoch=2)
    seen = []
    for _ in range(4):
        seen.append(schedule.last_lr())
        opt.step()
        schedule.step_batch()
    assert seen == [pytest.approx([0.5, 1.0]), pytest.approx([0.75, 1.5]), [1.0, 2.0], [1.0, 2.0]]


def test_onecycle_steps_per_batch() -> None:
    opt, ref_opt = _optimizer(lr=0.1), _optimizer(lr=0.1)
    schedule = build_scheduler(_cfg("OneCycleLR"), opt, epochs=3, steps_per_epoch=5)
    assert schedule.interval == "step"
    ref = torch.optim.lr_scheduler.OneCycleLR(ref_opt, max_lr=0.1, total_steps=15)
    expected = []
    for _ in range(15):
        expected.append(ref_opt.param_groups[0]["lr"])
        ref_opt.step()
        ref.step()
    got = _run(schedule, opt, 3, 5, per_step=True)  # step_epoch in between must not move it
    assert got == pytest.approx(expected)
    assert len(set(round(lr, 12) for lr in got[:5])) == 5  # it changes within the first epoch


def test_interval_override_steps_cosine_per_batch() -> None:
    opt = _optimizer()
    schedule = build_scheduler(_cfg("CosineAnnealingLR", interval="step"), opt, epochs=2, steps_per_epoch=2)
    assert _run(schedule, opt, 2, 2, per_step=True) == pytest.approx(
        [0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    )


def test_plateau_gets_the_monitored_metric() -> None:
    opt = _optimizer()
    schedule = build_scheduler(
        _cfg("ReduceLROnPlateau", patience=0, factor=0.5), opt, epochs=5, steps_per_epoch=1, monitor="val_loss"
    )
    # val_loss improves, then worsens twice: two halvings, and only from the metric.
    assert _run(schedule, opt, 5, 1, metrics=[1.0, 0.5, 0.7, 0.9, 0.4]) == pytest.approx([1, 1, 1, 0.5, 0.25])
    assert schedule.last_lr() == pytest.approx([0.25])


def test_plateau_mode_follows_the_monitor_and_warmup_comes_first() -> None:
    opt = _optimizer()
    schedule = build_scheduler(
        _cfg("ReduceLROnPlateau", warmup={"epochs": 1}, monitor="val_dice", patience=0, factor=0.5),
        opt,
        epochs=4,
        steps_per_epoch=1,
    )
    assert schedule.main.mode == "max"
    for dice, lr in [(0.9, 0.1), (0.5, 1.0), (0.6, 1.0), (0.55, 1.0)]:  # warmup epoch ignores the metric
        assert schedule.last_lr() == pytest.approx([lr])
        opt.step()
        schedule.step_epoch({"val_dice": dice})
    assert schedule.last_lr() == pytest.approx([0.5])


def test_plateau_missing_metric_names_the_key() -> None:
    opt = _optimizer()
    schedule = build_scheduler(_cfg("ReduceLROnPlateau"), opt, epochs=3, steps_per_epoch=1, monitor="val_iou")
    opt.step()
    with pytest.raises(PipelineError, match=r"scheduler\.monitor.*val_iou.*val_loss"):
        schedule.step_epoch({"val_loss": 1.0})


def test_step_decay_values_and_checkpoint_round_trip() -> None:
    opt = _optimizer()
    cfg = _cfg("step_decay", factor=0.5, every=2)
    schedule = build_scheduler(cfg, opt, epochs=7, steps_per_epoch=1)
    assert _run(schedule, opt, 3, 1) == pytest.approx([1.0, 1.0, 0.5])
    buffer = io.BytesIO()
    torch.save({"optimizer": opt.state_dict(), "scheduler": schedule.state_dict()}, buffer)
    uninterrupted = _run(schedule, opt, 4, 1)
    assert uninterrupted == pytest.approx([0.5, 0.25, 0.25, 0.125])
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    opt2 = _optimizer()
    resumed = build_scheduler(cfg, opt2, epochs=7, steps_per_epoch=1)
    opt2.load_state_dict(state["optimizer"])
    resumed.load_state_dict(state["scheduler"])
    assert resumed.main.last_epoch == 3
    assert _run(resumed, opt2, 4, 1) == pytest.approx(uninterrupted)


# --- validate-time errors ---------------------------------------------------------------------------


def _problems(tmp_path: Path, scheduler: dict, epochs: int = 8) -> dict[str, str]:
    path = write_params(tmp_path / "params.yaml", scheduler={"params": {}, **scheduler}, **{"train.epochs": epochs})
    return problems_by_key(path, "scheduler")


@pytest.mark.parametrize(
    "scheduler,key,needle",
    [
        ({"name": "CosineAnealingLR"}, "scheduler.name", "did you mean 'CosineAnnealingLR'"),
        ({"name": "StepLR"}, "scheduler.params", "missing required argument 'step_size'"),
        ({"name": "StepLR", "params": {"step_size": 2, "gama": 0.5}}, "scheduler.params.gama", "did you mean 'gamma'"),
        ({"name": "LambdaLR"}, "scheduler.name", "Python function"),
        ({"name": "ReduceLROnPlateau", "interval": "step"}, "scheduler.interval", "per epoch"),
        ({"name": "none", "warmup": {"epochs": 1, "steps": 10}}, "scheduler.warmup", "not both"),
        ({"name": "none", "warmup": {"epochs": 8}}, "scheduler.warmup.epochs", "train.epochs"),
        ({"name": "step_decay", "params": {"evry": 2}}, "scheduler.params.evry", "did you mean 'every'"),
        (
            {"name": "CosineAnnealingLR", "params": {"optimizer": 1}},
            "scheduler.params.optimizer",
            "set by the pipeline",
        ),
    ],
)
def test_validate_scheduler_errors(tmp_path: Path, scheduler: dict, key: str, needle: str) -> None:
    assert needle in _problems(tmp_path, scheduler)[key]


@pytest.mark.parametrize("name", schedulers.names())
def test_validate_accepts_every_scheduler_with_its_required_arguments(tmp_path: Path, name: str) -> None:
    # T_max, max_lr, total_steps, base_lr ... are filled in, so validate must not ask for them.
    assert _problems(tmp_path, {"name": name, "params": MINIMAL.get(name, {})}) == {}
