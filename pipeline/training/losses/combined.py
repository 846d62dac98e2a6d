"""Losses made of other losses: ``dice_bce`` (binary segmentation's usual pair) and ``sum``, the weighted sum
of the ``terms`` a params file lists."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.training.losses.base import BINARY, MULTICLASS, MULTILABEL, losses
from pipeline.training.losses.cross_entropy import BCELoss
from pipeline.training.losses.overlap import DiceLoss


@losses.register("dice_bce")
class DiceBCELoss(nn.Module):
    """bce_weight * BCE + dice_weight * Dice for binary segmentation (Dice pooled by default)."""

    supports = (BINARY,)

    def __init__(
        self,
        *,
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        smooth: float = 1.0,
        per_sample: bool = False,
        pos_weight: float | None = None,
    ):
        super().__init__()
        self.bce_weight, self.dice_weight = bce_weight, dice_weight
        self.bce = BCELoss(pos_weight=pos_weight)
        self.dice = DiceLoss(smooth=smooth, per_sample=per_sample)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.bce_weight * self.bce(logits, target) + self.dice_weight * self.dice(logits, target)


class WeightedSum(nn.Module):
    """``name: sum``: the weighted sum of the losses listed in ``terms``."""

    supports = (BINARY, MULTICLASS, MULTILABEL)

    def __init__(self, terms: list[tuple[float, nn.Module]]):
        super().__init__()
        self.weights = [w for w, _ in terms]
        self.terms = nn.ModuleList([m for _, m in terms])

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(w * term(logits, target) for w, term in zip(self.weights, self.terms))


losses.add("sum", WeightedSum)
