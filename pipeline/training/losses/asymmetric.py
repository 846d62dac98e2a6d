"""The asymmetric loss (Ridnik et al. 2021, "Asymmetric Loss For Multi-Label Classification"): binary
cross-entropy per class whose easy negatives, the many absent classes of a multi-label image, are
down-weighted harder than its positives and shifted by a probability margin.

Per logit ``x`` with ``p = sigmoid(x)`` and target ``y``:

    L+ = (1 - p) ** gamma_pos * log(p)
    L- = p_m ** gamma_neg * log(1 - p_m),   p_m = max(p - clip, 0)
    loss = -mean(y L+ + (1 - y) L-)

``clip`` discards negatives predicted below it entirely (and their gradient). The paper's code sums
over the batch; the mean here keeps the loss's scale, and so the learning rate, comparable with
``bce`` and ``focal``. Defaults are the paper's (gamma_neg 4, gamma_pos 0, clip 0.05).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.training.losses.base import BINARY, MULTILABEL, binary_target, losses


@losses.register("asymmetric")
class AsymmetricLoss(nn.Module):
    """ASL for sigmoid outputs (multilabel, or one binary channel); logs from ``logsigmoid``, so a
    confident logit gives a finite loss and gradient."""

    supports = (BINARY, MULTILABEL)
    soft_targets = True  # linear in the target: mixup/cutmix's mixed multi-hot vectors

    def __init__(self, *, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05):
        super().__init__()
        if gamma_neg < 0 or gamma_pos < 0:
            raise ValueError(f"gamma_neg and gamma_pos must be >= 0 (got {gamma_neg}, {gamma_pos})")
        if not 0.0 <= clip < 1.0:
            raise ValueError(f"clip must lie in [0, 1) (got {clip})")
        self.gamma_neg, self.gamma_pos, self.clip = gamma_neg, gamma_pos, clip

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        t = binary_target(logits, target)
        log_p = F.logsigmoid(logits)
        positive = log_p
        if self.gamma_pos:  # (1 - p) ** gamma as exp(gamma * log(1 - p)): finite gradient as p -> 1
            positive = positive * torch.exp(self.gamma_pos * F.logsigmoid(-logits))
        if self.clip > 0:
            p_m = (torch.sigmoid(logits) - self.clip).clamp(min=0)
            log_not = torch.log((torch.sigmoid(-logits) + self.clip).clamp(max=1.0))  # 1 - p_m >= clip > 0
        else:
            p_m, log_not = torch.sigmoid(logits), F.logsigmoid(-logits)
        negative = log_not
        if self.gamma_neg:
            negative = negative * p_m.pow(self.gamma_neg)
        return -(t * positive + (1 - t) * negative).mean()
