"""Which split each file goes to: dealt one by one (stratified by class), or by groups (a car, a
patient, a scene: a group never crosses splits), or as k folds around a fixed test set.

Every function is deterministic given its seed. Grouped assignment places groups largest first, each
into the split where it moves the class counts closest to their targets (fractions x class totals),
so fractions are met as closely as group sizes allow and classes stay balanced as far as the groups
allow.
"""

from __future__ import annotations

import re
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

if sys.version_info >= (3, 11):  # the parser re.compile uses: Python 3.11 renamed sre_parse to re._parser
    from re import _constants as sre_constants  # type: ignore[attr-defined]  # typeshed has no stub of it
    from re import _parser as sre_parse  # type: ignore[attr-defined]
else:  # pragma: no cover - Python 3.10
    import sre_constants
    import sre_parse

from pipeline.config.errors import PipelineError
from pipeline.data.iterative import stratify_label_sets
from pipeline.data.manifest import SPLITS

Label = int | tuple[int, ...]  # a class index, or (multilabel) the classes present in an image


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


def _empty_part(result: Sequence[int], parts: int) -> int | None:
    """The first of ``parts`` that no item was assigned to, or None."""
    present = set(result)
    return next((index for index in range(parts) if index not in present), None)


def _require_every_split(result: Sequence[int], shares: Sequence[float], n: int, unit: str = "files") -> None:
    """Refuse a train/val/test assignment that leaves a split empty, naming its fraction's key."""
    empty = _empty_part(result, len(SPLITS))
    if empty is not None:
        name, share = SPLITS[empty], shares[empty]
        raise PipelineError(
            f"split.fractions.{name} = {share:g} leaves the {name} split empty: "
            f"{n} {unit} x {share:g} = {n * share:.2f}; raise the fraction or add data"
        )


def _label_sets(labels: Sequence[Label], stratify: bool) -> bool:
    """Whether ``labels`` are multilabel class sets to stratify by (iterative stratification)."""
    return stratify and bool(labels) and isinstance(labels[0], tuple)


def assign(labels: Sequence[Label], fractions: dict[str, float], seed: int, stratify: bool) -> list[int]:
    """Split index (into :data:`SPLITS`) of each item, deterministic given ``seed``; refuses
    fractions that leave a split empty (training needs val, evaluation needs test). Multilabel class
    sets (tuples) are stratified iteratively (:mod:`pipeline.data.iterative`)."""
    problem = fraction_problem(fractions)
    if problem:
        raise PipelineError(f"split.fractions: {problem}")
    shares = [float(fractions[s]) for s in SPLITS]
    if _label_sets(labels, stratify):
        result = stratify_label_sets([str(i) for i in range(len(labels))], labels, shares, seed)  # type: ignore[arg-type]
        _require_every_split(result, shares, len(labels))
        return result
    rng = np.random.default_rng(seed)
    if stratify:
        by_label = np.argsort(np.asarray(labels), kind="stable")
        groups = np.split(by_label, np.flatnonzero(np.diff(np.asarray(labels)[by_label])) + 1)
        order = np.concatenate([g[rng.permutation(len(g))] for g in groups])
    else:
        order = rng.permutation(len(labels))
    result = [0] * len(labels)
    for position, split_index in zip(order, deal(len(labels), shares)):
        result[int(position)] = split_index
    _require_every_split(result, shares, len(labels))
    return result


_REPEATS = (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT)  # not POSSESSIVE_REPEAT: it never gives back


def _children(op: object, av: Any) -> list:
    """The sub-patterns of one node of a parsed regular expression."""
    if op in _REPEATS or op is getattr(sre_constants, "POSSESSIVE_REPEAT", None):
        return [av[2]]
    if op is sre_constants.SUBPATTERN:
        return [av[3]]
    if op is sre_constants.BRANCH:
        return list(av[1])
    if op in (sre_constants.ASSERT, sre_constants.ASSERT_NOT):
        return [av[1]]
    if op is sre_constants.GROUPREF_EXISTS:
        return [p for p in av[1:] if p is not None]
    if op is getattr(sre_constants, "ATOMIC_GROUP", None):
        return [av]
    return []


