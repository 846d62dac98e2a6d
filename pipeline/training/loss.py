"""Losses: the ``loss`` section -> an ``nn.Module`` called as ``loss(logits, target)``.

Every loss takes logits and computes in float32 with autocast switched off, using the
``*_with_logits`` / ``log_softmax`` forms (``sigmoid`` + ``F.binary_cross_entropy`` is refused by
CUDA autocast and loses precision). Binary means one logit channel (``C == 1``, sigmoid); multi-class
means ``C >= 2`` (softmax). Logits are ``[N, C, H, W]`` (segmentation) or ``[N, C]``
(classification); targets are class indices ``[N, H, W]`` / ``[N]`` (uint8 or int64).

Dice, IoU and Tversky take ``per_sample``: ``False`` (the default) pools the statistics over the
whole batch (one ratio per class, stable when some images have an empty mask); ``True`` computes the
ratio per image and averages (every image counts equally). On classification logits they are soft
set-overlap scores of the softmax probabilities against the one-hot labels (a "soft F1").
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config.checks import semantic_check
from pipeline.config.errors import PipelineError, Problem
from pipeline.config.registry import Registry, is_import_path, signature_problems

losses = Registry("losses", noun="loss")
BINARY, MULTICLASS = "binary", "multiclass"


def _binary_target(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """{0,1} class indices -> float targets shaped like the one-channel logits."""
    if target.numel() != logits.numel():
        raise PipelineError(f"binary loss: logits {tuple(logits.shape)} and target {tuple(target.shape)} "
                            "do not match (expected one logit channel per target value)")
    return target.reshape(logits.shape).to(logits.dtype)


def _flat_probs_and_onehot(logits: torch.Tensor, target: torch.Tensor,
                           include_background: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
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

    def __init__(self, *, alpha: float = 0.3, beta: float = 0.7, smooth: float = 1.0,
                 per_sample: bool = False, include_background: bool = True):
        super().__init__(smooth=smooth, per_sample=per_sample, include_background=include_background)
        self.alpha, self.beta = alpha, beta

    def ratio(self, tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
        return (tp + self.smooth) / (tp + self.alpha * fp + self.beta * fn + self.smooth)


@losses.register("bce")
class BCELoss(nn.Module):
    """Binary cross-entropy on one logit channel (``binary_cross_entropy_with_logits``)."""

    supports = (BINARY,)

    def __init__(self, *, pos_weight: float | None = None):
        super().__init__()
        self.pos_weight = pos_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pos_weight = None if self.pos_weight is None else logits.new_tensor(self.pos_weight)
        return F.binary_cross_entropy_with_logits(logits, _binary_target(logits, target), pos_weight=pos_weight)


@losses.register("cross_entropy")
class CrossEntropyLoss(nn.Module):
    """Multi-class cross-entropy (log_softmax form): weight, label_smoothing, ignore_index.

    The standard choice for classification and multi-class segmentation."""

    supports = (MULTICLASS,)

    def __init__(self, *, weight: Sequence[float] | None = None, label_smoothing: float = 0.0,
                 ignore_index: int = -100):
        super().__init__()
        self.weight = None if weight is None else [float(w) for w in weight]
        self.label_smoothing, self.ignore_index = label_smoothing, ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else logits.new_tensor(self.weight)
        return F.cross_entropy(logits, target.long(), weight=weight, ignore_index=self.ignore_index,
                               label_smoothing=self.label_smoothing)


@losses.register("dice_bce")
class DiceBCELoss(nn.Module):
    """bce_weight * BCE + dice_weight * Dice for binary segmentation (Dice pooled by default)."""

    supports = (BINARY,)

    def __init__(self, *, bce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0,
                 per_sample: bool = False, pos_weight: float | None = None):
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
            p = torch.sigmoid(logits)
            p_t = p * t + (1 - p) * (1 - t)
            loss = ce * (1 - p_t) ** self.gamma
            if self.alpha is not None:
                if not isinstance(self.alpha, (int, float)):
                    raise PipelineError("loss focal: binary alpha must be one number (the weight of positives)")
                loss = loss * (self.alpha * t + (1 - self.alpha) * (1 - t))
            return loss.mean()
        idx = target.long().unsqueeze(1)
        logp_t = F.log_softmax(logits, dim=1).gather(1, idx).squeeze(1)
        loss = -logp_t * (1 - logp_t.exp()) ** self.gamma
        if isinstance(self.alpha, list):
            if len(self.alpha) != logits.shape[1]:
                raise PipelineError(f"loss focal: alpha has {len(self.alpha)} weights for {logits.shape[1]} classes")
            loss = loss * logits.new_tensor(self.alpha)[target.long()]
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


class _FunctionLoss(nn.Module):
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
            raise PipelineError(f"loss {self.name!r} must return a scalar tensor, got "
                                f"{tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__}")
        return value.reshape(()).float()


def _mode(num_outputs: int) -> str:
    return BINARY if num_outputs == 1 else MULTICLASS


def _build_one(name: str, params: dict[str, Any], num_outputs: int) -> nn.Module:
    if name == "sum":
        raise PipelineError("loss.terms: sum cannot be nested inside terms; list the terms directly")
    impl = losses.get(name)
    if is_import_path(name):
        if inspect.isclass(impl):
            if not issubclass(impl, nn.Module):
                raise PipelineError(f"loss {name!r}: a class must be a torch.nn.Module")
            return impl(**params)
        if not callable(impl):
            raise PipelineError(f"loss {name!r} is neither an nn.Module class nor a function")
        return _FunctionLoss(impl, params)
    mode = _mode(num_outputs)
    if mode not in impl.supports:
        raise PipelineError(_mode_message(name, mode, num_outputs))
    for arg, message in _per_class_problems(name, params, num_outputs):
        raise PipelineError(f"loss {name!r} params.{arg}: {message}")
    return impl(**params)


def _per_class_problems(name: str, params: dict[str, Any], num_outputs: int | None) -> list[tuple[str, str]]:
    """Per-class weight lists (cross_entropy ``weight``, focal ``alpha``) must match the classes."""
    arg = {"cross_entropy": "weight", "focal": "alpha"}.get(name)
    value = params.get(arg) if arg else None
    if value is None or num_outputs is None:
        return []
    if num_outputs == 1:
        if isinstance(value, list):
            return [(arg, "binary focal alpha is one number (the weight of the positive class)")]
        return []
    if isinstance(value, list) and len(value) != num_outputs:
        return [(arg, f"{len(value)} per-class weights for {num_outputs} classes")]
    return []


def _mode_message(name: str, mode: str, num_outputs: int | None) -> str:
    outs = f" ({num_outputs} output channels)" if num_outputs else ""
    if mode == MULTICLASS and name in ("bce", "dice_bce"):
        return (f"{name} is for binary tasks (one logit channel); this task is multi-class{outs}: use "
                "cross_entropy, or name: sum with terms [{name: dice}, {name: cross_entropy}]")
    if mode == BINARY:
        return (f"{name} is for multi-class tasks; this task is binary (one logit channel): use bce, "
                "dice_bce, dice, iou, tversky or focal")
    return f"{name} does not support multi-class tasks{outs}"


def build_loss(cfg: dict[str, Any], *, task: str, num_outputs: int) -> nn.Module:
    """The loss module for the resolved ``loss`` section; ``num_outputs`` is the model's logit count
    (1 = binary). ``task`` is recorded for messages only: the mode comes from ``num_outputs``."""
    name = cfg["name"]
    if name == "sum":
        terms = cfg.get("terms") or []
        if not terms:
            raise PipelineError("loss.terms: name: sum needs at least one term")
        inner: nn.Module = WeightedSum([(float(t.get("weight", 1.0)),
                                         _build_one(t["name"], dict(t.get("params") or {}), num_outputs))
                                        for t in terms])
    else:
        inner = _build_one(name, dict(cfg.get("params") or {}), num_outputs)
    return Float32Loss(inner, f"{name} ({task})")


# --- validate-time checks --------------------------------------------------------------------------

def _expected_outputs(params: Any) -> tuple[str | None, int | None]:
    """(binary or multi-class, logit channels) from the data section, as far as known without data."""
    if params.has("model.num_classes") and params.get("model.num_classes") is not None:
        return None, None  # the model overrides the head size; build_loss checks at run time
    task, num_classes = params.get("data.task"), params.get("data.num_classes")
    if task == "classification":
        return MULTICLASS, num_classes
    if num_classes is None:
        return None, None
    return (BINARY, 1) if num_classes == 2 else (MULTICLASS, num_classes)


def _loss_problems(name: str, loss_params: dict[str, Any], key: str,
                   expected: tuple[str | None, int | None]) -> list[Problem]:
    """Problems of one loss entry at ``key`` (``loss`` or ``loss.terms[i]``)."""
    if name == "sum":
        return [Problem(f"{key}.name", "sum cannot be nested inside terms; list the terms directly")]
    if name not in losses:
        return [Problem(f"{key}.name", losses.unknown_message(name))]
    try:
        impl = losses.get(name)
    except Exception as exc:  # user code may fail to import in any way; report it, no traceback
        return [Problem(f"{key}.name", str(exc) if isinstance(exc, PipelineError)
                        else f"importing {name!r} failed: {type(exc).__name__}: {exc}")]
    skip, (mode, num_outputs) = 0, expected
    if is_import_path(name):
        if inspect.isclass(impl) and not issubclass(impl, nn.Module):
            return [Problem(f"{key}.name", f"{name!r} is a class but not a torch.nn.Module")]
        if not callable(impl):
            return [Problem(f"{key}.name", f"{name!r} is neither an nn.Module class nor a function")]
        skip = 0 if inspect.isclass(impl) else 2  # a function takes (logits, target) first
    elif mode is not None and mode not in impl.supports:
        return [Problem(f"{key}.name", _mode_message(name, mode, None))]
    bad = signature_problems(impl, loss_params, skip=skip)
    if not is_import_path(name):
        bad += _per_class_problems(name, loss_params, num_outputs)
    return [Problem(f"{key}.params.{arg}" if arg else f"{key}.params", message) for arg, message in bad]


@semantic_check("loss", "data")
def check_loss(params: Any) -> list[Problem]:
    """Loss names exist, their params bind, sum has terms, and the loss fits the task."""
    cfg = params.get("loss")
    expected = _expected_outputs(params)
    problems: list[Problem] = []
    if cfg["name"] == "sum":
        if not cfg["terms"]:
            problems.append(Problem("loss.terms", "name: sum needs at least one term, e.g. "
                                    "[{name: dice, weight: 1}, {name: focal, weight: 0.5}]"))
        if cfg["params"]:
            problems.append(Problem("loss.params", "name: sum takes no params; give each term its own params"))
        for i, term in enumerate(cfg["terms"]):
            problems += _loss_problems(term["name"], term.get("params") or {}, f"loss.terms[{i}]", expected)
    else:
        if cfg["terms"]:
            problems.append(Problem("loss.terms", f"terms are only used with name: sum (name is {cfg['name']!r})"))
        problems += _loss_problems(cfg["name"], cfg["params"], "loss", expected)
    return problems
