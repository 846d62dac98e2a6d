"""Semantic checks: what the schema cannot say (a loss name exists, its arguments bind, a path exists).

Components register checks with :func:`semantic_check` when imported (:mod:`pipeline.components`
imports them all); :func:`run_checks` runs every registered check on the defaulted params. A check
never downloads, reads a dataset or opens a network connection.
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
    sections: tuple[str, ...]
    fn: Check


_CHECKS: list[_Registered] = []


def semantic_check(*sections: str) -> Callable[[Check], Check]:
    """Register ``fn(params) -> problems``; it is skipped when the schema already rejected one of
    ``sections`` (a check may then trust the shape of what it reads)."""

    def register(fn: Check) -> Check:
        if not any(r.fn is fn for r in _CHECKS):
            _CHECKS.append(_Registered(tuple(sections), fn))
        return fn

    return register


def run_checks(params: "Params", rejected_sections: set[str]) -> list[Problem]:
    if not _CHECKS:
        raise RuntimeError("no semantic checks are registered; load params through "
                           "pipeline.components.load_params")
    problems: list[Problem] = []
    for registered in _CHECKS:
        if rejected_sections & set(registered.sections):
            continue
        problems.extend(registered.fn(params))
    return problems
