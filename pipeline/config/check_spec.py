"""One entry of the semantic-check table (:data:`pipeline.config.components.CHECKS`): where the check
function is and which keys it reads. Apart from :mod:`pipeline.config.checks`, which runs the table, so
that the table and its runner do not import each other."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.config.dotted import import_object
from pipeline.config.errors import Problem

if TYPE_CHECKING:
    from pipeline.config.params import Params

Check = Callable[["Params"], Iterable[Problem]]
KeyParts = tuple[str, ...]


@dataclass(frozen=True)
class CheckSpec:
    """One semantic check: what it reads, and where its function is (resolved when it runs)."""

    target: str | Check  # "module.path:function" (the shipped table), or the function itself (tests)
    inputs: tuple[KeyParts, ...]  # inputs[0] is the subject, the rest its context
    stand_ins: Mapping[KeyParts, tuple[Any, ...]] = field(default_factory=dict)  # context key -> values

    @property
    def fn(self) -> Check:
        """The check function, its module imported now."""
        if callable(self.target):
            return self.target
        fn = import_object(self.target)
        if not callable(fn):
            raise TypeError(f"{self.target}: a semantic check must be a function, not {type(fn).__name__}")
        return fn


def key_parts(key: str) -> tuple[str, ...]:
    """``"augment.train[0].Affine"`` -> ``("augment", "train", "0", "Affine")``."""
    return tuple(part for part in key.replace("[", ".").replace("]", "").split(".") if part)


def check(target: str | Check, *inputs: str, stand_ins: Mapping[str, Sequence[Any]] | None = None) -> CheckSpec:
    """The table entry of check ``target`` (``"module:function"``) reading the dotted keys ``inputs``
    (a section, or single keys). The first input is what the check validates (its subject): a stage
    runs it when it reads a key inside or around the subject; the others are context it reads. It is
    skipped when the schema rejected something in its subject, so it may trust that shape; when the
    schema rejected a context key, it runs on stand-ins for it (its enum's values, else
    ``stand_ins[key]``; see the module docstring) and reports what holds for all of them. A problem
    elsewhere in the file never hides it."""
    if not inputs:
        raise TypeError(f"{target}: a check needs the keys it reads, its subject first")
    context = [key_parts(k) for k in inputs[1:]]
    declared = {key_parts(k): tuple(values) for k, values in (stand_ins or {}).items()}
    for key, values in declared.items():
        if key not in context or not values:
            raise TypeError(
                f"stand_ins[{'.'.join(key)!r}]: stand-ins are values for a context key "
                f"({', '.join(inputs[1:]) or 'none'}), at least one"
            )
    return CheckSpec(target, tuple(key_parts(k) for k in inputs), declared)
