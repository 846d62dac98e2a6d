"""``validate``'s augmentation check: every declared augmenter is built by the same builder the
stages use, then tried once on a small synthetic image (and mask)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from pipeline.augment.augmenters import Builder
from pipeline.augment.device_support import fallback_problems
from pipeline.config.check_spec import key_parts
from pipeline.config.errors import ComponentError, Problem
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


def check_augment(params: Params) -> list[Problem]:
    """Augmenter names exist, their arguments bind and their values are accepted, and for
    segmentation every augmenter can carry the mask along. With data.image_size rejected, nothing is
    tried on an image (a size the file does not give could only invent problems)."""
    task, size = params.get("data.task"), params.get("data.image_size")
    problems = []
    for section in ("train", "eval"):
        problems += augment_problems(
            params.get(f"augment.{section}"), task=task, key=f"augment.{section}", image_size=size
        )
    return problems


def _device_fallbacks(params: Params) -> list[Problem]:
    """The augmenters that keep augment.train off the device; [] when it has a device version, is
    empty, or is invalid (``check_augment`` reports that)."""
    spec = params.get("augment.train")
    if not spec:
        return []
    try:
        return fallback_problems(spec, task=params.get("data.task"), random_order=params.get("augment.random_order"))
    except ComponentError:
        return []


def check_augment_device(params: Params) -> list[Problem]:
    """``augment.device: device`` needs a chain with a device version, and online augmentation."""
    if params.get("augment.device") != "device":
        return []
    if params.get("augment.offline")["enabled"]:
        return [
            Problem(
                "augment.device",
                "'device' does not apply with augment.offline.enabled (training reads "
                "augmented copies from the cache); use auto or cpu",
            )
        ]
    return [
        Problem("augment.device", f"'device' but {p.key} cannot run there: {p.message}; use auto or cpu")
        for p in _device_fallbacks(params)
    ]


def augment_notes(params: Params, filename: str) -> list[str]:
    """``validate``'s notes (not errors): with ``augment.device: auto``, each augmenter that keeps the
    training augmentation on the CPU path, located as problems are."""
    if params.get("augment.device") != "auto" or params.get("augment.offline")["enabled"]:
        return []
    notes = []
    for p in _device_fallbacks(params):
        line, column = params.marks.locate(tuple(int(k) if k.isdigit() else k for k in key_parts(p.key)))
        notes.append(
            Problem(
                p.key,
                f"note: {p.message}, so augment.train runs on the CPU (DataLoader workers) even when training on a GPU",
                line,
                column,
            ).format(filename)
        )
    return notes
