"""Where the components' semantic checks and registries live, and the one way to load a params file
with them: :func:`load_params`.

The config layer never imports upward: each component registers its checks (``@semantic_check``) and
registries (``Registry(...)``) when imported. This module only names the modules, by section
(:data:`CHECK_MODULES`) and by kind (:data:`REGISTRY_MODULES`); the config layer imports one when a
section is checked or a kind is used. So a stage imports the checks of the keys it reads (the split
stage no torch at all), ``validate`` those of every section, and each check imports heavy libraries
(timm, torchvision, imgaug, mlflow...) only for what the file declares. A file that validates has passed
every check of what it declares; a stage's keys have passed theirs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pipeline.config import checks as _checks
from pipeline.config import params as _params
from pipeline.config.params import DEFAULT_PARAMS, Params
from pipeline.config.registry import REGISTRIES

# Section -> the modules whose semantic checks validate it (each check's first input lies in it).
CHECK_MODULES: dict[str, tuple[str, ...]] = {
    "data": ("pipeline.data.files", "pipeline.data.labels"),
    "split": ("pipeline.data.split",),
    "augment": ("pipeline.augment.checks",),
    "model": ("pipeline.models.networks",),
    "loss": ("pipeline.training.losses.section",),
    "optimizer": ("pipeline.training.optimizer",),
    "scheduler": ("pipeline.training.scheduler",),
    "precision": ("pipeline.training.precision",),
    "tracking": ("pipeline.tracking.store",),
    "search": ("pipeline.search.space",),
}

# Registry kind (`python -m pipeline list KIND`) -> the module that creates it.
REGISTRY_MODULES: dict[str, str] = {
    "augmenters": "pipeline.augment.augmenters",
    "models": "pipeline.models.networks",
    "losses": "pipeline.training.losses.base",
    "optimizers": "pipeline.training.optimizer",
    "schedulers": "pipeline.training.scheduler",
}

_checks.declare_check_modules(CHECK_MODULES)
for _kind, _module in REGISTRY_MODULES.items():
    REGISTRIES.declare(_kind, _module)


def load_params(
    path: str | Path = DEFAULT_PARAMS, *, semantic: bool = True, keys: Sequence[str] | None = None
) -> Params:
    """Parse, validate and default ``path``; raise :class:`pipeline.config.errors.ConfigError` listing
    every problem. The schema checks the whole file (every typo, at once); the semantic checks are
    those of ``keys`` (a stage's PARAMS: the checks whose subject it reads), or every section's when
    None (``python -m pipeline validate``)."""
    return _params.load_params(path, semantic=semantic, keys=keys)
