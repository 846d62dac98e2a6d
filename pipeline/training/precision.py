"""Precision: the ``precision`` section + the device -> a :class:`PrecisionPlan` the train loop uses.

fp32, fp16 (autocast + GradScaler, CUDA only) or bf16 (autocast, no scaler; works on CPU too);
``auto`` is bf16 on GPUs that support it natively and fp32 everywhere else (older GPUs: ask for fp16).
The autocast context is built once (nanoGPT style); the scaler exists always but is enabled only for
fp16, so the training step (:class:`pipeline.training.loop.TrainStep`) has one code path.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pipeline.config.errors import PipelineError, Problem
from pipeline.config.params import Params

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _cuda_bf16(device: torch.device) -> bool:
    """Native bf16 (Ampere and newer); emulated bf16 on older GPUs is slower than fp32."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # older torch without the argument
        return torch.cuda.is_bf16_supported()


def _set_tf32(enabled: bool) -> None:
    """TF32 matmuls and convolutions (Ampere+): ~fp32 range with a 10-bit mantissa, much faster."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9: the legacy allow_tf32 flags are deprecated
        matmul.fp32_precision = "tf32" if enabled else "ieee"
        torch.backends.cudnn.conv.fp32_precision = "tf32" if enabled else "ieee"  # type: ignore[attr-defined]  # set at import
    else:
        matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


@dataclass
class PrecisionPlan:
    """How the train loop runs numerically on one device."""

    dtype: torch.dtype
    device: torch.device
    channels_last: bool
    compile: bool
    scaler: torch.amp.GradScaler
    _autocast: contextlib.AbstractContextManager[Any] = field(repr=False, default_factory=contextlib.nullcontext)

    @property
    def name(self) -> str:
        return {v: k for k, v in DTYPES.items()}[self.dtype]

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The autocast context (built once; a no-op for fp32): ``with plan.autocast(): ...``."""
        return self._autocast

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Move to the device, channels_last when on, torch.compile when asked: all in place
        (``Module.compile``), so ``model`` is what is trained, validated and saved, its state dict's
        keys unchanged. Returns ``model``."""
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.compile:
            model.compile()
        return model


def _resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested == "auto":
        return torch.bfloat16 if _cuda_bf16(device) else torch.float32
    if requested == "fp16" and device.type != "cuda":
        raise PipelineError(
            f"precision.dtype: fp16 needs a CUDA GPU (GradScaler and fast fp16 kernels), "
            f"but the device is {device.type}; use bf16 or fp32 there"
        )
    if requested == "bf16" and device.type == "cuda" and not _cuda_bf16(device):
        raise PipelineError("precision.dtype: this GPU has no native bf16; use fp16 (with its GradScaler) or fp32")
    return DTYPES[requested]


def resolve_precision(cfg: dict[str, Any], device: torch.device) -> PrecisionPlan:
    """The plan for the resolved ``precision`` section on ``device`` (sets TF32 flags on CUDA)."""
    device = torch.device(device)
    dtype = _resolve_dtype(cfg.get("dtype", "auto"), device)
    channels_last = cfg.get("channels_last", "auto")
    channels_last = device.type == "cuda" if channels_last == "auto" else bool(channels_last)
    if device.type == "cuda":
        _set_tf32(bool(cfg.get("tf32", True)))
    ctx = contextlib.nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    return PrecisionPlan(dtype, device, channels_last, bool(cfg.get("compile", False)), scaler, ctx)


def check_precision(params: Params) -> list[Problem]:
    """fp16 on a device that is certainly a CPU is refused before anything runs."""
    if params.get("precision.dtype") == "fp16" and params.get("train.device") in ("cpu", "mps"):
        return [
            Problem(
                "precision.dtype",
                f"fp16 needs a CUDA GPU but train.device is {params.get('train.device')!r}; use bf16 or fp32",
            )
        ]
    return []
