"""Semantic checks: what the schema cannot say (a loss name exists, its arguments bind, a path exists).

Stage modules register checks with :func:`semantic_check`; ``validate`` imports the modules listed
in :data:`CHECK_MODULES` (those that exist) and runs every check on the defaulted params. A check
only looks: it never builds a model, reads a dataset or opens a network connection.
"""
from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.errors import Problem

if TYPE_CHECKING:
    from pipeline.config import Params

# Modules that may register checks or registries. Missing ones are skipped, so a section's checks
# appear as soon as its module exists.
CHECK_MODULES = (
    "stages.data",
    "stages.split",
    "stages.augment",
    "stages.model",
    "stages.loss",
    "stages.optim",
    "stages.scheduler",
    "stages.precision",
    "stages.train",
    "stages.evaluate",
    "pipeline.tracking",
)

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


def import_check_modules() -> None:
    """Import every existing module of :data:`CHECK_MODULES` (registering checks and registries)."""
    for name in CHECK_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)


def run_checks(params: "Params", rejected_sections: set[str]) -> list[Problem]:
    import_check_modules()
    problems: list[Problem] = []
    for registered in _CHECKS:
        if rejected_sections & set(registered.sections):
            continue
        problems.extend(registered.fn(params))
    return problems
