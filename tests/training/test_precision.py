"""Precision: bf16 autocast on CPU, fp16 refused on CPU, auto = fp32 on CPU, the GradScaler only for
fp16, channels_last, compile in place. The step that uses them (clipping after unscaling, skipped
overflow steps, gradient accumulation): tests/training/test_loop.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline.config.errors import ConfigError, PipelineError
from pipeline.config.params import load_params
from pipeline.training.precision import resolve_precision
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


def test_compile_is_in_place_so_state_dict_keys_stay_plain() -> None:
    """One module is trained, validated and saved: no ``_orig_mod.`` wrapper (compiling is lazy: nothing runs)."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    prepared = resolve_precision(_cfg("fp32", compile=True), CPU).prepare_model(model)
    assert prepared is model and list(model.state_dict()) == ["0.weight", "0.bias"]


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
    # fp16's whole step (autocast, scaled backward, unscale, clip, step): tests/training/test_loop.py
