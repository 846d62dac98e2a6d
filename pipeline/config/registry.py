"""Registries: a name in params.yaml -> the implementation, plus ``"module.path:attr"`` for user code.

One mechanism for losses, schedulers, models, augmenters...: explicit entries registered with
:meth:`Registry.register`, optionally names supplied by a provider (every ``torch.optim`` class,
every timm model) so nothing is listed twice by hand. ``python -m pipeline list KIND`` prints them.

:data:`REGISTRIES` holds every kind. Where each kind's registry is created is data, one
``"module:attr"`` per kind in :data:`pipeline.config.components.REGISTRIES`, imported on the kind's
first use: ``list losses`` imports the losses, not timm or imgaug, and nothing imports every registry
up front (nor anything above the config layer at import).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from pipeline.config.dotted import import_object, is_import_path
from pipeline.config.errors import PipelineError
from pipeline.config.schema import did_you_mean


class Registries(Mapping[str, "Registry"]):
    """Kind -> :class:`Registry`: those created so far, and the declared ones (``{kind: "module:attr"}``),
    imported when read."""

    def __init__(self, declared: Mapping[str, str] | None = None) -> None:
        self._created: dict[str, Registry] = {}
        self._declared = None if declared is None else dict(declared)  # None: the shipped table, read on use

    @property
    def _modules(self) -> dict[str, str]:
        if self._declared is None:
            from pipeline.config.components import REGISTRIES as declared  # data: "module:attr" strings

            self._declared = dict(declared)
        return self._declared

    def __setitem__(self, kind: str, registry: Registry) -> None:
        self._created[kind] = registry

    def __getitem__(self, kind: str) -> Registry:
        if kind not in self._created and kind in self._modules:
            registry = import_object(self._modules[kind])
            if not isinstance(registry, Registry) or registry.kind != kind:
                raise TypeError(f"{self._modules[kind]}: expected the Registry {kind!r}, found {registry!r}")
            self._created[kind] = registry
        return self._created[kind]

    def __contains__(self, kind: object) -> bool:
        return kind in self._created or kind in self._modules

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(set(self._created) | set(self._modules)))

    def __len__(self) -> int:
        return len(set(self._created) | set(self._modules))


REGISTRIES = Registries()


class Registry:
    """Name -> implementation for one kind of thing (``losses``, ``schedulers``, ...)."""

    def __init__(
        self,
        kind: str,
        *,
        provider: Callable[[], dict[str, Any]] | None = None,
        allow_import_paths: bool = True,
        noun: str | None = None,
    ):
        self.kind = kind
        self.noun = noun or (kind[:-1] if kind.endswith("s") else kind)  # "losses" needs noun="loss"
        self._entries: dict[str, Any] = {}
        self._provider = provider
        self._provided: dict[str, Any] | None = None
        self.allow_import_paths = allow_import_paths
        REGISTRIES[kind] = self

    def register(self, name: str | None = None) -> Callable[[Any], Any]:
        def add(obj: Any) -> Any:
            key = name or getattr(obj, "__name__", None)
            if not key:
                raise ValueError("registry entries need a name")
            self._entries[key] = obj
            return obj

        return add

    def add(self, name: str, obj: Any) -> None:
        self._entries[name] = obj

    def _all(self) -> dict[str, Any]:
        if self._provided is None and self._provider is not None:
            self._provided = self._provider()
        return {**(self._provided or {}), **self._entries}

    def names(self) -> list[str]:
        return sorted(self._all())

    def __contains__(self, name: str) -> bool:
        return (self.allow_import_paths and is_import_path(name)) or name in self._all()

    def get(self, name: str) -> Any:
        """The implementation for ``name``; :class:`PipelineError` with a did-you-mean otherwise."""
        if self.allow_import_paths and is_import_path(name):
            return import_object(name)
        entries = self._all()
        if name not in entries:
            raise PipelineError(self.unknown_message(name))
        return entries[name]

    def find(self, name: str) -> Any:
        """The registered entry ``name``, or None (never imports user code)."""
        return self._all().get(name)

    def unknown_message(self, name: str) -> str:
        hint = did_you_mean(name, self._all())
        extra = "; for your own, 'module.path:attr'" if self.allow_import_paths else ""
        return f"unknown {self.noun} {name!r}{hint}; `python -m pipeline list {self.kind}` lists them{extra}"

    def describe(self, name: str) -> str:
        """One line for ``list``: the first line of the docstring."""
        doc = inspect.getdoc(self._all().get(name)) or ""
        return doc.splitlines()[0] if doc else ""


def signature_problems(
    fn: Callable[..., Any], kwargs: dict[str, Any], *, skip: int = 0, provided: Iterable[str] = ()
) -> list[tuple[str | None, str]]:
    """Why ``fn(*skip_args, **kwargs)`` would not bind: ``[(kwarg or None, message), ...]``.

    ``provided`` names arguments the pipeline supplies itself (``optimizer``, ``params``...)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return []
    params = list(sig.parameters.values())[skip:]
    accepted = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    out: list[tuple[str | None, str]] = []
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        for key in kwargs:
            if key not in accepted:
                out.append(
                    (
                        key,
                        f"unexpected argument{did_you_mean(key, accepted)}; accepted: {', '.join(accepted) or 'none'}",
                    )
                )
    given = set(kwargs) | set(provided)
    for p in params:
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is p.empty and p.name not in given:
            out.append((None, f"missing required argument {p.name!r}"))
    return out
