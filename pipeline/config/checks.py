"""Semantic checks: what the schema cannot say (a loss name exists, its arguments bind, a path exists).

Components register checks with :func:`semantic_check` when imported. Which module holds the checks
of which section is declared once (:func:`declare_check_modules`, done by :mod:`pipeline.components`),
so :func:`run_checks` imports only the modules of the sections it checks: a stage runs the checks of
the keys it reads (``keys=``), ``validate`` all of them. A check never downloads, decodes a dataset or
opens a network connection (it may look at files: data.root, weights, a labels CSV).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.config.errors import Problem

if TYPE_CHECKING:
    from pipeline.config.params import Params

Check = Callable[["Params"], Iterable[Problem]]


@dataclass(frozen=True)
class RegisteredCheck:
    inputs: tuple[tuple[str, ...], ...]  # inputs[0] is the subject
    fn: Check


_CHECKS: list[RegisteredCheck] = []
_MODULES: dict[str, tuple[str, ...]] = {}  # section -> the modules whose checks validate it


def key_parts(key: str) -> tuple[str, ...]:
    """``"augment.train[0].Affine"`` -> ``("augment", "train", "0", "Affine")``."""
    return tuple(part for part in key.replace("[", ".").replace("]", "").split(".") if part)


def semantic_check(*inputs: str) -> Callable[[Check], Check]:
    """Register ``fn(params) -> problems`` reading the dotted keys ``inputs`` (a section, or single
    keys). The first input is what the check validates (its subject): a stage runs it when it reads a
    key inside or around the subject; the others are context it reads. It is skipped only when the
    schema rejected one of its inputs (or something inside one), so it may trust their shape; a problem
    elsewhere in the file never hides it."""
    if not inputs:
        raise TypeError("semantic_check needs the keys the check reads, its subject first")

    def register(fn: Check) -> Check:
        if not any(r.fn is fn for r in _CHECKS):
            _CHECKS.append(RegisteredCheck(tuple(key_parts(k) for k in inputs), fn))
        return fn

    return register


def declare_check_modules(modules: dict[str, Sequence[str]]) -> None:
    """Say which modules register the checks of each section (``{"loss": ["pipeline.training.loss"]}``);
    :func:`run_checks` imports them when it checks that section. Every check's subject must lie in the
    section its module is declared for."""
    _MODULES.update({section: tuple(names) for section, names in modules.items()})


def _overlaps(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """One key is the other or lies inside it."""
    return a[: len(b)] == b or b[: len(a)] == a


def registered_checks(keys: Iterable[str] | None = None) -> list[RegisteredCheck]:
    """The checks of ``keys`` (every check when None), their modules imported first: those whose
    subject is one of the keys, lies inside one or holds one."""
    wanted = None if keys is None else [key_parts(k) for k in keys]
    for section, names in _MODULES.items():
        if wanted is None or any(w[:1] == (section,) for w in wanted):
            for name in names:
                importlib.import_module(name)
    if wanted is None:
        return list(_CHECKS)
    return [r for r in _CHECKS if any(_overlaps(r.inputs[0], w) for w in wanted)]


def run_checks(params: "Params", rejected_keys: Iterable[str], keys: Iterable[str] | None = None) -> list[Problem]:
    """The checks of ``keys`` (all when None) whose inputs the schema accepted."""
    if not _CHECKS and not _MODULES:
        raise RuntimeError("no semantic checks are registered; load params through "
                           "pipeline.components.load_params")
    rejected = [key_parts(k) for k in rejected_keys]
    problems: list[Problem] = []
    for registered in registered_checks(keys):
        if any(_overlaps(r, i) for r in rejected for i in registered.inputs):
            continue
        problems.extend(registered.fn(params))
    return problems
