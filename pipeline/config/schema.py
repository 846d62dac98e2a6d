"""The JSON Schema for params.yaml: loading it, validating against it, and filling its defaults.

The schema is split by section (``schemas/sections/<name>.schema.json``) and stitched together by
relative ``$ref`` from ``schemas/params.schema.json``; editors resolve the same references.
jsonschema's own messages are reworded here so that each names one key, and unknown keys and enum
values get a "did you mean".
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import math
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import referencing
from jsonschema.exceptions import ValidationError, best_match
from referencing._core import Resolver  # the package does not re-export the type Registry.resolver returns
from referencing.jsonschema import DRAFT202012

from pipeline.config.errors import PipelineError, Problem
from pipeline.config.yaml_source import KeyPath, Marks, dotted

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
ROOT_SCHEMA = "params.schema.json"

_JSON_TYPES = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
    type(None): "null",
}


def did_you_mean(word: str, choices: Iterable[Any]) -> str:
    """`` (did you mean 'gamma'?)`` or an empty string; a case-insensitive exact match wins."""
    names = [str(c) for c in choices]
    lowered = {n.lower(): n for n in names}
    if str(word).lower() in lowered:
        return f" (did you mean {lowered[str(word).lower()]!r}?)"
    close = difflib.get_close_matches(str(word), names, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


@functools.lru_cache(maxsize=1)
def _bundle() -> tuple[dict[str, Any], referencing.Registry]:
    resources = []
    root: dict[str, Any] = {}
    for file in sorted(SCHEMA_DIR.rglob("*.json")):
        contents = json.loads(file.read_text(encoding="utf-8"))
        uri = file.relative_to(SCHEMA_DIR).as_posix()
        resources.append((uri, DRAFT202012.create_resource(contents)))
        if uri == ROOT_SCHEMA:
            root = contents
    return root, referencing.Registry().with_resources(resources)


def _validator() -> jsonschema.Draft202012Validator:
    root, registry = _bundle()
    return jsonschema.Draft202012Validator(root, registry=registry)


def _resolve(schema: dict[str, Any], resolver: Resolver) -> tuple[dict[str, Any], Resolver]:
    while isinstance(schema, dict) and "$ref" in schema:
        resolved = resolver.lookup(schema["$ref"])
        schema, resolver = resolved.contents, resolved.resolver
    return schema, resolver


def fill_defaults(instance: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``instance`` with every schema default filled in where the key is absent."""
    root, registry = _bundle()
    out = copy.deepcopy(instance)
    _fill(out, root, registry.resolver(base_uri=ROOT_SCHEMA))
    return out


def _fill(value: Any, schema: Any, resolver: Resolver) -> None:
    schema, resolver = _resolve(schema, resolver)
    if not isinstance(schema, dict):
        return
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            sub_resolved, sub_resolver = _resolve(sub, resolver)
            if key not in value and isinstance(sub_resolved, dict) and "default" in sub_resolved:
                value[key] = copy.deepcopy(sub_resolved["default"])
            if key in value:
                _fill(value[key], sub_resolved, sub_resolver)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            _fill(item, schema["items"], resolver)


def validate(instance: Any, marks: Marks) -> list[Problem]:
    """Every schema violation in ``instance``, each located by key, line and column (a NaN or an
    infinity is one too: JSON Schema's bounds let them through)."""
    problems: list[Problem] = list(_non_finite(instance, (), marks))
    for error in _validator().iter_errors(instance):
        problems.extend(_explain(error, marks))
    unique = {(p.line, p.column, p.key, p.message): p for p in problems}
    return sorted(unique.values(), key=lambda p: (p.line or 0, p.column or 0, p.key))


def _at(path: KeyPath, message: str, marks: Marks, *, at_key: bool = False) -> Problem:
    line, col = marks.locate(path, at_key=at_key)
    return Problem(dotted(path), message, line, col)


def _explain(error: ValidationError, marks: Marks) -> Iterator[Problem]:
    path: KeyPath = tuple(error.absolute_path)
    kind, value, schema = error.validator, error.instance, error.schema
    if kind == "additionalProperties" and isinstance(value, dict):
        known = list(schema.get("properties", {}))
        patterns = list(schema.get("patternProperties", {}))
        for key in value:
            if key in known or any(re.search(p, key) for p in patterns):
                continue
            hint = did_you_mean(key, known) or (f" (expected one of: {', '.join(known)})" if known else "")
            yield _at(path + (key,), f"unknown key{hint}", marks, at_key=True)
    elif kind == "required":
        missing = error.validator_value
        for key in missing:
            if isinstance(value, dict) and key not in value:
                line, col = marks.locate(path, at_key=True)
                yield Problem(dotted(path + (key,)), "missing (required)", line, col)
    elif kind == "enum":
        options = ", ".join(repr(o) for o in error.validator_value)
        yield _at(path, f"{value!r} is not one of {options}{did_you_mean(value, error.validator_value)}", marks)
    elif kind == "const":
        yield _at(path, f"must be {error.validator_value!r}, got {value!r}", marks)
    elif kind == "type":
        wanted = error.validator_value
        wanted = " or ".join(wanted) if isinstance(wanted, list) else wanted
        yield _at(path, f"expected {wanted}, got {json_type(value)} {value!r}", marks)
    elif kind in ("anyOf", "oneOf") and error.context:
        yield from _explain_alternatives(error, marks)
    else:
        yield _at(path, error.message, marks)


