"""Iterative stratification (Sechidis, Tsoumakas and Vlahavas 2011) for multi-label data: a split
that keeps every class's share in each part as close to the part's fraction as the label
combinations allow, which dealing by one class cannot do when an image holds several.

The units placed are images, or groups of images (``split.group_by``: a group never crosses parts,
its label counts are its images' summed). Deterministic given the seed.

The algorithm: each part wants ``share x total`` positives of every class and ``share x units``
images. Repeatedly take the class with the fewest positives still unplaced (the rarest is the hardest
to spread), and place each unplaced unit holding it into the part that wants that class most (ties:
the part that wants the most images, then a seeded draw), lowering what that part wants by the unit's
counts. Units with no label at all go last, each to the part that wants the most images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _best(wants: np.ndarray, wants_size: np.ndarray, rng: np.random.Generator) -> int:
    """The part with the highest ``wants``, ties by ``wants_size``, then a seeded draw."""
    top = np.flatnonzero(wants == wants.max())
    if len(top) > 1:
        sizes = wants_size[top]
        top = top[sizes == sizes.max()]
    return int(top[0] if len(top) == 1 else rng.choice(top))


def stratify_units(counts: np.ndarray, sizes: Sequence[int], shares: Sequence[float], seed: int) -> list[int]:
    """Part index of each unit: ``counts`` is ``[units, classes]`` (positives of each class in the
    unit), ``sizes`` the images in each unit, ``shares`` the parts' fractions (summing to 1)."""
    counts = np.asarray(counts, dtype=np.int64)
    n_units = counts.shape[0]
    rng = np.random.default_rng(seed)
    share = np.asarray(shares, dtype=np.float64)
    wants = share[:, None] * counts.sum(0)[None, :].astype(np.float64)  # [parts, classes]
    wants_size = share * float(np.sum(sizes))
    order = rng.permutation(n_units)
    placed = np.full(n_units, -1, dtype=np.int64)
    has = counts > 0

    def place(unit: int, part: int) -> None:
        placed[unit] = part
        wants[part] -= counts[unit]
        wants_size[part] -= sizes[unit]

    while True:
        open_units = placed < 0
        remaining = has[open_units].sum(0)
        if not remaining.any():
            break
        label = int(np.argmin(np.where(remaining > 0, remaining, np.iinfo(np.int64).max)))
        for unit in order[open_units[order] & has[order, label]]:
            place(int(unit), _best(wants[:, label], wants_size, rng))
    for unit in order[placed[order] < 0]:
        place(int(unit), _best(wants_size, wants_size, rng))
    return placed.tolist()


def stratify_label_sets(
    groups: Sequence[str], label_sets: Sequence[Sequence[int]], shares: Sequence[float], seed: int
) -> list[int]:
    """Part index of each item (``label_sets[i]``: the classes present in item ``i``) such that the
    items of one group share a part; the groups are the units of :func:`stratify_units`."""
    keys = sorted(set(groups))
    unit_of = {key: u for u, key in enumerate(keys)}
    num_classes = 1 + max((c for labels in label_sets for c in labels), default=-1)
    counts = np.zeros((len(keys), max(num_classes, 1)), dtype=np.int64)
    sizes = [0] * len(keys)
    for group, labels in zip(groups, label_sets):
        unit = unit_of[group]
        sizes[unit] += 1
        for c in set(labels):
            counts[unit, c] += 1
    parts = stratify_units(counts, sizes, shares, seed)
    return [parts[unit_of[group]] for group in groups]
