"""Semantic checks: what the schema cannot say (a loss name exists, its arguments bind, a path exists).

Every check is an entry of one table, :data:`pipeline.config.components.CHECKS`: a dotted
``"module:function"`` and the keys it reads (:func:`check`). :func:`run_checks` imports a check's module
only when it runs it: a stage runs the checks of the keys it reads (``keys=``), ``validate`` all of
them. A check never downloads, decodes a dataset or opens a network connection (it may look at files:
data.root, weights, a labels CSV).

Every independent problem is reported at once, so a check is not silenced by a bad key it merely
reads. A check has a subject (what it validates) and context (other keys it reads). When the schema
rejects something in its subject, the check is skipped: it may trust the shape of what it judges.
When the schema rejects a context key, the check runs on stand-ins for that key instead, once per
combination of stand-in values, and reports only the problems that every run found (same key, same
message) and that neither lie at the rejected key nor name it: what holds whatever the key's value
is does not depend on it (``loss.name: dcie`` under either ``data.task``), while what one value
causes (``dice_bce is for binary tasks`` under ``classification``) is left for the next run, when
the key is valid. The stand-ins are every value the schema allows when it names them all (an enum,
a boolean), else those the check declares (``stand_ins=``: a value that causes no problem of its
own, such as a long run for ``train.epochs``); with neither, the check is skipped as before.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from pipeline.config import schema
from pipeline.config.check_spec import CheckSpec, KeyParts, key_parts
from pipeline.config.errors import Problem

if TYPE_CHECKING:
    from pipeline.config.params import Params


def _overlaps(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """One key is the other or lies inside it."""
    return a[: len(b)] == b or b[: len(a)] == a


def checks_of(keys: Iterable[str] | None = None, table: Sequence[CheckSpec] | None = None) -> list[CheckSpec]:
    """The checks of ``keys`` (every check when None) in ``table`` (the shipped one when None): those
    whose subject is one of the keys, lies inside one or holds one."""
    if table is None:
        from pipeline.config.components import CHECKS

        table = CHECKS
    if keys is None:
        return list(table)
    wanted = [key_parts(k) for k in keys]
    return [spec for spec in table if any(_overlaps(spec.inputs[0], w) for w in wanted)]


def run_checks(
    params: Params,
    rejected_keys: Iterable[str],
    keys: Iterable[str] | None = None,
    table: Sequence[CheckSpec] | None = None,
) -> list[Problem]:
    """The problems the checks of ``keys`` (all when None) find, given the keys the schema rejected:
    a check whose subject was rejected is skipped, one whose context was rejected runs on stand-ins."""
    rejected = [key_parts(k) for k in rejected_keys]
    problems: list[Problem] = []
    for spec in checks_of(keys, table):
        problems.extend(_run(spec, params, rejected))
    return problems


def _run(registered: CheckSpec, params: Params, rejected: list[KeyParts]) -> list[Problem]:
    subject, *context = registered.inputs
    if any(_overlaps(r, subject) for r in rejected):
        return []
    bad = [key for key in context if any(_overlaps(r, key) for r in rejected)]
    fn = registered.fn
    if not bad:
        return _unique(fn(params))
    values = [registered.stand_ins.get(key) or _schema_choices(key) for key in bad]
    if not all(values):
        return []  # nothing can stand in for a rejected key it reads
    runs = [
        _unique(fn(_standing_in(params, dict(zip(bad, combination))))) for combination in itertools.product(*values)
    ]
    everywhere = set.intersection(*({(p.key, p.message) for p in run} for run in runs))
    return [p for p in runs[0] if (p.key, p.message) in everywhere and not _about(p, bad)]


def _unique(problems: Iterable[Problem]) -> list[Problem]:
    """``problems`` in order, each (key, message) once."""
    first: dict[tuple[str, str], Problem] = {}
    for p in problems:
        first.setdefault((p.key, p.message), p)
    return list(first.values())


def _about(problem: Problem, keys: list[KeyParts]) -> bool:
    """The problem lies at, inside or around one of ``keys``, or names it: the schema has said what
    is wrong there, and a stand-in's consequences are no finding."""
    where = key_parts(problem.key)
    return any((where and _overlaps(where, key)) or ".".join(key) in problem.message for key in keys)


def _standing_in(params: Params, values: dict[KeyParts, Any]) -> Params:
    """A copy of ``params`` with each key of ``values`` set to its value."""
    data = copy.deepcopy(params.data)
    for key, value in values.items():
        node = data
        for part in key[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[key[-1]] = copy.deepcopy(value)
    return dataclasses.replace(params, data=data)


def _schema_choices(key: KeyParts) -> tuple[Any, ...]:
    """Every value the schema allows at ``key`` when it names them all (an enum, a boolean), else ()."""
    return schema.choices(key)
