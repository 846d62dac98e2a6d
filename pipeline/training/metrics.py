"""Evaluation metrics for both tasks, computed from one confusion matrix kept on the device.

Train (validation every epoch) and evaluate share this. :meth:`ConfusionMeter.update` only adds
counts on the logits' device (no ``.item()``, no host sync); :meth:`ConfusionMeter.compute` copies
the small matrix to the host once and derives every number from it.

Segmentation statistics are POOLED over the whole dataset: the intersections and unions of all
pixels of all images are summed first and the ratio is taken once (a large image weighs more than a
small one; an image with no foreground cannot drag the mean to 0). Empty target and empty prediction
count as a perfect match (Dice/IoU 1.0), never NaN. Target pixels outside ``[0, num_classes)`` (e.g.
an "ignore" value of 255) are left out of every statistic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from pipeline.training.multilabel_metrics import MultilabelMeter

TASKS = ("segmentation", "classification", "multilabel")


def predict(logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Class indices from logits: one channel -> ``sigmoid(logit) > threshold``; else argmax over C."""
    if logits.shape[1] == 1:
        # sigmoid(x) > t  <=>  x > log(t / (1 - t)); compares in float32 without computing sigmoid.
        return (logits.float() > math.log(threshold / (1.0 - threshold))).squeeze(1).long()
    return logits.argmax(dim=1)


