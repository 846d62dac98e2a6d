"""Cross-entropy losses: binary (one logit channel, ``bce``) and multi-class (``cross_entropy``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.training.losses.base import BINARY, MULTICLASS, MULTILABEL, binary_target, constant, losses


@losses.register("bce")
class BCELoss(nn.Module):
    """Binary cross-entropy (``binary_cross_entropy_with_logits``) on one logit channel, or per class on
    multilabel logits [N,C] against multi-hot targets; ``pos_weight`` one number, or per class."""

    supports = (BINARY, MULTILABEL)
    soft_targets = True  # targets in [0, 1] (mixup/cutmix's mixed multi-hot vectors) enter linearly

    def __init__(self, *, pos_weight: float | Sequence[float] | None = None):
        super().__init__()
        self.pos_weight = (
            pos_weight if pos_weight is None or isinstance(pos_weight, (int, float)) else [float(w) for w in pos_weight]
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pos_weight = None if self.pos_weight is None else constant(self, "pos_weight", logits)
        return F.binary_cross_entropy_with_logits(logits, binary_target(logits, target), pos_weight=pos_weight)


@losses.register("cross_entropy")
class CrossEntropyLoss(nn.Module):
    """Multi-class cross-entropy (log_softmax form): weight, label_smoothing, ignore_index.

    The standard choice for classification and multi-class segmentation. Takes class indices, or soft
    targets (class probabilities shaped like the logits: mixup/cutmix's, ``augment.mix``); on one-hot
    targets the two give the same value, class weights and label smoothing included."""

    supports = (MULTICLASS,)
    soft_targets = True

    def __init__(
        self, *, weight: Sequence[float] | None = None, label_smoothing: float = 0.0, ignore_index: int = -100
    ):
        super().__init__()
        self.weight = None if weight is None else [float(w) for w in weight]
        self.label_smoothing, self.ignore_index = label_smoothing, ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else constant(self, "weight", logits)
        if target.is_floating_point() and target.shape == logits.shape:
            return soft_cross_entropy(logits, target, weight=weight, label_smoothing=self.label_smoothing)
        return F.cross_entropy(
            logits, target.long(), weight=weight, ignore_index=self.ignore_index, label_smoothing=self.label_smoothing
        )


def soft_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, *, weight: torch.Tensor | None = None, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Cross-entropy against class probabilities ``target`` (shaped like ``logits``, classes on dim 1),
    averaged as the class-index form averages: over the samples, or with class ``weight`` divided by
    the targets' total weight (torch's soft-target form divides by the sample count instead, so a
    weighted loss on one-hot targets would differ from the hard one)."""
    if weight is None:
        return F.cross_entropy(logits, target, label_smoothing=label_smoothing)
    logp = F.log_softmax(logits, dim=1)
    w = weight.view(1, -1, *([1] * (logits.dim() - 2)))
    total = (w * target).sum()  # the weights of the targets before smoothing, as torch's hard form
    if label_smoothing:
        target = target * (1.0 - label_smoothing) + label_smoothing / logits.shape[1]
    return -(w * target * logp).sum() / total
