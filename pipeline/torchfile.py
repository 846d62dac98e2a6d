"""Reading ``torch.save`` files safely: a file on disk is input, never code.

Every ``.pt``/``.pth``/``.bin`` the pipeline reads (pretrained weights, its own checkpoint) goes through
:func:`load`, which unpickles with ``weights_only=True``: tensors and plain containers only, so a
planted pickle is refused before anything in it runs.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from pipeline.config.errors import PipelineError


class UnsafeFileError(PipelineError):
    """The file holds pickled Python objects beyond tensors and plain data."""


def load(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU. :class:`UnsafeFileError` when the file
    holds other Python objects (loading them could run code), :class:`PipelineError` naming the path
    and the reason when it is not a readable torch file at all."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found:
            raise UnsafeFileError(
                f"{path}: refused: it holds pickled Python objects ({found.group(1)}), not "
                "only tensors and plain data, and loading them could run code from the "
                "file"
            ) from None
        reason = next((line.strip() for line in str(exc).splitlines() if "Unsupported" in line), None)
        raise PipelineError(f"{path}: not a readable torch file ({reason or _first_line(exc)})") from None
    except (OSError, RuntimeError, EOFError, ValueError, AttributeError, ImportError) as exc:
        raise PipelineError(f"{path}: not a readable torch file ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
