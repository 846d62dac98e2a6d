"""Iterative stratification (Sechidis, Tsoumakas and Vlahavas 2011) for multi-label data: a split
that keeps every class's share in each part as close to the part's fraction as the label
combinations allow, which dealing by one class cannot do when an image holds several.

The units placed are images, or groups of images (``split.group_by``: a group never crosses parts,
its label counts are its images' summed). Deterministic given the seed.

The algorithm: each part wants ``share x total`` positives of every class, ``share x images`` of
every label combination, and ``share x images`` in all. Repeatedly take the class with the fewest
positives still unplaced (the rarest is the hardest to spread), and place each unplaced unit holding
it into the part that wants the unit's combination most (ties: the part that wants that class most,
then the most images, then a seeded draw; for groups the class comes before the combination), lowering what that part wants by the unit's counts. Units
with no label at all go last, the same way. Wanting the combination first is the second-order
refinement (Szymański and Kajdanowicz 2017): Sechidis' order alone keeps each class's share but can
leave a common combination several points off its share, worse than a random split.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _best(keys: list[np.ndarray], rng: np.random.Generator) -> int:
    """The part with the highest first key, ties broken by the next keys in turn, then a seeded draw."""
    top = np.arange(len(keys[0]))
    for key in keys:
        values = key[top]
        top = top[values == values.max()]
        if len(top) == 1:
            return int(top[0])
    return int(rng.choice(top))


def stratify_units(counts: np.ndarray, sizes: Sequence[int], shares: Sequence[float], seed: int) -> list[int]:
    """Part index of each unit: ``counts`` is ``[units, classes]`` (positives of each class in the
    unit), ``sizes`` the images in each unit, ``shares`` the parts' fractions (summing to 1)."""
    counts = np.asarray(counts, dtype=np.int64)
    n_units = counts.shape[0]
    rng = np.random.default_rng(seed)
    share = np.asarray(shares, dtype=np.float64)
    unit_sizes = np.asarray(sizes, dtype=np.float64)
    wants = share[:, None] * counts.sum(0)[None, :].astype(np.float64)  # [parts, classes]
    wants_size = share * float(unit_sizes.sum())
    has = counts > 0
    # Each label combination is wanted in proportion too (its images counted): dealing by it first keeps
    # combinations, and so the classes they hold, in every part as far as the numbers allow.
    keys = [tuple(row) for row in has.tolist()]
    combination = {key: index for index, key in enumerate(sorted(set(keys)))}
    combo_of = np.array([combination[key] for key in keys], dtype=np.int64)
    combo_sizes = np.bincount(combo_of, weights=unit_sizes, minlength=len(combination))
    wants_combo = share[:, None] * combo_sizes[None, :]
    # Images alone: combinations repeat, want them first. Groups: a group's combination (the union of its
    # images' labels) rarely repeats, so the class comes first (measured: 0.5-1 point off per class
    # against 2-3.5 points with the combination first, on 400 groups of three).
    single = bool((unit_sizes == 1).all())
    order = rng.permutation(n_units)
    placed = np.full(n_units, -1, dtype=np.int64)

    def place(unit: int, part: int) -> None:
        placed[unit] = part
        wants[part] -= counts[unit]
        wants_size[part] -= unit_sizes[unit]
        wants_combo[part, combo_of[unit]] -= unit_sizes[unit]

    while True:
        open_units = placed < 0
        remaining = has[open_units].sum(0)
        if not remaining.any():
            break
        label = int(np.argmin(np.where(remaining > 0, remaining, np.iinfo(np.int64).max)))
        for unit in order[open_units[order] & has[order, label]]:
            first, second = wants_combo[:, combo_of[unit]], wants[:, label]
            place(int(unit), _best([first, second, wants_size] if single else [second, first, wants_size], rng))
    for unit in order[placed[order] < 0]:
        place(int(unit), _best([wants_combo[:, combo_of[unit]], wants_size], rng))
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
