"""The focal loss (Lin et al. 2017): cross-entropy down-weighted where the prediction is already right."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config.errors import PipelineError
from pipeline.training.losses.base import BINARY, MULTICLASS, MULTILABEL, binary_target, constant, losses


@losses.register("focal")
class FocalLoss(nn.Module):
    """Focal loss per element, ce * (1 - p_t) ** gamma (times alpha_t when alpha is set), averaged.

    Binary (and multilabel, one sigmoid per class against multi-hot targets) equals
    ``torchvision.ops.sigmoid_focal_loss(..., reduction="mean")``; there ``alpha`` weighs positives
    (RetinaNet used 0.25). Multi-class uses the softmax form with ``alpha`` a per-class weight list (or
    one number scaling every class)."""

    supports = (BINARY, MULTICLASS, MULTILABEL)

    def __init__(self, *, gamma: float = 2.0, alpha: float | Sequence[float] | None = None):
        super().__init__()
        self.gamma = gamma
        self.alpha = alpha if alpha is None or isinstance(alpha, (int, float)) else [float(a) for a in alpha]

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] == 1 or target.shape == logits.shape:  # sigmoid: binary, or multilabel multi-hot
            t = binary_target(logits, target)
            ce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
            # (1 - p_t) ** gamma as exp(gamma * log(1 - p_t)), log(1 - p_t) = logsigmoid(-z_t): the power's
            # gradient is infinite where p_t -> 1 for gamma < 1 (NaN gradients at a finite loss).
            z_t = logits * (2 * t - 1)
            loss = ce * torch.exp(self.gamma * F.logsigmoid(-z_t))
            if self.alpha is not None:
                if not isinstance(self.alpha, (int, float)):
                    raise PipelineError(
                        "loss focal: binary and multilabel alpha must be one number (the weight of positives)"
                    )
                loss = loss * (self.alpha * t + (1 - self.alpha) * (1 - t))
            return loss.mean()
        idx = target.long().unsqueeze(1)
        logp = F.log_softmax(logits, dim=1)
        logp_t = logp.gather(1, idx).squeeze(1)
        # log(1 - p_t) is the log-sum of the other classes' probabilities: finite where p_t -> 1
        log_rest = torch.logsumexp(logp.scatter(1, idx, float("-inf")), dim=1)
        loss = -logp_t * torch.exp(self.gamma * log_rest)
        if isinstance(self.alpha, list):
            if len(self.alpha) != logits.shape[1]:
                raise PipelineError(f"loss focal: alpha has {len(self.alpha)} weights for {logits.shape[1]} classes")
            loss = loss * constant(self, "alpha", logits)[target.long()]
        elif self.alpha is not None:
            loss = loss * self.alpha
        return loss.mean()
