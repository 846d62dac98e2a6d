"""Read a YAML file into plain Python values while remembering where every key and value stands.

PyYAML's ``safe_load`` forgets line numbers and silently keeps the last of two duplicate keys. Here
the file is composed into nodes and converted by hand, so each dotted key keeps its line and column,
and duplicate keys, tabs and syntax errors become :class:`Problem` entries with a position.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.config.errors import Problem

KeyPath = tuple[str | int, ...]


def dotted(path: KeyPath) -> str:
    """``('augment', 'train', 2, 'Affine')`` -> ``augment.train[2].Affine``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


@dataclass
class Marks:
    """1-based (line, column) of each key and each value, by key path."""

    keys: dict[KeyPath, tuple[int, int]] = field(default_factory=dict)
    values: dict[KeyPath, tuple[int, int]] = field(default_factory=dict)

    def locate(self, path: KeyPath, *, at_key: bool = False) -> tuple[int, int] | tuple[None, None]:
        """Position of ``path``; falls back to its nearest ancestor that exists in the file."""
        table = (self.keys, self.values) if at_key else (self.values, self.keys)
        path = tuple(path)
        while True:
            for marks in table:
                if path in marks:
                    return marks[path]
            if not path:
                return (None, None)
            path = path[:-1]


def _pos(mark: yaml.Mark) -> tuple[int, int]:
    return (mark.line + 1, mark.column + 1)


class _Converter:
    def __init__(self) -> None:
        self.constructor = yaml.SafeLoader("")  # only its scalar constructors are used
        self.marks = Marks()
        self.problems: list[Problem] = []

    def convert(self, node: yaml.Node, path: KeyPath) -> Any:
        self.marks.values.setdefault(path, _pos(node.start_mark))
        if isinstance(node, yaml.MappingNode):
            self.constructor.flatten_mapping(node)  # resolves YAML merge keys (<<)
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self.constructor.construct_object(key_node, deep=True)
                if not isinstance(key, str):
                    key = str(key)
                child = path + (key,)
                if key in out:
                    first = self.marks.keys[child]
                    line, col = _pos(key_node.start_mark)
                    self.problems.append(
                        Problem(
                            dotted(child),
                            f"duplicate key (first defined at line {first[0]}); YAML keeps only one, remove the other",
                            line,
                            col,
                        )
                    )
                    continue
                self.marks.keys[child] = _pos(key_node.start_mark)
                out[key] = self.convert(value_node, child)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.convert(item, path + (i,)) for i, item in enumerate(node.value)]
        return self.constructor.construct_object(node, deep=True)


def _syntax_problem(exc: yaml.YAMLError, text: str) -> Problem:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line, col = _pos(mark) if mark is not None else (None, None)
    problem = getattr(exc, "problem", None) or str(exc)
    lines = text.splitlines()
    if line is not None and 1 <= line <= len(lines) and "\t" in lines[line - 1]:
        message = "a tab character: YAML indentation must use spaces"
    else:
        message = f"not valid YAML: {problem}"
        context = getattr(exc, "context", None)
        if context:
            message += f" ({context})"
    return Problem("", message, line, col)


def load_yaml(path: str | Path) -> tuple[Any, Marks, list[Problem]]:
    """Parse ``path``; return (data, marks, problems). A syntax error gives data ``None``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, Marks(), [Problem("", f"file not found: {p}")]
    except IsADirectoryError:
        return None, Marks(), [Problem("", f"is a directory, not a params file: {p}")]
    except UnicodeDecodeError as exc:
        return None, Marks(), [Problem("", f"not UTF-8 text ({exc.reason} at byte {exc.start})")]
    except OSError as exc:
        return None, Marks(), [Problem("", f"cannot read {p}: {exc.strerror}")]
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        return None, Marks(), [_syntax_problem(exc, text)]
    if len(nodes) > 1:
        line, _ = _pos(nodes[1].start_mark)
        return None, Marks(), [Problem("", "several YAML documents (---); a params file holds one", line, 1)]
    if not nodes or nodes[0] is None:
        return (
            None,
            Marks(),
            [Problem("", "the file is empty; it must be a mapping of sections (data, split, ...)", 1, 1)],
        )
    converter = _Converter()
    try:
        data = converter.convert(nodes[0], ())
    except yaml.YAMLError as exc:
        return None, Marks(), [_syntax_problem(exc, text)]
    if not isinstance(data, dict):
        line, col = _pos(nodes[0].start_mark)
        kind = "a list" if isinstance(data, list) else f"a {type(data).__name__} value"
        return (
            None,
            Marks(),
            [
                Problem(
                    "", f"the top level is {kind}; it must be a mapping of sections (data: ..., split: ...)", line, col
                )
            ],
        )
    return data, converter.marks, converter.problems
