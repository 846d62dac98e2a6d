"""What ``python -m pipeline predict`` reads: the image files its inputs name (files, folders searched
recursively, globs), decoded and prepared for the model in batches. An input that cannot be read is listed
with its reason, never skipped without a word; the others are still read."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from pipeline.config.errors import PipelineError
from pipeline.data.files import IMAGE_EXTENSIONS
from pipeline.data.images import open_image
from pipeline.inference.predictor import Predictor


def find_inputs(inputs: Sequence[str], failed: list[tuple[str, str]] | None = None) -> list[Path]:
    """Image files named directly, found under folders (recursively) or matched by globs, in order,
    each once. A name that matches nothing is an error naming it; a broken link inside a folder goes
    into ``failed`` as (path, reason) (said at the end, never skipped without a word)."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for p in sorted(path.rglob("*")):
                if p.suffix.lower() not in IMAGE_EXTENSIONS:
                    continue
                if p.is_file():
                    found.append(p)
                elif p.is_symlink() and not p.exists() and failed is not None:
                    failed.append((str(p), f"a broken link (to {os.readlink(p)})"))
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(item):
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True) if Path(m).is_file())
            if not matches:
                raise PipelineError(f"{item}: no file matches this pattern")
            found += matches
        else:
            raise PipelineError(f"{item}: no such file or folder")
    unique = list(dict.fromkeys(found))
    if not unique:
        raise PipelineError(
            f"no images found in {', '.join(inputs)} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return unique


def read_batches(
    paths: list[Path], predictor: Predictor, size: int, failed: list[tuple[str, str]]
) -> Iterator[tuple[list[Path], list[tuple[int, int]], torch.Tensor]]:
    """Decoded inputs, prepared as ``predictor`` prepares them, in batches of ``size``: (paths, original
    sizes (width, height), uint8 [N,C,H,W]); unreadable ones go into ``failed`` as (path, reason)."""
    batch: list[tuple[Path, tuple[int, int], torch.Tensor]] = []
    for path in paths:
        try:  # upright by EXIF, 16-bit/float by their range; a NaN image is listed as failed
            image = open_image(path)
            prepared = predictor.prepare(image, path)
        except PipelineError as exc:
            failed.append((str(path), str(exc).removeprefix(f"{path}: ")))
            continue
        batch.append((path, image.size, prepared))
        if len(batch) == size:
            yield [b[0] for b in batch], [b[1] for b in batch], torch.stack([b[2] for b in batch])
            batch = []
    if batch:
        yield [b[0] for b in batch], [b[1] for b in batch], torch.stack([b[2] for b in batch])
