"""The loss modules the ``loss`` section names (registered in :data:`losses`).

Every loss takes logits; :func:`pipeline.training.loss.build_loss` wraps the chosen one so it runs in
float32 with autocast off. Binary means one logit channel (``C == 1``, sigmoid); multi-class means
``C >= 2`` (softmax). Logits are ``[N, C, H, W]`` (segmentation) or ``[N, C]`` (classification);
targets are class indices ``[N, H, W]`` / ``[N]`` (int64).

Dice, IoU and Tversky take ``per_sample``: ``False`` (the default) pools the statistics over the
whole batch (one ratio per class, stable when some images have an empty mask); ``True`` computes the
ratio per image and averages (every image counts equally). On classification logits they are soft
set-overlap scores of the softmax probabilities against the one-hot labels (a "soft F1").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config.errors import PipelineError
from pipeline.config.registry import Registry

losses = Registry("losses", noun="loss")
BINARY, MULTICLASS = "binary", "multiclass"


def _binary_target(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """{0,1} class indices -> float targets shaped like the one-channel logits."""
    if target.numel() != logits.numel():
        raise PipelineError(
            f"binary loss: logits {tuple(logits.shape)} and target {tuple(target.shape)} "
            "do not match (expected one logit channel per target value)"
        )
    return target.reshape(logits.shape).to(logits.dtype)


def _flat_probs_and_onehot(
    logits: torch.Tensor, target: torch.Tensor, include_background: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities and one-hot targets as ``[N, C, S]`` (``S`` = pixels, 1 for classification)."""
    n, c = logits.shape[:2]
    if c == 1:
        probs, onehot = torch.sigmoid(logits), _binary_target(logits, target)
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


def constant(loss: nn.Module, name: str, like: torch.Tensor) -> torch.Tensor:
    """``loss.<name>`` (a number or a list of class weights) as a tensor on ``like``'s device and dtype,
    built once and kept: building it from the Python value every step is a blocking host-to-device
    copy (a host sync per step) on a GPU."""
    cache = loss.__dict__.setdefault("_constants", {})
    key = (name, like.device, like.dtype)
    if key not in cache:
        cache[key] = like.new_tensor(getattr(loss, name))
    return cache[key]


@losses.register("bce")
class BCELoss(nn.Module):
    """Binary cross-entropy on one logit channel (``binary_cross_entropy_with_logits``)."""

    supports = (BINARY,)

    def __init__(self, *, pos_weight: float | None = None):
        super().__init__()
        self.pos_weight = pos_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pos_weight = None if self.pos_weight is None else constant(self, "pos_weight", logits)
        return F.binary_cross_entropy_with_logits(logits, _binary_target(logits, target), pos_weight=pos_weight)


@losses.register("cross_entropy")
class CrossEntropyLoss(nn.Module):
    """Multi-class cross-entropy (log_softmax form): weight, label_smoothing, ignore_index.

    The standard choice for classification and multi-class segmentation."""

    supports = (MULTICLASS,)

    def __init__(
        self, *, weight: Sequence[float] | None = None, label_smoothing: float = 0.0, ignore_index: int = -100
    ):
        super().__init__()
        self.weight = None if weight is None else [float(w) for w in weight]
        self.label_smoothing, self.ignore_index = label_smoothing, ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else constant(self, "weight", logits)
        return F.cross_entropy(
            logits, target.long(), weight=weight, ignore_index=self.ignore_index, label_smoothing=self.label_smoothing
        )


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


@losses.register("focal")
class FocalLoss(nn.Module):
    """Focal loss per element, ce * (1 - p_t) ** gamma (times alpha_t when alpha is set), averaged.

    Binary equals ``torchvision.ops.sigmoid_focal_loss(..., reduction="mean")``; binary
    ``alpha`` weighs positives (RetinaNet used 0.25). Multi-class uses the softmax form with ``alpha``
    a per-class weight list (or one number scaling every class)."""

    supports = (BINARY, MULTICLASS)

    def __init__(self, *, gamma: float = 2.0, alpha: float | Sequence[float] | None = None):
        super().__init__()
        self.gamma = gamma
        self.alpha = alpha if alpha is None or isinstance(alpha, (int, float)) else [float(a) for a in alpha]

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] == 1:
            t = _binary_target(logits, target)
            ce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
            # (1 - p_t) ** gamma as exp(gamma * log(1 - p_t)), log(1 - p_t) = logsigmoid(-z_t): the power's
            # gradient is infinite where p_t -> 1 for gamma < 1 (NaN gradients at a finite loss).
            z_t = logits * (2 * t - 1)
            loss = ce * torch.exp(self.gamma * F.logsigmoid(-z_t))
            if self.alpha is not None:
                if not isinstance(self.alpha, (int, float)):
                    raise PipelineError("loss focal: binary alpha must be one number (the weight of positives)")
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


class WeightedSum(nn.Module):
    """``name: sum``: the weighted sum of the losses listed in ``terms``."""

    supports = (BINARY, MULTICLASS)

    def __init__(self, terms: list[tuple[float, nn.Module]]):
        super().__init__()
        self.weights = [w for w, _ in terms]
        self.terms = nn.ModuleList([m for _, m in terms])

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(w * term(logits, target) for w, term in zip(self.weights, self.terms))


losses.add("sum", WeightedSum)


class FunctionLoss(nn.Module):
    """A user function ``fn(logits, target, **params)`` as a module."""

    def __init__(self, fn: Callable[..., torch.Tensor], params: dict[str, Any]):
        super().__init__()
        self.fn, self.params = fn, params

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.fn(logits, target, **self.params)


class Float32Loss(nn.Module):
    """What :func:`build_loss` returns: autocast off, float32 logits, int64 targets, a scalar out."""

    def __init__(self, inner: nn.Module, name: str):
        super().__init__()
        self.inner, self.name = inner, name

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=logits.device.type, enabled=False):
            value = self.inner(logits.float(), target.long())
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise PipelineError(
                f"loss {self.name!r} must return a scalar tensor, got "
                f"{tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__}"
            )
        return value.reshape(()).float()
