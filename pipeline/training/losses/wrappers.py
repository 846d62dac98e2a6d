"""What wraps the chosen loss: a user function as a module, and the float32 wrapper every built loss runs in
(autocast off, float32 logits, int64 targets (float32 multilabel targets), a scalar out)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pipeline.config.errors import PipelineError


class FunctionLoss(nn.Module):
    """A user function ``fn(logits, target, **params)`` as a module."""

    def __init__(self, fn: Callable[..., torch.Tensor], params: dict[str, Any]):
        super().__init__()
        self.fn, self.params = fn, params

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.fn(logits, target, **self.params)


class Float32Loss(nn.Module):
    """What :func:`build_loss` returns: autocast off, float32 logits, int64 class-index targets (multilabel
    multi-hot targets float32), a scalar out."""

    def __init__(self, inner: nn.Module, name: str):
        super().__init__()
        self.inner, self.name = inner, name

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=logits.device.type, enabled=False):
            value = self.inner(logits.float(), target.float() if target.is_floating_point() else target.long())
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise PipelineError(
                f"loss {self.name!r} must return a scalar tensor, got "
                f"{tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__}"
            )
        return value.reshape(()).float()
