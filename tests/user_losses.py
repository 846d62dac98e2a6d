"""A user's own losses, named in params.yaml as ``tests.user_losses:ScaledL1`` (an nn.Module class)
or ``tests.user_losses:margin_loss`` (a function taking (logits, target) plus keyword arguments)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ScaledL1(nn.Module):
    """scale * mean |sigmoid(logits) - target| on one logit channel."""

    def __init__(self, *, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.scale * (torch.sigmoid(logits) - target.reshape(logits.shape).float()).abs().mean()


def margin_loss(logits: torch.Tensor, target: torch.Tensor, *, margin: float = 1.0) -> torch.Tensor:
    """Multi-class hinge loss with a margin."""
    return F.multi_margin_loss(
        logits.reshape(-1, logits.shape[1]) if logits.ndim == 2 else logits.movedim(1, -1).reshape(-1, logits.shape[1]),
        target.reshape(-1),
        margin=margin,
    )