def confusion_counts(target: torch.Tensor, pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[K, K] int64 counts (rows = actual, columns = predicted) on the inputs' device, no host sync.

    Out-of-range targets land in a discarded extra bin instead of asserting on the device."""
    k = num_classes
    target = target.reshape(-1).long()
    pred = pred.reshape(-1).long()
    valid = (target >= 0) & (target < k)
    index = torch.where(valid, target * k + pred, torch.full_like(target, k * k))
    counts = torch.zeros(k * k + 1, dtype=torch.int64, device=target.device)
    counts.scatter_add_(0, index, torch.ones_like(index))
    return counts[: k * k].view(k, k)


def _ratio(num: float, den: float, *, empty: float) -> float:
    return num / den if den > 0 else empty


def _names(num_classes: int, class_names: Sequence[str] | None) -> list[str]:
    if class_names is None:
        return [str(i) for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    return [str(n) for n in class_names]


def segmentation_metrics(confusion: torch.Tensor, class_names: Sequence[str] | None = None) -> dict[str, float]:
    """Pooled Dice, IoU and pixel accuracy from a pixel confusion matrix (rows = actual).

    ``dice``/``iou``: binary -> of the foreground (class 1); multi-class -> mean over foreground
    classes 1..K-1 that occur in the target or the prediction (1.0 when none does). Per class
    (background included) ``dice/<name>`` and ``iou/<name>``."""
    cm = confusion.detach().to("cpu", torch.float64)
    k = cm.shape[0]
    names = _names(k, class_names)
    tp = cm.diagonal()
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    dice = [_ratio(2 * tp[c].item(), (2 * tp[c] + fp[c] + fn[c]).item(), empty=1.0) for c in range(k)]
    iou = [_ratio(tp[c].item(), (tp[c] + fp[c] + fn[c]).item(), empty=1.0) for c in range(k)]
    present = [c for c in range(1, k) if (tp[c] + fp[c] + fn[c]).item() > 0]
    out = {
        "dice": sum(dice[c] for c in present) / len(present) if present else 1.0,
        "iou": sum(iou[c] for c in present) / len(present) if present else 1.0,
        "pixel_accuracy": _ratio(tp.sum().item(), cm.sum().item(), empty=1.0),
    }
    for c, name in enumerate(names):
        out[f"dice/{name}"] = dice[c]
        out[f"iou/{name}"] = iou[c]
    return out


def classification_metrics(confusion: torch.Tensor, class_names: Sequence[str] | None = None) -> dict[str, float]:
    """Accuracy, per-class precision/recall/F1 (0 where undefined, as scikit-learn's
    ``zero_division=0``) and ``macro_f1``: the mean F1 over classes that occur in the target or the
    prediction (scikit-learn's default label set), from a confusion matrix (rows = actual)."""
    cm = confusion.detach().to("cpu", torch.float64)
    k = cm.shape[0]
    names = _names(k, class_names)
    tp = cm.diagonal()
    predicted = cm.sum(0)
    actual = cm.sum(1)
    out = {"accuracy": _ratio(tp.sum().item(), cm.sum().item(), empty=0.0)}
    f1s = []
    for c, name in enumerate(names):
        precision = _ratio(tp[c].item(), predicted[c].item(), empty=0.0)
        recall = _ratio(tp[c].item(), actual[c].item(), empty=0.0)
        f1 = _ratio(2 * precision * recall, precision + recall, empty=0.0)
        out[f"precision/{name}"] = precision
        out[f"recall/{name}"] = recall
        out[f"f1/{name}"] = f1
        if predicted[c].item() + actual[c].item() > 0:
            f1s.append(f1)
    out["macro_f1"] = sum(f1s) / len(f1s) if f1s else 0.0
    return out


SUMMARIES: dict[str, Callable[[torch.Tensor, Sequence[str] | None], dict[str, float]]] = {
    "segmentation": segmentation_metrics,
    "classification": classification_metrics,
}


def split_per_class(scores: Mapping[str, float]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """The headline scores (``dice``, ``accuracy``, ``macro_f1`` ...) apart from the per-class ones,
    whose keys are ``<score>/<class>``, given as ``{class: {score: value}}`` in class order. Headline
    scores are what `dvc exp show` lists (one column each); per-class ones go to a plot and a record."""
    headline: dict[str, float] = {}
    per_class: dict[str, dict[str, float]] = {}
    for key, value in scores.items():
        if "/" in key:
            score, name = key.split("/", 1)
            per_class.setdefault(name, {})[score] = value
        else:
            headline[key] = value
    return headline, per_class


class ConfusionMeter:
    """Accumulates a confusion matrix over batches; ``compute()`` turns it into the task's metrics."""

    def __init__(
        self, task: str, num_classes: int, *, threshold: float = 0.5, class_names: Sequence[str] | None = None
    ):
        if task not in SUMMARIES:
            raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.task = task
        self.num_classes = num_classes
        self.threshold = threshold
        self.class_names = _names(num_classes, class_names)
        self.confusion: torch.Tensor | None = None

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch: logits [N,C,H,W] / [N,C] (C == 1: binary, sigmoid), target [N,H,W] / [N]."""
        channels = logits.shape[1]
        if channels not in (1, self.num_classes) or (channels == 1 and self.num_classes != 2):
            raise ValueError(f"logits have {channels} channels; expected {self.num_classes} (or 1 for a binary task)")
        pred = predict(logits.detach(), self.threshold)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        counts = confusion_counts(target.detach(), pred, self.num_classes)
        self.confusion = counts if self.confusion is None else self.confusion.add_(counts)

    def reset(self) -> None:
        self.confusion = None

    def confusion_matrix(self) -> list[list[int]]:
        """Counts as nested lists (rows = actual class, columns = predicted class)."""
        if self.confusion is None:
            return [[0] * self.num_classes for _ in range(self.num_classes)]
        return self.confusion.cpu().tolist()

    def compute(self) -> dict[str, float]:
        """The task's metrics over everything seen since the last reset (one host copy)."""
        cm = torch.tensor(self.confusion_matrix(), dtype=torch.int64)
        return SUMMARIES[self.task](cm, self.class_names)


Meter = ConfusionMeter | MultilabelMeter  # what scoring fills and the loop reads


def make_meter(task: str, num_classes: int, *, threshold: Any = 0.5, class_names: Sequence[str] | None = None) -> Meter:
    """A meter for ``task`` ("segmentation" | "classification" | "multilabel") over ``num_classes``
    classes (background included; 2 = binary). ``threshold`` applies to single-channel (sigmoid) logits
    and, multilabel, to each class (a number, or a ``{class: value}`` mapping)."""
    if task == "multilabel":
        return MultilabelMeter(num_classes, threshold=threshold, class_names=class_names)
    return ConfusionMeter(task, num_classes, threshold=threshold, class_names=class_names)