def _ambiguous_branch(pattern: Any) -> bool:  # a parsed pattern (re's private SubPattern)
    """Whether ``pattern`` holds an alternation whose branches might match the same text: each branch
    must begin with its own literal character (case ignored) for the alternation to count as safe."""
    for op, av in pattern:
        if op is sre_constants.BRANCH:
            starts = [
                branch[0][1] if len(branch) and branch[0][0] is sre_constants.LITERAL else None for branch in av[1]
            ]
            folded = {chr(c).lower() for c in starts if c is not None}
            if None in starts or len(folded) < len(starts):
                return True
        if any(_ambiguous_branch(child) for child in _children(op, av)):
            return True
    return False


def _nested_repeat(pattern: Any) -> bool:
    """Whether a repeated part (``+``, ``*``, ``{m,n}`` with n > 1) can match its text in more than one
    way: its body matches strings of several lengths (a quantifier inside a quantifier, ``(a+)+``,
    ``(a|ab)*``) or holds an alternation whose branches may overlap (``(a|a)+``). Such a pattern
    backtracks through exponentially many splits of a stem it does not match."""
    for op, av in pattern:
        if op in _REPEATS and av[1] > 1:
            low, high = av[2].getwidth()
            if low != high or _ambiguous_branch(av[2]):
                return True
        if any(_nested_repeat(child) for child in _children(op, av)):
            return True
    return False


def group_by_problem(group_by: str) -> str | None:
    """What is wrong with ``split.group_by``, or None: ``folder``, or a regular expression with exactly
    one capture group that cannot backtrack catastrophically. ``validate`` and :func:`group_keys` both
    ask this, so a pattern that validates is the pattern the split stage runs.

    Python's ``re`` has no time limit, and a nested quantifier such as ``^((?:a+)+)$`` takes 2^n steps
    on a stem of n a's it fails to match (each added a doubles the time), so such patterns are refused by looking at
    their parse tree rather than by timing a match: the check is instant, needs no data, and refuses
    a pattern before the split stage runs rather than after it stalls. What remains is polynomial
    (``(.*)_.*_\\d+``); stems are file names, at most 255 bytes, which bounds it."""
    if group_by == "folder":
        return None
    try:
        captures = re.compile(group_by).groups
        tree = sre_parse.parse(group_by)
    except (re.error, RecursionError, OverflowError) as exc:
        return f"'{group_by}' is not a regular expression ({exc})"
    if captures != 1:
        return (
            f"'{group_by}' has {captures} capture groups; it needs exactly one, naming the group (e.g. '^(.+)_\\d+$')"
        )
    if _nested_repeat(tree):
        hint = (
            " or make the outer quantifier possessive, which never gives back ('(?:\\d+_)++')"
            if sys.version_info >= (3, 11)
            else ""
        )
        return (
            f"'{group_by}' repeats a part that can match the same text in several ways (a quantifier "
            f"inside a quantifier, as in '(a+)+', or overlapping alternatives, as in '(a|ab)*'); on a stem "
            f"it does not match, it backtracks through exponentially many ways and the split stage hangs. "
            f"Write each repeated part so it can match only one way (e.g. '^(.+)_\\d+$'){hint}"
        )
    return None


