"""Never write over an input: a command resolves what it will write and what it reads (symlinks
followed) and refuses before any work when one is, or lies inside, the other.

``predict ds/masks --out ds`` would write ``ds/masks/<stem>.png`` over the masks it reads, and
``export --model X --out X`` would replace the trained weights with their export: both are refused
here, with the option at fault named. The same module says whether an output location can be written
at all (a file where a folder is meant, ``/dev/null``, a read-only place), so that is one clear line too.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from pipeline.config.errors import PipelineError


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or inner.is_relative_to(outer)


def refuse_overwrite(outputs: Iterable[Path], inputs: Iterable[Path], *, option: str = "--out") -> None:
    """:class:`PipelineError` when an output (a file or folder the command writes) is an input, lies
    inside an input folder, or holds an input; the message names both and ``option``."""
    real_inputs = [(path, _real(path)) for path in inputs]
    for output in outputs:
        real_out = _real(output)
        for given, real_in in real_inputs:
            if _within(real_out, real_in) or _within(real_in, real_out):
                how = (
                    "the same file"
                    if real_out == real_in
                    else "it lies inside that input"
                    if _within(real_out, real_in)
                    else "that input lies inside it"
                )
                raise PipelineError(
                    f"{option}: writing {output} would overwrite the input {given} ({how}); "
                    f"choose an {option} outside every input"
                )


def writable_folder(folder: Path, *, option: str = "--out") -> None:
    """``folder`` can hold outputs: it is a folder, or can be made one where its nearest existing
    parent is a writable folder. Nothing is created."""
    if folder.exists() and not folder.is_dir():
        raise PipelineError(f"{option} {folder}: is not a folder (the outputs go into a folder)")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise PipelineError(f"{option} {folder}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK) or _pseudo(existing):
        raise PipelineError(f"{option} {folder}: {existing} is not writable")


def writable_file(path: Path, *, option: str = "--out") -> None:
    """``path`` can be written as a regular file (by a rename from a temporary file beside it)."""
    if path.is_dir():
        raise PipelineError(f"{option} {path}: is a folder; name the file to write")
    if path.exists() and not path.is_file():
        raise PipelineError(f"{option} {path}: is not a regular file (a device or pipe cannot be replaced)")
    writable_folder(path.parent if str(path.parent) else Path("."), option=option)


def _pseudo(folder: Path) -> bool:
    """A kernel file system (/proc, /sys): root may pass ``os.access`` there, yet nothing can be created."""
    real = _real(folder)
    return any(_within(real, Path(p)) for p in ("/proc", "/sys"))
