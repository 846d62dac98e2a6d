"""``train.sampler``: which training samples an epoch draws. ``uniform`` (the default) is every sample once,
shuffled; ``balanced`` and ``{weights: {class: w}}`` draw the epoch's samples with replacement, each with
probability proportional to its class's weight (``balanced``: 1 / the class's count in the training split,
so every class is drawn about equally), as torch's ``WeightedRandomSampler`` does.

Why a sampler of our own rather than ``WeightedRandomSampler``: the draw must be a function of
(train.seed, epoch) alone, so a resumed run draws what the uninterrupted run drew, and under DDP the ranks
must share one draw and take disjoint shares of it. :class:`WeightedDraw` draws the whole epoch from the
epoch's seed (the same on every rank), then rank ``r`` takes every ``world_size``-th index from ``r``.

Segmentation refuses it: an image holds several classes, so a per-image class weight has no one class
to come from; a rare class is better served by the loss (``loss.params.weight`` / ``pos_weight: auto``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Sampler

from pipeline.config.errors import PipelineError, Problem
from pipeline.config.schema import did_you_mean
from pipeline.seeding import epoch_seed
from pipeline.training import distributed as dist

KEY = "train.sampler"


def class_weights(spec: str | dict[str, Any], class_names: Sequence[str], counts: dict[str, int]) -> list[float] | None:
    """The weight of each class as ``spec`` asks (None for ``uniform``); ``counts`` are the training split's
    samples per class. Names in ``{weights: ...}`` must be classes; a class left out weighs 1."""
    if spec == "uniform":
        return None
    if spec == "balanced":
        return [1.0 / counts[name] if counts.get(name) else 0.0 for name in class_names]
    if not isinstance(spec, dict):
        raise PipelineError(f"{KEY}: {spec!r} is not uniform, balanced or {{weights: {{class: weight}}}}")
    given = dict(spec["weights"])
    unknown = [name for name in given if name not in class_names]
    if unknown:
        raise PipelineError(
            f"{KEY}.weights: no class {unknown[0]!r}{did_you_mean(unknown[0], class_names)}; "
            f"the classes are {', '.join(class_names)}"
        )
    return [float(given.get(name, 1.0)) for name in class_names]


def sample_weights(labels: Sequence[int], weights: Sequence[float]) -> list[float]:
    """One weight per sample, its class's; refused when no sample could be drawn."""
    per_sample = [weights[label] for label in labels]
    if not any(w > 0 for w in per_sample):
        raise PipelineError(f"{KEY}: every training sample weighs 0; give some class a positive weight")
    return per_sample


class WeightedDraw(Sampler[int]):
    """This rank's share of an epoch drawn with replacement in proportion to ``weights`` (one per sample).

    :meth:`set_epoch` redraws from ``epoch_seed(seed, epoch)``, the same on every rank: rank ``r`` takes the
    draw's indices ``r, r + world_size, ...``, so the shares never overlap and together are the draw (less
    the ``len % world_size`` left over, as DDP's own sampler drops them)."""

    def __init__(self, weights: Sequence[float], *, seed: int, ctx: dist.Context = dist.SINGLE):
        self.weights = torch.as_tensor(list(weights), dtype=torch.float64)
        self.seed, self.ctx = seed, ctx
        self.share = len(self.weights) // ctx.world_size
        self.indices: list[int] = []
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        draw = torch.multinomial(self.weights, len(self.weights), replacement=True, generator=generator)
        self.indices = draw[self.ctx.rank : self.share * self.ctx.world_size : self.ctx.world_size].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return self.share


def train_sampler(
    spec: str | dict[str, Any],
    manifest: Any,
    dataset_length: int,
    ctx: dist.Context,
    *,
    seed: int,
) -> WeightedDraw | None:
    """The weighted draw ``train.sampler`` asks for over the training split (sample ``i`` is the manifest's
    ``splits["train"][i]``, as the decoded and offline caches order them); None for ``uniform``."""
    if spec == "uniform":
        return None
    if manifest.task != "classification":
        raise PipelineError(sampler_problem(manifest.task))
    train = manifest.splits["train"]
    if dataset_length != len(train):
        raise PipelineError(f"{KEY}: the training set has {dataset_length} samples but the manifest {len(train)}")
    weights = class_weights(spec, manifest.class_names, manifest.counts["train"])
    assert weights is not None
    return WeightedDraw(sample_weights([int(e["label"]) for e in train], weights), seed=seed, ctx=ctx)


def sampler_problem(task: str) -> str:
    return (
        f"{task} images hold several classes, so there is no one class to weigh an image by: use uniform, "
        "and weigh the classes in the loss (loss.params.weight or pos_weight: auto)"
    )


def declared_classes(params: Any) -> list[str] | None:
    """The class names the data declares, found cheaply (the class folders, or the labels CSV's names);
    None when they cannot be read here (the data checks report why)."""
    root = Path(params.resolve_path(params.get("data.root")))
    labels = params.get("data.labels")
    try:
        if labels:
            from pipeline.data.labels import read_labels

            return sorted({label for _, label in read_labels(root / labels, root, check_files=False)})
        return sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    except (OSError, PipelineError):
        return None


def check_sampler(params: Any) -> list[Problem]:
    """``train.sampler`` fits the task, and the classes ``{weights: ...}`` names exist in the data."""
    spec = params.get(KEY)
    if spec == "uniform":
        return []
    task = params.get("data.task")
    if task != "classification":
        return [Problem(KEY, sampler_problem(task))]
    if isinstance(spec, dict):
        names = declared_classes(params)
        if names:
            try:
                weights = class_weights(spec, names, {})
            except PipelineError as exc:
                key, _, message = str(exc).partition(": ")
                return [Problem(key, message)]
            if weights and not any(w > 0 for w in weights):
                return [Problem(f"{KEY}.weights", "every class weighs 0; give some class a positive weight")]
    return []
