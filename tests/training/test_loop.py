"""The training step (:class:`pipeline.training.loop.TrainStep`) and an epoch around it: clipping after
unscaling, an fp16 step with inf/NaN gradients skipped and counted on the device (and in the history),
the schedule advancing once per ended optimizer step, accumulation equal to one big batch, and
``start_epoch`` replaying an epoch's data exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline import outputs
from pipeline.config.params import load_params
from pipeline.data.manifest import load_manifest
from pipeline.models.file import load_model
from pipeline.seeding import epoch_seed
from pipeline.tracking.run import NullRun
from pipeline.training import distributed as dist
from pipeline.training import loop
from pipeline.training.loop import TrainStep
from pipeline.training.precision import PrecisionPlan, resolve_precision
from pipeline.training.scheduler import LRSchedule, build_scheduler
from stages import train as train_stage
from tests.conftest import train_history, train_workspace

CPU = torch.device("cpu")


def _cfg(dtype: str) -> dict:
    return {"dtype": dtype, "channels_last": False, "tf32": True, "compile": False}


def _scaled_plan(init_scale: float = 1024.0) -> PrecisionPlan:
    """An fp16-style plan on CPU: a real, enabled GradScaler (CPU supports it) without fp16 autocast."""
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, enabled=True)
    return PrecisionPlan(torch.float32, CPU, False, False, scaler, torch.autocast("cpu", enabled=False))


def _linear() -> tuple[nn.Linear, torch.optim.SGD, torch.Tensor]:
    model = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.5, -1.0, 2.0]]))
    return model, torch.optim.SGD(model.parameters(), lr=1.0), torch.tensor([[3.0, 4.0, 0.0]])


def _schedule(optimizer: torch.optim.Optimizer) -> LRSchedule:
    return build_scheduler({"name": "none"}, optimizer, epochs=1, steps_per_epoch=1)


def _summed(logits: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
    return logits.sum()


def _mse(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(logits.float(), y)


NO_TARGETS = torch.zeros(1)


def test_clipping_happens_after_unscaling() -> None:
    model, optimizer, x = _linear()
    step = TrainStep(model, _summed, optimizer, _scaled_plan(), _schedule(optimizer), grad_clip=1.0)
    w0 = model.weight.detach().clone()
    step(x, NO_TARGETS, apply=True)
    # True gradient = x = [3, 4, 0], norm 5, clipped to norm 1: the step is [0.6, 0.8, 0].
    assert step.schedule.steps_done == 1  # the step ended
    # clipping the scaled gradient (norm 1024 x 5) would have stepped by [0.6, 0.8, 0] / 1024
    assert torch.allclose(w0 - model.weight.detach(), torch.tensor([[0.6, 0.8, 0.0]]))
    assert model.weight.grad is None  # zeroed after the step


def test_overflowing_step_is_skipped_and_reported(monkeypatch) -> None:
    """The skip is counted on the device: asking the scaler for its scale on the host (``get_scale``)
    would be a host sync per step on a GPU. The schedule advances on the skipped step as on any other
    (whether a step was skipped is known on the device only): as before the step was one function."""
    model, optimizer, x = _linear()
    step = TrainStep(model, _summed, optimizer, _scaled_plan(), _schedule(optimizer), grad_clip=1.0)
    w0 = model.weight.detach().clone()

    def host_sync(*_: object) -> float:
        raise AssertionError("get_scale() reads the scale back to the host")

    with monkeypatch.context() as patch:
        patch.setattr(step.precision.scaler, "get_scale", host_sync)
        step(x * float("inf"), NO_TARGETS, apply=True)
        assert step.schedule.steps_done == 1 and torch.equal(model.weight.detach(), w0)  # the step ended, skipped
        assert step.skipped.item() == 1
        step.grad_clip = None
        step(x, NO_TARGETS, apply=True)
        assert step.schedule.steps_done == 2
        assert step.skipped.item() == 1 and not torch.equal(model.weight.detach(), w0)
    assert step.precision.scaler.get_scale() == 512.0


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_accumulation_equals_one_big_batch(dtype: str) -> None:
    plan = resolve_precision(_cfg(dtype), CPU)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, generator=g), torch.randn(8, 1, generator=g)
    big, big_opt, _ = _linear()
    TrainStep(big, _mse, big_opt, plan, _schedule(big_opt))(x, y, apply=True)
    acc, acc_opt, _ = _linear()
    step = TrainStep(acc, _mse, acc_opt, plan, _schedule(acc_opt), accumulate=2)
    results = []
    for i, half in enumerate((slice(0, 4), slice(4, 8))):
        step(x[half], y[half], apply=i == 1)
        results.append(step.schedule.steps_done == 1)  # whether an optimizer step has ended
    assert results == [False, True]
    tol = 1e-6 if dtype == "fp32" else 2e-2
    assert torch.allclose(acc.weight, big.weight, atol=tol)
    assert not torch.equal(acc.weight.detach(), torch.tensor([[0.5, -1.0, 2.0]]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fp16_step() -> None:
    cuda = torch.device("cuda")
    fp16 = resolve_precision(_cfg("fp16"), cuda)
    model = nn.Linear(3, 1).to(cuda)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step = TrainStep(model, _mse, opt, fp16, _schedule(opt), grad_clip=1.0)
    w0 = model.weight.detach().clone()
    loss = step(torch.randn(4, 3, device=cuda), torch.zeros(4, 1, device=cuda), apply=True)
    assert step.schedule.steps_done == 1 and torch.isfinite(loss) and step.skipped.item() == 0
    assert not torch.equal(model.weight.detach(), w0) and model.weight.grad is None


def _trainer(tmp_path: Path, dataset: Path, **overrides: object) -> tuple[loop.Trainer, Path]:
    """A real trainer on a tiny workspace (split and model stages run), on the CPU, single process."""
    params = train_workspace(tmp_path, dataset, **{"train.workers": 0, "train.epochs": 1, **overrides})
    view = load_params(params).view(train_stage.PARAMS)
    manifest = load_manifest(params.parent / outputs.MANIFEST)
    model, info = load_model(params.parent / outputs.MODEL_INIT, trust_code=True)
    return loop.build(view, manifest, model, info, dist.SINGLE, CPU), params


def test_an_fp16_overflow_skips_one_optimizer_step_and_the_history_says_so(tmp_path, shapes_dataset):
    """fp16's scaler on CPU and one batch whose gradients turn inf (the loss itself stays finite, as
    with an fp16 overflow): its optimizer step is skipped, the schedule still advances once per batch
    (as it did), and history.csv's ``skipped_steps`` counts exactly that one."""
    t, params = _trainer(tmp_path, shapes_dataset, **{"scheduler.name": "none", "scheduler.warmup": {"epochs": 0}})
    t.step.precision.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    real_loss, calls = t.step.loss_fn, []

    def overflow_on_the_third_batch(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 3 and logits.requires_grad:
            logits.register_hook(lambda grad: grad * float("inf"))
        return real_loss(logits, y)

    t.step.loss_fn = overflow_on_the_third_batch
    history = loop.fit(t, NullRun(), root=params.parent, fingerprint="test")
    assert [row["skipped_steps"] for row in history] == [1.0]
    assert train_history(params)[0]["skipped_steps"] == 1.0
    assert t.step.schedule.steps_done == len(t.data.loader)  # every batch ended a step, the skipped one too
    assert t.step.precision.scaler.get_scale() == 512.0  # halved once, for the one skip


def test_start_epoch_replays_an_epochs_data_exactly(tmp_path, shapes_dataset):
    """One call seeds an epoch: the global RNGs, the loader's order, the samples' augmentation."""
    t, _ = _trainer(tmp_path, shapes_dataset)

    def first_batch(epoch: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        t.data.start_epoch(epoch)
        assert torch.initial_seed() == epoch_seed(t.cfg["seed"], epoch)  # rank 0: the epoch's seed itself
        draw = torch.rand(()).item()  # what dropout would draw
        images, targets = next(iter(t.data.feed))
        return images, targets, draw

    images, targets, draw = first_batch(1)
    first_batch(2)
    again = first_batch(1)
    assert torch.equal(again[0], images) and torch.equal(again[1], targets) and again[2] == draw
    other = first_batch(2)
    assert not torch.equal(other[0], images) and other[2] != draw
