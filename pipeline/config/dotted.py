"""``"module.path:attribute"`` strings: how params.yaml names user code and how the config layer names
the components' checks and registries without importing them (a leaf module, so the tables and the
registry can both use it without importing each other)."""

from __future__ import annotations

import importlib
from typing import Any

from pipeline.config.errors import PipelineError


def is_import_path(name: str) -> bool:
    """``"my_pkg.losses:MyLoss"`` names user code; plain names are registry entries."""
    return ":" in name


def import_object(spec: str) -> Any:
    """Import ``"module.path:attr"`` (attr may be dotted); a clear error names what is missing."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise PipelineError(f"{spec!r}: expected 'module.path:attribute'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise PipelineError(f"{spec!r}: cannot import module {module_name!r} ({exc})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise PipelineError(f"{spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj
