"""Set-overlap losses: Dice, IoU and Tversky.

They take ``per_sample``: ``False`` (the default) pools the statistics over the whole batch (one ratio per
class, stable when some images have an empty mask); ``True`` computes the ratio per image and averages
(every image counts equally). On classification logits they are soft set-overlap scores of the softmax
probabilities against the one-hot labels (a "soft F1").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.training.losses.base import BINARY, MULTICLASS, binary_target, losses


def _flat_probs_and_onehot(
    logits: torch.Tensor, target: torch.Tensor, include_background: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities and one-hot targets as ``[N, C, S]`` (``S`` = pixels, 1 for classification)."""
    n, c = logits.shape[:2]
    if c == 1:
        probs, onehot = torch.sigmoid(logits), binary_target(logits, target)
    else:
        probs = torch.softmax(logits, dim=1)
        onehot = F.one_hot(target.long(), c).movedim(-1, 1).to(logits.dtype)
        if not include_background:
            probs, onehot = probs[:, 1:], onehot[:, 1:]
    return probs.reshape(n, probs.shape[1], -1), onehot.reshape(n, onehot.shape[1], -1)


def _overlap_stats(probs: torch.Tensor, onehot: torch.Tensor, per_sample: bool) -> tuple[torch.Tensor, ...]:
    """Soft true positives, false positives and false negatives, per class ``[C]`` (pooled over the
    batch) or per image and class ``[N, C]``."""
    dims = (2,) if per_sample else (0, 2)
    tp = (probs * onehot).sum(dims)
    fp = (probs * (1 - onehot)).sum(dims)
    fn = ((1 - probs) * onehot).sum(dims)
    return tp, fp, fn


class _OverlapLoss(nn.Module):
    """Shared body of Dice, IoU and Tversky: ``1 - mean(ratio)`` with ``smooth`` added to both sides
    of the ratio, so an empty target with an empty prediction gives 0 loss (never 0/0)."""

    supports = (BINARY, MULTICLASS)

    def __init__(self, *, smooth: float, per_sample: bool, include_background: bool):
        super().__init__()
        self.smooth, self.per_sample, self.include_background = smooth, per_sample, include_background

    def ratio(self, tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs, onehot = _flat_probs_and_onehot(logits, target, self.include_background)
        tp, fp, fn = _overlap_stats(probs, onehot, self.per_sample)
        return 1 - self.ratio(tp, fp, fn).mean()


@losses.register("dice")
class DiceLoss(_OverlapLoss):
    """Soft Dice: 1 - (2TP + smooth) / (2TP + FP + FN + smooth); pooled over the batch by default."""

    def __init__(self, *, smooth: float = 1.0, per_sample: bool = False, include_background: bool = True):
        super().__init__(smooth=smooth, per_sample=per_sample, include_background=include_background)

    def ratio(self, tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
        return (2 * tp + self.smooth) / (2 * tp + fp + fn + self.smooth)


@losses.register("iou")
class IoULoss(_OverlapLoss):
    """Soft IoU (Jaccard): 1 - (TP + smooth) / (TP + FP + FN + smooth); pooled over the batch by default."""

    def __init__(self, *, smooth: float = 1.0, per_sample: bool = False, include_background: bool = True):
        super().__init__(smooth=smooth, per_sample=per_sample, include_background=include_background)

    def ratio(self, tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
        return (tp + self.smooth) / (tp + fp + fn + self.smooth)


@losses.register("tversky")
class TverskyLoss(_OverlapLoss):
    """Tversky: 1 - (TP + s) / (TP + alpha FP + beta FN + s); pooled over the batch by default.

    beta > alpha penalises missed foreground more than false alarms (defaults 0.3/0.7 as in Salehi et
    al. 2017; 0.5/0.5 is Dice)."""

    def __init__(
        self,
        *,
        alpha: float = 0.3,
        beta: float = 0.7,
        smooth: float = 1.0,
        per_sample: bool = False,
        include_background: bool = True,
    ):
        super().__init__(smooth=smooth, per_sample=per_sample, include_background=include_background)
        self.alpha, self.beta = alpha, beta

    def ratio(self, tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
        return (tp + self.smooth) / (tp + self.alpha * fp + self.beta * fn + self.smooth)
