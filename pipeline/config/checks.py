"""Semantic checks: what the schema cannot say (a loss name exists, its arguments bind, a path exists).

Components register checks with :func:`semantic_check` when imported (:mod:`pipeline.components`
imports them all); :func:`run_checks` runs every registered check on the defaulted params. A check
never downloads, decodes a dataset or opens a network connection (it may look at files: data.root,
weights, a labels CSV).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.config.errors import Problem

if TYPE_CHECKING:
    from pipeline.config.params import Params

Check = Callable[["Params"], Iterable[Problem]]


@dataclass(frozen=True)
class _Registered:
    inputs: tuple[tuple[str, ...], ...]
    fn: Check


_CHECKS: list[_Registered] = []


def key_parts(key: str) -> tuple[str, ...]:
    """``"augment.train[0].Affine"`` -> ``("augment", "train", "0", "Affine")``."""
    return tuple(part for part in key.replace("[", ".").replace("]", "").split(".") if part)


def semantic_check(*inputs: str) -> Callable[[Check], Check]:
    """Register ``fn(params) -> problems`` reading the dotted keys ``inputs`` (a section, or single
    keys). It is skipped only when the schema rejected one of its inputs (or something inside one),
    so it may trust their shape; a problem elsewhere in the file never hides it."""

    def register(fn: Check) -> Check:
        if not any(r.fn is fn for r in _CHECKS):
            _CHECKS.append(_Registered(tuple(key_parts(k) for k in inputs), fn))
        return fn

    return register


def _overlaps(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """One key is the other or lies inside it."""
    return a[: len(b)] == b or b[: len(a)] == a


def run_checks(params: "Params", rejected_keys: Iterable[str]) -> list[Problem]:
    """Every registered check whose inputs the schema accepted."""
    if not _CHECKS:
        raise RuntimeError("no semantic checks are registered; load params through "
                           "pipeline.components.load_params")
    rejected = [key_parts(k) for k in rejected_keys]
    problems: list[Problem] = []
    for registered in _CHECKS:
        if any(_overlaps(r, i) for r in rejected for i in registered.inputs):
            continue
        problems.extend(registered.fn(params))
    return problems
