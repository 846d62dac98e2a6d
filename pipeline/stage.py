"""What every DVC stage does first and last: validate the params file, hand the stage its own keys,
and turn user-facing failures into one clear message and exit status 2 (no traceback).

A stage checks the whole file against the schema (every typo, in any section, stops it) and runs the
semantic checks of the keys it reads (its PARAMS): the split stage does not build the loss, so it
imports no torch. ``python -m pipeline validate`` runs every check, before ``dvc repro``.

A stage reads two kinds of keys. ``PARAMS`` decide its outputs: they are its DVC params (``python -m
pipeline dvc`` writes them into dvc.yaml), so editing one re-runs it. ``RECORD_PARAMS`` (``records``
here) only say where its record goes (``tracking``: which MLflow store, experiment, run name): editing
them must not re-run training, whose weights they cannot change, so they are no DVC params. The view
allows both and the checks of both run; the next run that happens for another reason records where
they now say (``dvc repro -f train`` records the current result anew)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from pipeline.config.errors import PipelineError, report
from pipeline.config.params import DEFAULT_PARAMS, ParamsView, load_params


def run_stage(
    name: str,
    keys: Sequence[str],
    body: Callable[[ParamsView], object],
    argv: Sequence[str] | None = None,
    *,
    records: Sequence[str] = (),
) -> int:
    """Run ``body`` on a view of ``keys`` and ``records`` (the keys it reads only to record: see the
    module docstring); return the process exit status."""
    parser = argparse.ArgumentParser(prog=f"python -m stages.{name}", description=body.__doc__)
    parser.add_argument("--params", default=DEFAULT_PARAMS, help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    try:
        readable = (*keys, *records)
        params = load_params(args.params, keys=readable)
        body(params.view(readable, stage=name))
    except PipelineError as exc:
        return report(exc, name)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    return 0
