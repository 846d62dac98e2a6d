"""``auto`` loss arguments: ``weight: auto`` and ``pos_weight: auto`` computed from the training split's class
counts in the manifest (images per class for classification, pixels per class for segmentation), so the
rarer classes weigh more without the user counting them.

- ``weight: auto`` (per-class weights, e.g. ``cross_entropy``): ``total / (classes x count)``, scikit-learn's
  "balanced" weights: a class of average size weighs 1, one 20 times rarer than another 20 times more.
- ``pos_weight: auto`` (binary, one logit channel: ``bce``, ``dice_bce``): negatives / positives, as PyTorch's
  ``BCEWithLogitsLoss`` documents it.

:func:`resolve_auto` replaces them in the ``loss`` section before the loss is built (train and evaluate
from the manifest, ``validate`` from stand-in counts of one per class).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from pipeline.config.errors import ComponentError, Problem

AUTO = "auto"
AUTO_ARGS = ("weight", "pos_weight")


def train_counts(manifest: Any) -> list[int]:
    """The training split's count of each class, in class order: pixels for segmentation (the split stage
    records them), images for classification."""
    pixels = (manifest.summary or {}).get("pixels")
    by_name = pixels["train"] if pixels else manifest.counts["train"]
    return [int(by_name.get(name, 0)) for name in manifest.class_names]


def _value(arg: str, counts: Sequence[int] | None, num_outputs: int, key: str) -> float | list[float]:
    if arg == "pos_weight" and num_outputs != 1:
        raise ComponentError.at(
            key, f"pos_weight: auto is for binary tasks (one logit channel); this one has {num_outputs}"
        )
    if arg == "weight" and num_outputs == 1:
        raise ComponentError.at(key, "weight: auto is for multi-class tasks; a binary task takes pos_weight: auto")
    if counts is None:
        raise ComponentError.at(key, "auto needs the training split's class counts (the train stage gives them)")
    absent = [c for c, n in enumerate(counts) if n <= 0]
    if absent:
        raise ComponentError.at(key, f"auto: class {absent[0]} has no samples in the training split to weigh it by")
    if arg == "pos_weight":
        return round(counts[0] / counts[1], 6)
    total = sum(counts)
    return [round(total / (len(counts) * n), 6) for n in counts]


def _resolve(
    params: dict[str, Any], counts: Sequence[int] | None, num_outputs: int, key: str, out: dict[str, Any]
) -> None:
    for arg, value in list(params.items()):
        if value != AUTO:
            continue
        if arg not in AUTO_ARGS:
            raise ComponentError.at(f"{key}.{arg}", f"auto is only for {' and '.join(AUTO_ARGS)} (class weights)")
        params[arg] = out[f"{key}.{arg}"] = _value(arg, counts, num_outputs, f"{key}.{arg}")


def resolve_auto(
    cfg: dict[str, Any], counts: Sequence[int] | None, num_outputs: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``cfg`` (the loss section) with every ``auto`` argument computed from ``counts`` (the training split's
    per-class counts), and what was computed, by dotted key (``loss.params.weight``). ``cfg`` is left as is."""
    cfg = copy.deepcopy(cfg)
    resolved: dict[str, Any] = {}
    problems: list[Problem] = []
    places = [("loss.params", cfg.get("params"))] + [
        (f"loss.terms[{i}].params", term.get("params")) for i, term in enumerate(cfg.get("terms") or [])
    ]
    for key, params in places:
        if params:
            try:
                _resolve(params, counts, num_outputs, key, resolved)
            except ComponentError as exc:
                problems += exc.problems
    if problems:
        raise ComponentError(problems)
    return cfg, resolved
