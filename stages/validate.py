"""The validate stage: every check of the whole params file, before any other stage runs.

Each stage validates the keys it reads (and the whole file against the schema), so the split stage
imports no torch; this stage runs every semantic check at once (the loss built and called, the
optimizer and scheduler stepped, the model built on the meta device, the augmenters built), so a bad
``loss.params`` stops ``dvc repro`` before the split, the decode or the model stage spend any time,
with every problem listed. DVC re-runs it whenever a param changes; its record never changes, so it
re-runs nothing after it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from pipeline import outputs
from pipeline.atomic import write_json
from pipeline.config.params import ParamsView
from pipeline.stage import run_stage

PARAMS = (
    "data",
    "split",
    "augment",
    "model",
    "loss",
    "optimizer",
    "scheduler",
    "precision",
    "train",
    "evaluate",
    "export",
    "tracking",
    "search",
)

RECORD = {"valid": True}  # constant: the stages after this one depend on it and must not re-run for it


def validate(view: ParamsView) -> dict[str, Any]:
    """Every check has passed by the time this runs (the stage runner ran them); record it."""
    write_json(view.root / outputs.VALIDATED, RECORD)
    print(f"validate: {view.path.name}: valid")
    return RECORD


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage("validate", PARAMS, validate, argv)


if __name__ == "__main__":
    sys.exit(main())
