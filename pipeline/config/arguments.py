"""The keyword arguments a registry entry takes, read from its signature and docstring.

One reading for every consumer: ``python -m pipeline show`` prints the defaults a section leaves
unset, and :mod:`pipeline.config.fragments` turns the same list into the editor's completion schema.
What the pipeline passes itself (an optimizer's ``params`` and ``lr``, a scheduler's ``optimizer``)
is left out, since params.yaml may not set it.
"""

from __future__ import annotations

import inspect
import math
import re
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# Arguments the builders supply (build_optimizer refuses params/lr in optimizer.params).
PROVIDED: dict[str, tuple[str, ...]] = {"losses": (), "optimizers": ("params", "lr"), "schedulers": ("optimizer",)}
_KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
_SECTION = re.compile(r"^(\s*)(Args|Arguments|Parameters|Keyword Args|Keyword Arguments):\s*$")
_ENTRY = re.compile(r"^(\s*)\**(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


@dataclass(frozen=True)
class Argument:
    """One keyword argument: its default (``inspect.Parameter.empty`` when required), its type as
    written in the annotation, and the first sentence of its docstring entry (may be empty)."""

    name: str
    default: Any
    type_text: str
    doc: str

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty


def keyword_arguments(impl: Any, kind: str = "", *, skip: Iterable[str] = ()) -> list[Argument]:
    """``impl``'s keyword-capable arguments in signature order, less those the pipeline provides for
    ``kind`` (a registry name) and ``skip``; [] when it has no readable signature."""
    try:
        parameters = inspect.signature(impl).parameters.values()
    except (TypeError, ValueError):
        return []
    left_out = {*PROVIDED.get(kind, ()), *skip, "self"}
    docs = argument_docs(impl)
    return [
        Argument(p.name, p.default, type_text(p.annotation), docs.get(p.name, ""))
        for p in parameters
        if p.kind in _KEYWORD and p.name not in left_out
    ]


def summary(impl: Any) -> str:
    """The first line of ``impl``'s docstring."""
    doc = inspect.getdoc(impl) or ""
    return _plain(doc.strip().splitlines()[0]) if doc.strip() else ""


def argument_docs(impl: Any) -> dict[str, str]:
    """``{argument: first sentence}`` from a Google-style ``Args:`` section of the class or
    ``__init__`` docstring (torch documents its optimizers and schedulers this way)."""
    out: dict[str, str] = {}
    for obj in (impl, getattr(impl, "__init__", None)):
        doc = inspect.getdoc(obj) if obj is not None else None
        if doc:
            for name, text in _args_section(doc).items():
                out.setdefault(name, text)
    return out


def _args_section(doc: str) -> dict[str, str]:
    entries: dict[str, list[str]] = {}
    lines = doc.expandtabs().splitlines()
    i = 0
    while i < len(lines):
        header = _SECTION.match(lines[i])
        i += 1
        if not header:
            continue
        outer, entry_indent, current = len(header.group(1)), None, None
        for line in lines[i:]:
            if not line.strip():
                continue
            indent = len(line) - len(line.lstrip())
            if indent <= outer:
                break
            match = _ENTRY.match(line)
            if match and (entry_indent is None or indent == entry_indent):
                entry_indent, current = indent, match.group(2)
                entries[current] = [match.group(3)]
            elif current is not None:
                entries[current].append(line.strip())
    return {name: _first_sentence(" ".join(parts)) for name, parts in entries.items()}


def _plain(text: str) -> str:
    """reST roles, literals and links unwrapped, whitespace collapsed."""
    text = re.sub(r":\w+:`([^`<]*?)\s*(?:<[^>]*>)?`", r"\1", text)
    return re.sub(r"`+([^`]*)`+_?", r"\1", " ".join(text.split()))


def _first_sentence(text: str) -> str:
    """Plain text up to the first full stop that ends a sentence, without a "(default: ...)"."""
    text = _plain(text)
    # the default comes from the signature (docstrings drift: torch's Adafactor says 1e-2, is 0.0)
    text = re.sub(
        r"\s*\(default:\s*(?:[^()]|\([^()]*\))*\)|\s*\bDefault:\s*[^\s,;]+", "", text, flags=re.IGNORECASE
    ).strip()
    head = re.split(r"(?<=[a-z0-9)\]][.!?])\s+(?=[A-Z(])", text, maxsplit=1)[0]
    return head if len(head) <= 200 else head[:197].rstrip() + "..."


def _strip_modules(text: str) -> str:
    """``torch.Tensor`` -> ``Tensor``, ``collections.abc.Sequence[float]`` -> ``Sequence[float]``."""
    return re.sub(r"\b(?:[A-Za-z_]\w*\.)+(?=[A-Za-z_])", "", text.replace("typing.", ""))


def type_text(annotation: Any) -> str:
    """An annotation as short, Python-version-independent text (``float | Sequence[float] | None``)."""
    if annotation is inspect.Parameter.empty:
        return ""
    if isinstance(annotation, str):
        return _strip_modules(annotation)
    if annotation is None or annotation is type(None):
        return "None"
    if annotation is Ellipsis:
        return "..."
    if isinstance(annotation, (list, tuple)):  # Callable[[float], float]'s argument list
        return f"[{', '.join(type_text(a) for a in annotation)}]"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return " | ".join(type_text(a) for a in args)
    if origin is typing.Literal:
        return f"Literal[{', '.join(repr(a) for a in args)}]"
    if origin is not None:
        name = getattr(origin, "__name__", None) or _strip_modules(str(origin))
        return f"{name}[{', '.join(type_text(a) for a in args)}]" if args else name
    if isinstance(annotation, type):
        return annotation.__name__
    return _strip_modules(str(annotation))


_NOT_JSON = object()


def json_value(value: Any) -> Any:
    """``value`` as JSON (tuples become lists), or :data:`_NOT_JSON` when it has no JSON form (a
    tensor, a function, infinity)."""
    if value is None or type(value) in (bool, int, str):
        return value
    if type(value) is float:
        return value if math.isfinite(value) else _NOT_JSON
    if type(value) in (tuple, list):
        items = [json_value(v) for v in value]
        return _NOT_JSON if any(v is _NOT_JSON for v in items) else items
    return _NOT_JSON


def has_json_form(value: Any) -> bool:
    return json_value(value) is not _NOT_JSON
