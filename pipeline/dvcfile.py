"""``python -m pipeline dvc``: each stage's ``deps`` and ``params`` in dvc.yaml, generated from its code.

DVC re-runs a stage when one of its deps or params changes, so both lists must say exactly what the
stage's outputs depend on. They are derived, never typed:

- ``deps``: the stage's module, ``pipeline/config`` (the config layer as a whole: every stage loads its
  params through it), and every library module the stage imports, transitively, read from source by
  :mod:`pipeline.imports`; then the deps that are no code (the dataset ``${data.root}``, ``weights``,
  other stages' outputs), kept as written, comments included;
- ``params``: the stage module's ``PARAMS`` (the keys that decide its outputs; the keys a stage reads
  only to say where its record goes, ``RECORD_PARAMS``, are no DVC params: see :mod:`pipeline.stage`).

Everything else in dvc.yaml (cmd, outs, metrics, plots, comments) is hand-written and kept: the file
is read and written by ruamel's round trip. ``--check`` reports what differs, one line per stage and
field, and writes nothing; a test runs it, so a new import needs one command, not YAML edits by hand.
"""

from __future__ import annotations

import ast
import io
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from pipeline.config.errors import PipelineError
from pipeline.imports import imported_files, module_file

REPO = Path(__file__).resolve().parents[1]
DVC_YAML = "dvc.yaml"
CONFIG_LAYER = "pipeline/config"  # listed as one dep: a stage's params pass through all of it
CODE = ("pipeline", "stages")  # deps under these folders are generated; all others are kept
COMMAND = "python -m pipeline dvc"


def _yaml() -> YAML:
    yaml = YAML()  # round trip: comments, order and quoting survive
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096
    yaml.preserve_quotes = True
    return yaml


def stage_module(name: str, stage: dict[str, Any]) -> str:
    """The ``stages.<x>`` module a stage's cmd runs (``python -m stages.x``, ``torchrun ... -m stages.x``)."""
    words = str(stage.get("cmd", "")).split()
    for flag, module in itertools.pairwise(words):
        if flag == "-m" and module.startswith("stages."):
            return module
    raise PipelineError(f"{DVC_YAML}: stages.{name}.cmd runs no stages.<module> ('-m stages.<name>'): {words}")


def declared_keys(module: str, root: Path, name: str = "PARAMS") -> tuple[str, ...]:
    """A stage module's ``PARAMS`` (or another tuple of key names), read from its source as a literal."""
    path = module_file(module, root)
    if path is None:
        raise PipelineError(f"{module}: no such module under {root}")
    for node in ast.parse(path.read_text()).body:
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        if (
            isinstance(node, (ast.Assign, ast.AnnAssign))
            and any(isinstance(t, ast.Name) and t.id == name for t in targets)
            and node.value is not None
        ):
            try:
                keys = ast.literal_eval(node.value)
            except ValueError:
                raise PipelineError(f"{path}: {name} must be a literal tuple of key names") from None
            keys = tuple(keys)
            twice = sorted({k for k in keys if keys.count(k) > 1})
            if twice:
                raise PipelineError(f"{path}: {name} lists {', '.join(twice)} twice")
            return keys
    return ()


def is_code(dep: str) -> bool:
    return dep.split("/")[0] in CODE


def code_deps(module: str, root: Path) -> list[str]:
    """The stage's module, the config layer, then every other library module it imports (sorted)."""
    own = module_file(module, root)
    if own is None:
        raise PipelineError(f"{module}: no such module under {root}")
    own_path = own.relative_to(root).as_posix()
    files = imported_files(module, root) - {own_path}
    layer = [CONFIG_LAYER] if any(f.startswith(CONFIG_LAYER + "/") for f in files) else []
    return [own_path, *layer, *sorted(f for f in files if not f.startswith(CONFIG_LAYER + "/"))]


@dataclass(frozen=True)
class Drift:
    """One field of one stage that differs from what the code says."""

    stage: str
    field: str
    added: tuple[str, ...]
    removed: tuple[str, ...]

    def line(self) -> str:
        changes = [f"+{a}" for a in self.added] + [f"-{r}" for r in self.removed]
        return f"{DVC_YAML}: {self.stage}.{self.field}: {' '.join(changes) or 'order differs'}"


def _reordered(old: CommentedSeq | None, values: Sequence[str]) -> CommentedSeq:
    """``values`` as a YAML list, each keeping the end-of-line comment it had in ``old``."""
    new = CommentedSeq(values)
    if old is None:
        return new
    where = {str(v): i for i, v in enumerate(old)}
    for j, value in enumerate(values):
        i = where.get(value)
        if i is not None and i in old.ca.items:
            new.ca.items[j] = old.ca.items[i]
    return new


def _diff(stage: str, field: str, old: Iterable[Any], new: Sequence[str]) -> list[Drift]:
    before = [str(v) for v in old]
    if before == list(new):
        return []
    added = tuple(v for v in new if v not in before)
    removed = tuple(v for v in before if v not in new)
    return [Drift(stage, field, added, removed)]


def generate(root: Path = REPO) -> tuple[str, list[Drift]]:
    """dvc.yaml under ``root`` with every stage's deps and params generated, and what changed."""
    path = root / DVC_YAML
    yaml = _yaml()
    document = yaml.load(path.read_text())
    stages: CommentedMap = document.get("stages") or CommentedMap()
    drift: list[Drift] = []
    for name, stage in stages.items():
        module = stage_module(name, stage)
        old_deps = stage.get("deps")
        kept = [str(d) for d in old_deps or [] if not is_code(str(d))]
        deps = code_deps(module, root) + kept
        params = list(declared_keys(module, root))
        drift += _diff(name, "deps", old_deps or [], deps)
        drift += _diff(name, "params", stage.get("params") or [], params)
        stage["deps"] = _reordered(old_deps, deps)
        if params:
            _set_after(stage, "params", _reordered(stage.get("params"), params), after="deps")
        elif "params" in stage:
            del stage["params"]
    undeclared = _stage_modules(root) - {stage_module(n, s) for n, s in stages.items()}
    if undeclared:
        raise PipelineError(
            f"{DVC_YAML}: no stage runs {', '.join(sorted(undeclared))}; add each as a stage (cmd and outs by hand)"
        )
    out = io.StringIO()
    yaml.dump(document, out)
    return out.getvalue(), drift


def _set_after(mapping: CommentedMap, key: str, value: Any, *, after: str) -> None:
    if key in mapping:
        mapping[key] = value
    else:
        mapping.insert(list(mapping).index(after) + 1, key, value)


def _stage_modules(root: Path) -> set[str]:
    return {f"stages.{p.stem}" for p in (root / "stages").glob("*.py") if p.name != "__init__.py"}


def check(root: Path = REPO) -> list[str]:
    """One line per stage and field whose deps or params differ from the code's (none: in step)."""
    _, drift = generate(root)
    return [d.line() for d in drift]


def write(root: Path = REPO) -> list[str]:
    """Regenerate dvc.yaml (atomically, only when it changes); return the drift lines it fixed."""
    from pipeline.atomic import write_text

    text, drift = generate(root)
    if text != (root / DVC_YAML).read_text():
        write_text(root / DVC_YAML, text)
    return [d.line() for d in drift]
