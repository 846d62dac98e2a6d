"""Training checkpoints: written atomically, resumed only when they belong to the same inputs.

A checkpoint is taken at every epoch boundary. All randomness is re-derived from (train.seed, epoch)
when an epoch starts (:meth:`~pipeline.training.feed.TrainData.start_epoch`), so resuming from epoch k replays exactly what an
uninterrupted run would have done (bit for bit with ``train.deterministic: true`` on CPU).
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import threading
from pathlib import Path
from typing import Any

import torch

from pipeline import torchfile
from pipeline.atomic import write_bytes
from pipeline.config.errors import PipelineError
from pipeline.hashing import file_sha256


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


def host_copy(state: Any) -> Any:
    """``state`` with every tensor copied to host memory (detached), the rest deep-copied: a snapshot
    training may go on changing while it is written."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {key: host_copy(value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(host_copy(value) for value in state)
    return copy.deepcopy(state)


class BackgroundWriter:
    """Writes checkpoints off the training thread, each still atomically (:func:`save`): the loop pays
    for the snapshot (a device-to-host copy of the state), the serialising and the disk write overlap the
    next epoch. One write at a time; :meth:`wait` (before the next, and when training ends) re-raises a
    failed write's error."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, path: Path, state: dict[str, Any]) -> None:
        self.wait()
        snapshot = host_copy(state)
        self._thread = threading.Thread(target=self._write, args=(path, snapshot), name="checkpoint", daemon=False)
        self._thread.start()

    def _write(self, path: Path, snapshot: dict[str, Any]) -> None:
        try:
            save(path, snapshot)
        except BaseException as exc:  # re-raised on the training thread by wait()
            self._error = exc

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise PipelineError(f"could not write the checkpoint: {error}") from error


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
        raise PipelineError(
            f"{exc}; this pipeline never writes such a checkpoint: delete it to train from scratch"
        ) from None
    except PipelineError as exc:  # a corrupt checkpoint must not block a fresh start
        print(f"train: ignoring the checkpoint: {exc}")
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != expected_fingerprint:
        print(f"train: {path} is from different params or inputs; starting fresh")
        return None
    if state.get("finished"):
        return None
    return state
