"""Training checkpoints: written atomically, resumed only when they belong to the same inputs.

A checkpoint is taken at every epoch boundary. All randomness is re-derived from (train.seed, epoch)
when an epoch starts (the training loop's ``epoch_seed``), so resuming from epoch k replays exactly what an
uninterrupted run would have done (bit for bit with ``train.deterministic: true`` on CPU).
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch

from pipeline.hashing import file_sha256
from pipeline import torchfile
from pipeline.atomic import write_bytes
from pipeline.config.errors import PipelineError


def fingerprint(params: dict[str, Any], files: list[Path]) -> str:
    """sha256 over the stage's params and the bytes of its input files: what a resume must match."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    for path in files:
        digest.update(path.name.encode())
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                digest.update(child.relative_to(path).as_posix().encode())
                digest.update(file_sha256(child).encode())
        elif path.exists():
            digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def save(path: Path, state: dict[str, Any]) -> None:
    """Serialise ``state`` in memory first, then write it atomically: a kill never leaves half a file."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes(path, buffer.getvalue())


def load_resumable(path: Path, expected_fingerprint: str) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it is an unfinished run of the same inputs, else ``None``.

    It is read with ``weights_only=True`` (tensors and plain data: what :func:`save` writes); a file
    holding other pickled objects is refused (:class:`pipeline.torchfile.UnsafeFileError`) and nothing
    in it runs. A merely unreadable one (a torn copy) is ignored: training starts fresh over it."""
    if not path.exists():
        return None
    try:
        state = torchfile.load(path)
    except torchfile.UnsafeFileError as exc:
        raise PipelineError(f"{exc}; this pipeline never writes such a checkpoint: delete it to train "
                            "from scratch") from None
    except PipelineError as exc:  # a corrupt checkpoint must not block a fresh start
        print(f"train: ignoring the checkpoint: {exc}")
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != expected_fingerprint:
        print(f"train: {path} is from different params or inputs; starting fresh")
        return None
    if state.get("finished"):
        return None
    return state


