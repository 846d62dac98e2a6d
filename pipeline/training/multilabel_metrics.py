"""Multi-label metrics: per-class average precision and their mean (mAP), per-class, macro and micro
F1 at per-class thresholds, and the exact-match ratio, as scikit-learn computes them.

Average precision needs every score of the split (it ranks them), so :class:`MultilabelMeter` keeps
the probabilities and targets of each batch on the device (no host sync per batch; ``[N, C]`` floats,
small beside the images) and :meth:`~MultilabelMeter.compute` copies them to the host once.

Definitions (tested against ``sklearn.metrics``):

- ``ap/<class>``: ``average_precision_score`` of that column: sum over distinct score thresholds of
  (recall step) x precision. A class with no positive among the targets has no AP and is left out
  of ``map`` (scikit-learn would report 0 and warn); ``map`` is the mean over the classes that have one.
- ``f1/<class>``, ``precision/<class>``, ``recall/<class>``: at the class's threshold (probability
  above it = present), 0 where undefined (scikit-learn's ``zero_division=0``).
- ``macro_f1``: the mean of every class's F1 (scikit-learn ``average="macro"``); ``micro_f1``: F1 of
  the true/false positives and false negatives pooled over classes (``average="micro"``).
- ``exact_match``: the share of images whose predicted set equals their label set (subset accuracy).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from pipeline.config.errors import PipelineError, Problem


def thresholds_for(threshold: float | dict[str, float] | Sequence[float], class_names: Sequence[str]) -> list[float]:
    """One threshold per class: a number for all, a per-class list, or a ``{class: value}`` mapping
    (classes it does not name take 0.5; names not among the classes are the caller's to refuse)."""
    if isinstance(threshold, dict):
        return [float(threshold.get(name, 0.5)) for name in class_names]
    if isinstance(threshold, (int, float)):
        return [float(threshold)] * len(class_names)
    values = [float(t) for t in threshold]
    if len(values) != len(class_names):
        raise ValueError(f"{len(values)} thresholds for {len(class_names)} classes")
    return values


def average_precision(scores: torch.Tensor, positive: torch.Tensor) -> float | None:
    """scikit-learn's ``average_precision_score`` of one class: ``sum_n (R_n - R_{n-1}) P_n`` over the
    distinct scores, highest first (tied scores are one threshold); None without any positive."""
    total = int(positive.sum().item())
    if total == 0:
        return None
    order = torch.argsort(scores, descending=True, stable=True)
    ranked, hits = scores[order], positive[order].double()
    last_of_tie = torch.ones_like(ranked, dtype=torch.bool)
    last_of_tie[:-1] = ranked[1:] != ranked[:-1]
    tp = torch.cumsum(hits, 0)[last_of_tie]
    seen = (torch.nonzero(last_of_tie).squeeze(1) + 1).double()
    precision, recall = tp / seen, tp / total
    steps = torch.diff(recall, prepend=recall.new_zeros(1))
    return float((steps * precision).sum().item())


def multilabel_metrics(
    probs: torch.Tensor, targets: torch.Tensor, thresholds: Sequence[float], class_names: Sequence[str]
) -> dict[str, float]:
    """Every metric of the module docstring from probabilities and 0/1 targets ``[N, C]``."""
    probs, targets = probs.detach().to("cpu", torch.float64), targets.detach().to("cpu") > 0.5
    limits = torch.tensor(list(thresholds), dtype=torch.float64)
    predicted = probs > limits
    tp = (predicted & targets).sum(0).double()
    fp = (predicted & ~targets).sum(0).double()
    fn = (~predicted & targets).sum(0).double()
    out: dict[str, float] = {}
    aps, f1s = [], []
    for c, name in enumerate(class_names):
        ap = average_precision(probs[:, c], targets[:, c])
        if ap is not None:
            out[f"ap/{name}"] = ap
            aps.append(ap)
        p_den, r_den, f_den = (tp[c] + fp[c]).item(), (tp[c] + fn[c]).item(), (2 * tp[c] + fp[c] + fn[c]).item()
        out[f"precision/{name}"] = tp[c].item() / p_den if p_den else 0.0
        out[f"recall/{name}"] = tp[c].item() / r_den if r_den else 0.0
        out[f"f1/{name}"] = 2 * tp[c].item() / f_den if f_den else 0.0
        f1s.append(out[f"f1/{name}"])
    pooled = (2 * tp.sum() + fp.sum() + fn.sum()).item()
    rows = probs.shape[0]
    return {
        "map": sum(aps) / len(aps) if aps else 0.0,
        "macro_f1": sum(f1s) / len(f1s) if f1s else 0.0,
        "micro_f1": 2 * tp.sum().item() / pooled if pooled else 0.0,
        "exact_match": (predicted == targets).all(1).double().mean().item() if rows else 0.0,
        **out,
    }


class MultilabelMeter:
    """Keeps each batch's sigmoid probabilities and targets (on their device) for
    :func:`multilabel_metrics`; the interface of :class:`~pipeline.training.metrics.ConfusionMeter`."""

    task = "multilabel"

    def __init__(
        self,
        num_classes: int,
        *,
        threshold: float | dict[str, float] | Sequence[float] = 0.5,
        class_names: Sequence[str] | None = None,
    ):
        self.num_classes = num_classes
        self.class_names = [str(n) for n in class_names] if class_names else [str(i) for i in range(num_classes)]
        if len(self.class_names) != num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {num_classes} classes")
        self.thresholds = thresholds_for(threshold, self.class_names)
        if not all(0.0 < t < 1.0 for t in self.thresholds):
            raise ValueError(f"thresholds must lie in (0, 1), got {self.thresholds}")
        self.probs: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch: logits ``[N, C]``, multi-hot targets ``[N, C]``."""
        if logits.ndim != 2 or logits.shape[1] != self.num_classes or target.shape != logits.shape:
            raise ValueError(
                f"multilabel logits {tuple(logits.shape)} and targets {tuple(target.shape)}: expected both "
                f"[N, {self.num_classes}]"
            )
        self.probs.append(torch.sigmoid(logits.detach().float()))
        self.targets.append(target.detach().to(torch.uint8))

    def reset(self) -> None:
        self.probs, self.targets = [], []

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All probabilities and targets seen since the last reset, ``[N, C]`` each (on the host)."""
        if not self.probs:
            empty = torch.zeros(0, self.num_classes)
            return empty, empty.to(torch.uint8)
        return torch.cat(self.probs).cpu(), torch.cat(self.targets).cpu()

    def compute(self) -> dict[str, float]:
        probs, targets = self.stacked()
        return multilabel_metrics(probs, targets, self.thresholds, self.class_names)


def threshold_problems(
    threshold: Any, task: str, class_names: Sequence[str] | None, key: str = "evaluate.threshold"
) -> list[tuple[str, str]]:
    """``(key, why)`` for each problem of ``evaluate.threshold`` (or predict's ``--threshold``: ``key``): a
    per-class mapping is for multilabel, and (when the classes are known) names only classes there are,
    with a did-you-mean."""
    if not isinstance(threshold, dict):
        return []
    if task != "multilabel":
        return [(key, f"a per-class mapping is for multilabel data; {task} takes one number")]
    if class_names is None:
        return []
    from pipeline.config.schema import did_you_mean

    return [
        (f"{key}.{name}", f"{name!r} is not a class of the data{did_you_mean(name, class_names)}")
        for name in threshold
        if name not in class_names
    ]


def check_threshold(params: Any) -> list[Problem]:
    """``validate``: the threshold mapping's class names against the labels file's (when it reads)."""
    threshold, task = params.get("evaluate.threshold"), params.get("data.task")
    names = None
    if isinstance(threshold, dict) and task == "multilabel" and params.get("data.labels"):
        from pipeline.data.labels import read_multilabels

        root = params.resolve_path(params.get("data.root"))
        try:
            rows = read_multilabels(root / params.get("data.labels"), root, check_files=False)
            names = sorted({n for _, labels in rows for n in labels})
        except (PipelineError, OSError):
            names = None  # data.labels' own check reports the file
    return [Problem(key, why) for key, why in threshold_problems(threshold, task, names)]


def class_thresholds(threshold: Any, task: str, class_names: Sequence[str]) -> Any:
    """``threshold`` once its class names are checked against the data's (a :class:`PipelineError`
    naming ``evaluate.threshold.<name>`` otherwise)."""
    problems = threshold_problems(threshold, task, list(class_names))
    if problems:
        raise PipelineError("; ".join(f"{key}: {why}" for key, why in problems))
    return threshold
