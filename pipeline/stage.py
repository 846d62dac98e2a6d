"""What every DVC stage does first and last: validate the params file, hand the stage its own keys,
and turn user-facing failures into one clear message and exit status 2 (no traceback).

A stage checks the whole file against the schema (every typo, in any section, stops it) and runs the
semantic checks of the keys it reads (its PARAMS): the split stage does not build the loss, so it
imports no torch. ``python -m pipeline validate`` runs every check, before ``dvc repro``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from pipeline.config.params import load_params
from pipeline.config.errors import PipelineError, report
from pipeline.config.params import DEFAULT_PARAMS, ParamsView


def run_stage(
    name: str, keys: Sequence[str], body: Callable[[ParamsView], None], argv: Sequence[str] | None = None
) -> int:
    """Run ``body`` on a view of ``keys``; return the process exit status."""
    parser = argparse.ArgumentParser(prog=f"python -m stages.{name}", description=body.__doc__)
    parser.add_argument("--params", default=DEFAULT_PARAMS, help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params, keys=keys)
        body(params.view(keys, stage=name))
    except PipelineError as exc:
        return report(exc, name)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    return 0