def _explain_alternatives(error: ValidationError, marks: Marks) -> Iterator[Problem]:
    """Pick the most useful reason among a oneOf/anyOf's branches instead of 'not valid under any'."""
    path: KeyPath = tuple(error.absolute_path)
    context = list(error.context or [])
    same_place = [e for e in context if tuple(e.absolute_path) == path]
    if (
        same_place
        and all(e.validator in ("type", "enum", "const") for e in same_place)
        and len(same_place) == len(context)
    ):
        wanted: list[str] = []
        for e in same_place:
            if e.validator == "type":
                vv = e.validator_value
                wanted.extend(vv if isinstance(vv, list) else [vv])
            else:
                vv = e.validator_value if e.validator == "enum" else [e.validator_value]
                wanted.extend(repr(v) for v in vv)
        desc = error.schema.get("description")
        hint = did_you_mean(error.instance, [v.strip("'\"") for v in wanted if v.startswith(("'", '"'))])
        message = (
            f"expected {' or '.join(dict.fromkeys(wanted))}, got {json_type(error.instance)} {error.instance!r}{hint}"
        )
        yield _at(path, message + (f" ({desc})" if desc and len(desc) < 80 else ""), marks)
        return
    # The branch the value's type fits tells what is wrong ([64, -1]: -1 is below the minimum, not
    # "expected integer"); else the best match over all branches.
    branches: dict[Any, list[ValidationError]] = {}
    for e in context:
        branches.setdefault(e.relative_schema_path[0], []).append(e)
    fitting = [
        errors
        for errors in branches.values()
        if not any(e.validator == "type" and tuple(e.absolute_path) == path for e in errors)
    ]
    if len(fitting) == 1:
        for e in fitting[0]:
            yield from _explain(e, marks)
        return
    yield from _explain(best_match(context), marks)


def _non_finite(value: Any, path: KeyPath, marks: Marks) -> Iterator[Problem]:
    """``.nan`` and ``.inf`` anywhere: every ``minimum``/``maximum`` comparison is false for NaN, so the
    schema alone would accept ``threshold: .nan``."""
    if isinstance(value, float) and not math.isfinite(value):
        yield _at(path, f"{value!r} is not a finite number", marks)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _non_finite(item, path + (key,), marks)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _non_finite(item, path + (index,), marks)


def value_problems(ref: str, value: Any, key: str = "") -> list[Problem]:
    """``value`` checked against the schema at ``ref`` (``"sections/evaluate.schema.json#/properties/
    threshold"``), each problem's key prefixed with ``key``. A command-line option and a model file's
    recipe are judged by the very rules params.yaml is, so the three cannot drift apart."""
    _, registry = _bundle()
    validator = jsonschema.Draft202012Validator({"$ref": ref}, registry=registry)
    found = list(_non_finite(value, (), Marks()))
    for error in validator.iter_errors(value):
        found.extend(_explain(error, Marks()))
    unique = dict.fromkeys((p.key, p.message) for p in found)
    return [Problem(".".join(k for k in (key, sub) if k).replace(".[", "["), message) for sub, message in unique]


def check_value(ref: str, value: Any, name: str) -> Any:
    """``value`` if it satisfies the schema at ``ref``, else :class:`PipelineError` naming ``name``
    (an option such as ``--threshold``) and why, in one line."""
    problems = value_problems(ref, value)
    if problems:
        raise PipelineError(f"{name} {value!r}: {problems[0].message}")
    return value


@functools.cache
def choices(key: tuple[str, ...]) -> tuple[Any, ...]:
    """Every value params.yaml may hold at ``key`` when the schema names them all (an enum, a
    boolean), else (): what a semantic check can stand in for a rejected key it reads."""
    root, registry = _bundle()
    node, resolver = _resolve(root, registry.resolver(base_uri=ROOT_SCHEMA))
    for part in key:
        sub = node.get("properties", {}).get(part) if isinstance(node, dict) else None
        if sub is None:
            return ()
        node, resolver = _resolve(sub, resolver)
    if not isinstance(node, dict):
        return ()
    if "enum" in node:
        return tuple(node["enum"])
    return (False, True) if node.get("type") == "boolean" else ()
