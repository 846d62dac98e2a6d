"""``validate``'s augmentation check: every declared augmenter is built by the same builder the
stages use, then tried once on a small synthetic image (and mask)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from pipeline.augment.build import Builder
from pipeline.config.checks import semantic_check
from pipeline.config.errors import Problem
from pipeline.config.params import Params
from pipeline.data.dataset import image_hw


@contextlib.contextmanager
def _rng_untouched() -> Iterator[None]:
    """Probing draws random numbers; restore numpy's and imgaug's global RNGs afterwards."""
    import imgaug.random as iarandom

    np_state, ia_state = np.random.get_state(), iarandom.get_global_rng().state
    try:
        yield
    finally:
        np.random.set_state(np_state)
        iarandom.get_global_rng().state = ia_state


def augment_problems(spec: Any, *, task: str, key: str, image_size: int | list[int] | None = None) -> list[Problem]:
    """Every problem in one pipeline; with ``image_size``, each augmenter is also tried on a small
    synthetic image of that size (capped at 128 px a side)."""
    if isinstance(spec, list) and not spec:
        return []  # nothing to check, and no need to import imgaug
    builder = Builder(task, probe=image_hw(image_size) if image_size is not None else None)
    with _rng_untouched():
        builder.pipeline(spec, key)
    return builder.problems


@semantic_check("augment", "data.task", "data.image_size")
def check_augment(params: Params) -> list[Problem]:
    """Augmenter names exist, their arguments bind and their values are accepted, and for
    segmentation every augmenter can carry the mask along."""
    task, size = params.get("data.task"), params.get("data.image_size")
    problems = []
    for section in ("train", "eval"):
        problems += augment_problems(params.get(f"augment.{section}"), task=task, key=f"augment.{section}",
                                     image_size=size)
    return problems
