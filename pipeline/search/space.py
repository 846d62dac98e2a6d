"""The search space of ``search.space``: dotted params.yaml keys and the values a trial may give them.

Every value a trial may get is checked before any trial runs, by the checks params.yaml itself passes:
the file with that value put in is validated against the schema and by the semantic checks of the key
(a categorical loss name that does not exist, a ``low`` the key's schema refuses); the problems are
located in the ``search:`` section. Numbers are checked at both ends of their range, which is what a
schema bound or a builder's range check can refuse.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from pipeline.config.checks import key_parts, run_checks
from pipeline.config.components import TRIAL_SECTIONS
from pipeline.config.errors import Problem
from pipeline.config.params import Params, lookup
from pipeline.config.schema import did_you_mean, validate
from pipeline.config.yaml_source import Marks

SECTIONS = TRIAL_SECTIONS  # the keys a trial may set


def suggest(trial: Any, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The values ``trial`` (an Optuna trial) draws for every dimension, by dotted key."""
    values: dict[str, Any] = {}
    for key, dim in space.items():
        if dim["type"] == "categorical":
            values[key] = trial.suggest_categorical(key, dim["choices"])
        elif dim["type"] == "int":
            values[key] = trial.suggest_int(
                key, int(dim["low"]), int(dim["high"]), step=int(dim.get("step") or 1), log=bool(dim.get("log"))
            )
        else:
            values[key] = trial.suggest_float(
                key, float(dim["low"]), float(dim["high"]), step=dim.get("step"), log=bool(dim.get("log"))
            )
    return values


def grid(space: dict[str, dict[str, Any]]) -> dict[str, list[Any]]:
    """Every value of each dimension, for the grid sampler: categorical choices, stepped ranges."""
    values: dict[str, list[Any]] = {}
    for key, dim in space.items():
        if dim["type"] == "categorical":
            values[key] = list(dim["choices"])
            continue
        step = dim.get("step") or (1 if dim["type"] == "int" else None)
        if step is None:
            raise ValueError(key)
        count = round((dim["high"] - dim["low"]) / step) + 1
        cast = int if dim["type"] == "int" else float
        values[key] = [cast(dim["low"] + i * step) for i in range(count)]
    return values


def _candidates(dim: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """(where inside the dimension, value) for what a trial may get: each choice, both ends."""
    if dim["type"] == "categorical":
        for index, choice in enumerate(dim["choices"]):
            yield f"choices[{index}]", choice
    else:
        cast = int if dim["type"] == "int" else float
        yield "low", cast(dim["low"])
        yield "high", cast(dim["high"])


def _with(data: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(data)
    node = out
    *parents, last = key.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    return out


def dimension_problems(params: Params, key: str, dim: dict[str, Any]) -> list[Problem]:
    """Why ``dim`` does not fit params key ``key``, each located inside ``search.space.<key>``."""
    at = f"search.space.{key}"
    parts = key.split(".")
    try:
        lookup(params.data, key)
    except KeyError:
        found: list[str] = []
        node = params.data
        for index, part in enumerate(parts):
            if index == len(parts) - 1 and found[-1:] == ["params"] and isinstance(node, dict):
                break  # a component's keyword arguments (optimizer.params.momentum) may be new keys
            if not isinstance(node, dict) or part not in node:
                hint = did_you_mean(part, node) if isinstance(node, dict) else ""
                where = ".".join(found) or "params.yaml"
                return [Problem(at, f"{key!r} is not a key of params.yaml: {where} has no {part!r}{hint}")]
            found.append(part)
            node = node[part]
    if parts[0] not in SECTIONS:
        return [Problem(at, f"{parts[0]!r} is not a section a trial can change (one of {', '.join(SECTIONS)})")]
    problems = []
    if dim["type"] != "categorical":
        if dim["low"] > dim["high"]:
            problems.append(Problem(f"{at}.low", f"{dim['low']} is above high ({dim['high']})"))
        if dim.get("log") and dim["low"] <= 0:
            problems.append(Problem(f"{at}.low", f"{dim['low']}: a log scale needs low above 0"))
        if dim.get("log") and dim.get("step"):
            problems.append(Problem(f"{at}.step", "a log scale takes no step"))
        if dim["type"] == "int" and any(float(dim[k]) != int(dim[k]) for k in ("low", "high")):
            problems.append(Problem(at, "an int dimension needs whole low and high"))
        if problems:
            return problems
    if run_checks(params, [], keys=[key]):
        return []  # the file's own value already fails these checks: that is reported, not each trial's echo
    for where, value in _candidates(dim):
        problems += [
            Problem(f"{at}.{where}", f"{key} = {value!r}: {p.message}") for p in _value_problems(params, key, value)
        ]
    return problems


def _value_problems(params: Params, key: str, value: Any) -> list[Problem]:
    """What params.yaml's own checks say of ``key`` holding ``value`` (schema, then its semantic checks)."""
    data = _with(params.data, key, value)
    schema_problems = validate(data, Marks())
    if schema_problems:
        return schema_problems
    trial_params = Params(data, params.path, params.marks)
    return [p for p in run_checks(trial_params, [], keys=[key]) if p.key]


def check_search(params: Params) -> list[Problem]:
    """Every dimension names a params.yaml key, and every value a trial may get passes the key's checks;
    the grid sampler needs every dimension countable."""
    search = params.get("search")
    problems: list[Problem] = []
    for key, dim in search["space"].items():
        problems += dimension_problems(params, key, dim)
    if search["sampler"]["name"] == "grid":
        for key, dim in search["space"].items():
            if dim["type"] == "float" and not dim.get("step"):
                problems.append(Problem(f"search.space.{key}", "the grid sampler needs a step for a float range"))
    return [_located(params, p) for p in problems]


def _located(params: Params, problem: Problem) -> Problem:
    """``problem`` at its line and column: a dimension's key is one YAML key holding dots
    (``optimizer.lr``), which the generic dotted-key lookup would split."""
    rest = problem.key.removeprefix("search.space.")
    key = next(
        (k for k in sorted(params.get("search.space"), key=len, reverse=True) if rest == k or rest.startswith(k + ".")),
        None,
    )
    if key is None:
        return problem
    inner = [int(p) if p.isdigit() else p for p in key_parts(rest[len(key) :])]
    line, column = params.marks.locate(("search", "space", key, *inner))
    return Problem(problem.key, problem.message, line, column)
