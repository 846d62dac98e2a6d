"""Precision: bf16 autocast on CPU, fp16 refused on CPU, auto = fp32 on CPU, the GradScaler only for
fp16, clipping after unscaling, skipped overflow steps, gradient accumulation, channels_last."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline.config.errors import ConfigError, PipelineError
from pipeline.config.params import load_params
from pipeline.training.precision import PrecisionPlan, resolve_precision
from tests.conftest import write_params

CPU = torch.device("cpu")


def _cfg(dtype: str = "auto", channels_last: str | bool = "auto", compile: bool = False) -> dict:
    return {"dtype": dtype, "channels_last": channels_last, "tf32": True, "compile": compile}


def test_bf16_on_cpu_autocasts_matmuls() -> None:
    plan = resolve_precision(_cfg("bf16"), CPU)
    a, b = torch.randn(4, 8), torch.randn(8, 2)
    with plan.autocast():
        out = a @ b
        conv = nn.Conv2d(3, 2, 3)(torch.randn(1, 3, 5, 5))
    assert plan.dtype == torch.bfloat16 and out.dtype == torch.bfloat16 and conv.dtype == torch.bfloat16
    assert not plan.scaler.is_enabled()
    assert torch.allclose(out.float(), a @ b, rtol=0.05, atol=0.05)
    with plan.autocast():  # the context is built once and reusable
        assert (a @ b).dtype == torch.bfloat16


def test_fp16_on_cpu_is_refused_naming_the_key() -> None:
    with pytest.raises(PipelineError, match=r"precision\.dtype: fp16 needs a CUDA GPU.*bf16 or fp32"):
        resolve_precision(_cfg("fp16"), CPU)


@pytest.mark.parametrize("dtype", ["auto", "fp32"])
def test_auto_and_fp32_on_cpu_are_plain_fp32(dtype: str) -> None:
    plan = resolve_precision(_cfg(dtype), CPU)
    with plan.autocast():
        out = torch.randn(4, 8) @ torch.randn(8, 2)
    assert plan.dtype == torch.float32 and out.dtype == torch.float32
    assert not plan.scaler.is_enabled() and plan.channels_last is False


def test_channels_last_when_asked_on_cpu() -> None:
    plan = resolve_precision(_cfg("fp32", channels_last=True), CPU)
    model = plan.prepare_model(nn.Sequential(nn.Conv2d(3, 4, 3)))
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    # the batches: pipeline.training.batches.to_device (tests/training/test_batches.py)


def _scaled_plan(init_scale: float = 1024.0) -> PrecisionPlan:
    """An fp16-style plan on CPU: a real, enabled GradScaler (CPU supports it) without fp16 autocast."""
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, enabled=True)
    return PrecisionPlan(torch.float32, CPU, False, False, scaler, torch.autocast("cpu", enabled=False))


def _linear() -> tuple[nn.Linear, torch.optim.SGD, torch.Tensor]:
    model = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.5, -1.0, 2.0]]))
    return model, torch.optim.SGD(model.parameters(), lr=1.0), torch.tensor([[3.0, 4.0, 0.0]])


def test_clipping_happens_after_unscaling() -> None:
    model, optimizer, x = _linear()
    plan = _scaled_plan()
    w0 = model.weight.detach().clone()
    stepped = plan.backward_and_step(model(x).sum(), optimizer, model=model, grad_clip=1.0, step=True)
    # True gradient = x = [3, 4, 0], norm 5, clipped to norm 1: the step is [0.6, 0.8, 0].
    assert stepped  # clipping the scaled gradient (norm 1024 x 5) would have stepped by [0.6, 0.8, 0] / 1024
    assert torch.allclose(w0 - model.weight.detach(), torch.tensor([[0.6, 0.8, 0.0]]))
    assert model.weight.grad is None  # zeroed after the step


def test_overflowing_step_is_skipped_and_reported(monkeypatch) -> None:
    """The skip is counted on the device: asking the scaler for its scale on the host (``get_scale``)
    would be a host sync per step on a GPU."""
    model, optimizer, x = _linear()
    plan = _scaled_plan()
    w0 = model.weight.detach().clone()

    def host_sync(*_: object) -> float:
        raise AssertionError("get_scale() reads the scale back to the host")

    with monkeypatch.context() as patch:
        patch.setattr(plan.scaler, "get_scale", host_sync)
        ended = plan.backward_and_step(model(x * float("inf")).sum(), optimizer, model=model, grad_clip=1.0, step=True)
        assert ended is True and torch.equal(model.weight.detach(), w0)  # the step ended, skipped
        assert plan.skipped_steps.item() == 1
        assert plan.backward_and_step(model(x).sum(), optimizer, model=model, grad_clip=None, step=True) is True
        assert plan.skipped_steps.item() == 1 and not torch.equal(model.weight.detach(), w0)
    assert plan.scaler.get_scale() == 512.0


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_accumulation_equals_one_big_batch(dtype: str) -> None:
    plan = resolve_precision(_cfg(dtype), CPU)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, generator=g), torch.randn(8, 1, generator=g)
    big, big_opt, _ = _linear()
    with plan.autocast():
        loss = nn.functional.mse_loss(big(x).float(), y)
    plan.backward_and_step(loss, big_opt, model=big, grad_clip=None, step=True)
    acc, acc_opt, _ = _linear()
    results = []
    for i, half in enumerate((slice(0, 4), slice(4, 8))):
        with plan.autocast():
            loss = nn.functional.mse_loss(acc(x[half]).float(), y[half])
        results.append(plan.backward_and_step(loss / 2, acc_opt, model=acc, grad_clip=None, step=i == 1))
    assert results == [False, True]
    tol = 1e-6 if dtype == "fp32" else 2e-2
    assert torch.allclose(acc.weight, big.weight, atol=tol)
    assert not torch.equal(acc.weight.detach(), torch.tensor([[0.5, -1.0, 2.0]]))


def test_validate_refuses_fp16_with_a_cpu_device(tmp_path: Path) -> None:
    path = write_params(tmp_path / "params.yaml", **{"precision.dtype": "fp16", "train.device": "cpu"})
    with pytest.raises(ConfigError) as info:
        load_params(path)
    problem = next(p for p in info.value.problems if p.key == "precision.dtype")
    assert "CUDA" in problem.message and problem.line is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_auto_fp16_and_tf32() -> None:
    cuda = torch.device("cuda")
    auto = resolve_precision(_cfg("auto"), cuda)
    native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    assert auto.dtype == (torch.bfloat16 if native_bf16 else torch.float32)
    assert auto.channels_last and not auto.scaler.is_enabled()
    fp16 = resolve_precision(_cfg("fp16"), cuda)
    assert fp16.scaler.is_enabled()
    with fp16.autocast():
        assert (torch.randn(4, 8, device=cuda) @ torch.randn(8, 2, device=cuda)).dtype == torch.float16
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    resolve_precision({**_cfg("fp32"), "tf32": False}, cuda)
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    model = nn.Linear(3, 1).to(cuda)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with fp16.autocast():
        loss = model(torch.randn(4, 3, device=cuda)).float().pow(2).mean()
    assert fp16.backward_and_step(loss, opt, model=model, grad_clip=1.0, step=True)