def group_keys(rels: Sequence[str], group_by: str) -> list[str]:
    """Each file's group: ``folder`` (its parent folder) or the one capture group of the regular
    expression ``group_by`` matched against its file stem. A pattern :func:`group_by_problem`
    refuses, a stem the pattern does not match, or a pattern that puts every file in one group, is an
    error at ``split.group_by``."""
    problem = group_by_problem(group_by)
    if problem:
        raise PipelineError(f"split.group_by: {problem}")
    if group_by == "folder":
        keys = [rel.rsplit("/", 1)[0] if "/" in rel else "." for rel in rels]
    else:
        pattern = re.compile(group_by)
        keys = []
        for rel in rels:
            stem = rel.rsplit("/", 1)[-1].rsplit(".", 1)[0]
            found = pattern.search(stem)
            if found is None:
                raise PipelineError(
                    f"split.group_by: '{group_by}' does not match the file {rel!r} (stem {stem!r}); "
                    "it must match every stem, its capture group naming the file's group"
                )
            keys.append(found.group(1))
    if len(rels) > 1 and len(set(keys)) == 1:
        raise PipelineError(
            f"split.group_by: '{group_by}' puts all {len(rels)} files in one group ({keys[0]!r}); "
            "a group must never cross splits, so nothing could be split"
        )
    return keys


def _place_groups(
    groups: Sequence[str], labels: Sequence[Label], shares: Sequence[float], seed: int, stratify: bool
) -> list[int]:
    """Part index of each item such that all items of a group share one part. Groups are placed
    largest first (ties in a seeded random order), each where it reduces the squared distance of the
    per-class counts from ``share x class total`` the most; multilabel class sets are placed by
    iterative stratification over the groups instead. A part may end up empty."""
    if _label_sets(labels, stratify):
        return stratify_label_sets(groups, labels, shares, seed)  # type: ignore[arg-type]
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
        best = min(
            range(len(shares)),
            key=lambda s: (sum(n * (2 * (counts[s][k] - targets[s][k]) + n) for k, n in size.items()), s),
        )
        for k, n in size.items():
            counts[best][k] += n
        for index in members[group]:
            result[index] = best
    return result


def assign_groups(
    groups: Sequence[str], labels: Sequence[Label], shares: Sequence[float], seed: int, stratify: bool
) -> list[int]:
    """Split index (into :data:`SPLITS`, ``shares`` in that order) of each item such that all items of
    a group share one split (see :func:`_place_groups`); refuses a split left empty."""
    result = _place_groups(groups, labels, shares, seed, stratify)
    _require_every_split(result, shares, len(set(groups)), unit="groups")
    return result


def assign_folds(
    groups: Sequence[str],
    labels: Sequence[Label],
    *,
    test_fraction: float,
    folds: int,
    fold: int,
    seed: int,
    stratify: bool,
    unit: str = "groups",
) -> list[int]:
    """k-fold cross-validation around a fixed test set: the test split is the same for every fold
    (it depends on ``seed`` alone); the rest is dealt into ``folds`` parts, part ``fold`` is the
    validation split and the others train. An empty test set or fold is refused naming the key to
    change (``split.fractions.test``, ``split.folds``); ``unit`` names what ``groups`` holds."""
    n = len(set(groups))
    outer = _place_groups(groups, labels, [1 - test_fraction, test_fraction], seed, stratify)
    empty = _empty_part(outer, 2)
    if empty == 1:
        raise PipelineError(
            f"split.fractions.test = {test_fraction:g} leaves the test split empty: {n} {unit} x "
            f"{test_fraction:g} = {n * test_fraction:.2f}; raise the fraction or add data"
        )
    if empty == 0:
        raise PipelineError(
            f"split.fractions.test = {test_fraction:g} leaves nothing outside the test set for "
            f"the {folds} folds (split.folds): {n} {unit} in all; lower split.fractions.test "
            f"or add data"
        )
    rest = [i for i, where in enumerate(outer) if where == 0]
    parts = _place_groups([groups[i] for i in rest], [labels[i] for i in rest], [1 / folds] * folds, seed + 1, stratify)
    empty = _empty_part(parts, folds)
    if empty is not None:
        outside = len({groups[i] for i in rest})
        raise PipelineError(
            f"split.folds = {folds} leaves fold {empty} empty: the {outside} {unit} outside the test "
            f"set cannot fill {folds} folds; lower split.folds (at most {outside}), lower "
            f"split.fractions.test or add data"
        )
    result = [SPLITS.index("test")] * len(groups)
    for index, part in zip(rest, parts):
        result[index] = SPLITS.index("val") if part == fold else SPLITS.index("train")
    return result
