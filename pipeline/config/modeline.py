"""The ``# yaml-language-server: $schema=PATH`` line through which editors find the schema.

The yaml-language-server resolves a relative PATH from the params file's own folder, so the line in
``params.yaml`` (``schemas/...``) and in ``configs/*.yaml`` (``../schemas/...``) differ, and a file
copied elsewhere needs it rewritten: ``python -m pipeline init`` does that.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from pipeline.config.errors import PipelineError
from pipeline.config.schema import ROOT_SCHEMA, SCHEMA_DIR

MODELINE = re.compile(r"^#\s*yaml-language-server:.*?\$schema=(\S+)")


def schema_reference(text: str) -> str | None:
    """The ``$schema=`` value of the modeline among the leading comment lines, or None."""
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        match = MODELINE.match(line)
        if match:
            return match.group(1)
    return None


def resolve_reference(reference: str, params_file: Path) -> Path | None:
    """Where the editor looks for ``reference`` written in ``params_file`` (None for a URL)."""
    if re.match(r"^[a-z][a-z0-9+.-]*://", reference):
        return None
    reference = reference.removeprefix("file://")
    target = Path(reference)
    return (target if target.is_absolute() else params_file.resolve().parent / target).resolve()


def reference_from(params_file: Path, schema: Path) -> str:
    """``schema`` as the modeline of ``params_file`` should name it: relative to the file's folder
    (absolute where no relative path exists, e.g. another Windows drive)."""
    try:
        return Path(os.path.relpath(schema.resolve(), params_file.resolve().parent)).as_posix()
    except ValueError:
        return schema.resolve().as_posix()


def installed_text(config: Path, out: Path) -> tuple[str, str]:
    """``config``'s text as it should read at ``out`` (its modeline pointing at the same schema from
    there, or at the project's schema if it had none), and the new reference."""
    try:
        text = config.read_text(encoding="utf-8")
    except OSError as exc:
        raise PipelineError(f"{config}: cannot read it ({exc.strerror or exc})") from None
    old = schema_reference(text)
    target = resolve_reference(old, config) if old else SCHEMA_DIR / ROOT_SCHEMA
    if target is None:  # a URL reads the same from anywhere
        return text, old or ""
    new = reference_from(out, target)
    line = f"# yaml-language-server: $schema={new}"
    if old is None:
        return f"{line}\n{text}", new
    lines = text.splitlines(keepends=True)
    for i, current in enumerate(lines):
        match = MODELINE.match(current)
        if match:  # the first one is the one schema_reference read
            lines[i] = current[: match.start(1)] + new + current[match.end(1) :]
            break
    return "".join(lines), new
