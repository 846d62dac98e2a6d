"""Load params.yaml: parse with positions, validate everything (schema, then semantic checks), fill
defaults, and hand each stage a read-only view of the keys it declared.

Data flows one way: file -> :func:`load_params` (all problems at once, or :class:`ConfigError`) ->
``params.view(stage.PARAMS)`` -> the stage. A view refuses keys its stage did not declare, which keeps
each stage's ``params:`` list in dvc.yaml honest (DVC re-runs a stage only for the keys it lists).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import check_spec, checks, schema
from pipeline.config.errors import ConfigError, PipelineError, Problem
from pipeline.config.yaml_source import KeyPath, Marks, load_yaml

DEFAULT_PARAMS = "params.yaml"


def _split(key: str) -> tuple[str, ...]:
    return tuple(key.split(".")) if key else ()


def lookup(data: Any, key: str) -> Any:
    """The value at dotted ``key`` (``KeyError`` naming the key when absent)."""
    node = data
    for part in _split(key):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{'a': {'b': 1}}`` -> ``{'a.b': 1}``; lists stay values (as DVC and MLflow show them)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


@dataclass
class Params:
    """A validated params file with defaults filled in."""

    data: dict[str, Any]
    path: Path
    marks: Marks = field(default_factory=Marks)

    @property
    def root(self) -> Path:
        """Relative paths in the file are relative to the file's own directory (the repo root)."""
        return self.path.resolve().parent

    def get(self, key: str) -> Any:
        return copy.deepcopy(lookup(self.data, key))

    def has(self, key: str) -> bool:
        try:
            lookup(self.data, key)
        except KeyError:
            return False
        return True

    def resolve_path(self, value: str | Path) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.root / p

    def view(self, keys: Sequence[str], stage: str = "stage") -> ParamsView:
        return ParamsView(self, tuple(keys), stage)


def _keypath(key: str) -> KeyPath:
    """``"augment.train[0].Affine"`` (or ``augment.train.0.Affine``) -> the path its marks are under."""
    return tuple(int(p) if p.isdigit() else p for p in check_spec.key_parts(key))


@dataclass(frozen=True)
class ParamsView:
    """What one stage may read: exactly the keys (and everything under them) it declared."""

    params: Params
    keys: tuple[str, ...]
    stage: str = "stage"

    def allows(self, key: str) -> bool:
        parts = _split(key)
        return any(parts[: len(_split(k))] == _split(k) for k in self.keys)

    def __getitem__(self, key: str) -> Any:
        if not self.allows(key):
            raise KeyError(
                f"{self.stage} reads {key!r} but does not declare it; add it to the stage's PARAMS "
                f"and run `python -m pipeline dvc` (declared: {', '.join(self.keys)})"
            )
        return self.params.get(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            if not self.allows(key):
                raise
            return default

    @property
    def root(self) -> Path:
        return self.params.root

    @property
    def path(self) -> Path:
        return self.params.path

    def resolve_path(self, value: str | Path) -> Path:
        return self.params.resolve_path(value)

    def all_params(self) -> dict[str, Any]:
        """The whole resolved file, for recording (MLflow params, resolved-params artifact) only.
        Behaviour must depend on declared keys alone."""
        return copy.deepcopy(self.params.data)


def _locate_all(problems: Iterable[Problem], marks: Marks) -> list[Problem]:
    out = []
    for p in problems:
        if p.line is None and p.key:
            line, col = marks.locate(_keypath(p.key))
            p = Problem(p.key, p.message, line, col)
        out.append(p)
    return out


def load_params(
    path: str | Path = DEFAULT_PARAMS, *, semantic: bool = True, keys: Sequence[str] | None = None
) -> Params:
    """Parse, validate and default ``path``; raise :class:`ConfigError` listing every problem. The schema
    checks the whole file (every typo, at once); the semantic checks are those of ``keys`` (a stage's
    keys: the checks whose subject it reads), or every section's when None (``python -m pipeline
    validate``). The checks are :data:`pipeline.config.components.CHECKS`, imported as they run."""
    path = Path(path)
    data, marks, problems = load_yaml(path)
    if data is None:
        raise ConfigError(str(path), problems)
    problems += schema.validate(data, marks)
    params = Params(schema.fill_defaults(data), path, marks)
    if semantic:
        problems += _locate_all(checks.run_checks(params, [p.key for p in problems], keys), marks)
    if problems:
        problems.sort(key=lambda p: (p.line or 0, p.column or 0, p.key))
        raise ConfigError(str(path), problems)
    return params


__all__ = ["ConfigError", "Params", "ParamsView", "PipelineError", "flatten", "load_params", "lookup"]
