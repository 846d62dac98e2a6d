"""The components that register semantic checks and registries with the config layer, and the one
way to load a params file with all of them: :func:`load_params`.

The config layer never imports upward: each component registers its checks (``@semantic_check``) and
registries (``Registry(...)``) when imported, and the entry points (the stage runner, the CLI) load
params through here, so a file that validates has passed every component's check.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.augment import checks as _augment_checks  # noqa: F401 - registers checks and augmenters
from pipeline.config import params as _params
from pipeline.config.params import DEFAULT_PARAMS, Params
from pipeline.data import files as _data_files  # noqa: F401
from pipeline.data import labels as _data_labels  # noqa: F401
from pipeline.data import split as _data_split  # noqa: F401
from pipeline.models import build as _models  # noqa: F401
from pipeline.tracking import store as _tracking_store  # noqa: F401
from pipeline.training import loss as _loss  # noqa: F401
from pipeline.training import optimizer as _optimizer  # noqa: F401
from pipeline.training import precision as _precision  # noqa: F401
from pipeline.training import scheduler as _scheduler  # noqa: F401


def load_params(path: str | Path = DEFAULT_PARAMS, *, semantic: bool = True) -> Params:
    """Parse, validate (schema and every component's checks) and default ``path``; raise
    :class:`pipeline.config.errors.ConfigError` listing every problem."""
    return _params.load_params(path, semantic=semantic)
