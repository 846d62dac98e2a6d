"""Which split each file goes to: dealt one by one (stratified by class), or by groups (a car, a
patient, a scene: a group never crosses splits), or as k folds around a fixed test set.

Every function is deterministic given its seed. Grouped assignment places groups largest first, each
into the split where it moves the class counts closest to their targets (fractions x class totals),
so fractions are met as closely as group sizes allow and classes stay balanced as far as the groups
allow.
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from pipeline.config.errors import PipelineError
from pipeline.data.manifest import SPLITS


def fraction_problem(fractions: dict[str, float]) -> str | None:
    total = sum(fractions[s] for s in SPLITS)
    if abs(total - 1.0) > 1e-6:
        terms = " + ".join(f"{s} {fractions[s]:g}" for s in SPLITS)
        return f"fractions must sum to 1, but {terms} = {total:.6g}"
    return None


def deal(n: int, fractions: Sequence[float]) -> list[int]:
    """The split index of each of ``n`` positions, dealt so that after every position each split's
    count is within one of its share (stratification comes from dealing a class-ordered sequence)."""
    counts = [0] * len(fractions)
    out = []
    for i in range(1, n + 1):
        best = max(range(len(fractions)), key=lambda s: (fractions[s] * i - counts[s], -s))
        counts[best] += 1
        out.append(best)
    return out


def _require_every_split(result: Sequence[int], shares: Sequence[float], names: Sequence[str], n: int,
                         unit: str = "files") -> None:
    for index, name in enumerate(names):
        if index not in result:
            raise PipelineError(f"split.fractions.{name} = {shares[index]:g} leaves the {name} split empty: "
                                f"{n} {unit} x {shares[index]:g} = {n * shares[index]:.2f}; "
                                f"raise the fraction or add data")


def assign(labels: Sequence[int], fractions: dict[str, float], seed: int, stratify: bool) -> list[int]:
    """Split index (into :data:`SPLITS`) of each item, deterministic given ``seed``; refuses
    fractions that leave a split empty (training needs val, evaluation needs test)."""
    problem = fraction_problem(fractions)
    if problem:
        raise PipelineError(f"split.fractions: {problem}")
    rng = np.random.default_rng(seed)
    if stratify:
        by_label = np.argsort(np.asarray(labels), kind="stable")
        groups = np.split(by_label, np.flatnonzero(np.diff(np.asarray(labels)[by_label])) + 1)
        order = np.concatenate([g[rng.permutation(len(g))] for g in groups])
    else:
        order = rng.permutation(len(labels))
    shares = [float(fractions[s]) for s in SPLITS]
    result = [0] * len(labels)
    for position, split_index in zip(order, deal(len(labels), shares)):
        result[int(position)] = split_index
    _require_every_split(result, shares, SPLITS, len(labels))
    return result


def group_keys(rels: Sequence[str], group_by: str) -> list[str]:
    """Each file's group: ``folder`` (its parent folder) or the one capture group of the regular
    expression ``group_by`` matched against its file stem. A stem the pattern does not match, or a
    pattern that puts every file in one group, is an error at ``split.group_by``."""
    if group_by == "folder":
        keys = [rel.rsplit("/", 1)[0] if "/" in rel else "." for rel in rels]
    else:
        pattern = re.compile(group_by)
        keys = []
        for rel in rels:
            stem = rel.rsplit("/", 1)[-1].rsplit(".", 1)[0]
            found = pattern.search(stem)
            if found is None:
                raise PipelineError(f"split.group_by: '{group_by}' does not match the file {rel!r} (stem {stem!r}); "
                                    "it must match every stem, its capture group naming the file's group")
            keys.append(found.group(1))
    if len(rels) > 1 and len(set(keys)) == 1:
        raise PipelineError(f"split.group_by: '{group_by}' puts all {len(rels)} files in one group ({keys[0]!r}); "
                            "a group must never cross splits, so nothing could be split")
    return keys


def assign_groups(groups: Sequence[str], labels: Sequence[int], shares: Sequence[float], seed: int,
                  stratify: bool, names: Sequence[str] = SPLITS) -> list[int]:
    """Split index of each item such that all items of a group share one split. Groups are placed
    largest first (ties in a seeded random order), each where it reduces the squared distance of the
    per-class counts from ``share x class total`` the most."""
    members: dict[str, list[int]] = defaultdict(list)
    for index, group in enumerate(groups):
        members[group].append(index)
    keys = sorted(members)
    order = [keys[i] for i in np.random.default_rng(seed).permutation(len(keys))]
    order.sort(key=lambda g: -len(members[g]))  # stable: the seeded order among equal sizes
    classes = sorted(set(labels)) if stratify else [0]
    column = {c: k for k, c in enumerate(classes)}
    label_of = (lambda i: column[labels[i]]) if stratify else (lambda i: 0)
    totals = Counter(label_of(i) for i in range(len(groups)))
    targets = [[share * totals[k] for k in range(len(classes))] for share in shares]
    counts = [[0] * len(classes) for _ in shares]
    result = [0] * len(groups)
    for group in order:
        size = Counter(label_of(i) for i in members[group])
        # adding `size` to split s changes its squared error by sum_k size_k * (2 (count - target) + size_k)
        best = min(range(len(shares)), key=lambda s: (sum(n * (2 * (counts[s][k] - targets[s][k]) + n)
                                                          for k, n in size.items()), s))
        for k, n in size.items():
            counts[best][k] += n
        for index in members[group]:
            result[index] = best
    _require_every_split(result, shares, names, len(keys), unit="groups")
    return result


def assign_folds(groups: Sequence[str], labels: Sequence[int], *, test_fraction: float, folds: int, fold: int,
                 seed: int, stratify: bool) -> list[int]:
    """k-fold cross-validation around a fixed test set: the test split is the same for every fold
    (it depends on ``seed`` alone); the rest is dealt into ``folds`` parts, part ``fold`` is the
    validation split and the others train."""
    outer = assign_groups(groups, labels, [1 - test_fraction, test_fraction], seed, stratify, ("train", "test"))
    rest = [i for i, where in enumerate(outer) if where == 0]
    parts = assign_groups([groups[i] for i in rest], [labels[i] for i in rest], [1 / folds] * folds, seed + 1,
                          stratify, [f"fold {k}" for k in range(folds)])
    result = [SPLITS.index("test")] * len(groups)
    for index, part in zip(rest, parts):
        result[index] = SPLITS.index("val") if part == fold else SPLITS.index("train")
    return result
