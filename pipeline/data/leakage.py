"""Leaks between splits: byte-identical images in two splits (the split stage hashes every file
anyway) make the test score measure memory, not generalisation. ``split.duplicates`` decides:
``warn`` (report the pairs), ``error`` (refuse the split) or ``drop`` (keep the copy in the earliest
split, train before val before test, and drop the others)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from pipeline.data.manifest import SPLITS

DUPLICATE_MODES = ("warn", "error", "drop")


class _Hashed(Protocol):
    """A scanned file: read-only here, so frozen dataclasses match."""

    @property
    def rel(self) -> str: ...

    @property
    def digest(self) -> str: ...


def cross_split_duplicates(images: Sequence[_Hashed], where: Sequence[int]) -> list[tuple[int, int]]:
    """Pairs ``(kept, copy)`` of byte-identical images in different splits: ``kept`` is the copy in the
    earliest split, paired with each copy in a later one."""
    by_digest: dict[str, list[int]] = {}
    for index, scanned in enumerate(images):
        by_digest.setdefault(scanned.digest, []).append(index)
    pairs = []
    for indices in by_digest.values():
        first = min(indices, key=lambda i: (where[i], images[i].rel))
        pairs += [(first, i) for i in sorted(indices) if where[i] != where[first]]
    return pairs


def pair_names(copies: Sequence[tuple[int, int]], images: Sequence[_Hashed], where: Sequence[int]) -> list[str]:
    """``"train/a.png == test/b.png"`` for each pair."""
    return [f"{SPLITS[where[a]]}/{images[a].rel} == {SPLITS[where[b]]}/{images[b].rel}" for a, b in copies]
