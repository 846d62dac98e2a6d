"""``python -m pipeline predict``: a trained model on new images, no params.yaml needed.

Inputs are image files, folders (searched recursively) and globs. Classification writes
``OUT/predictions.csv`` (path, predicted class, its probability, one probability column per class);
segmentation writes ``OUT/masks/<stem>.png``, class-index masks at each input's original size, and
with ``overlays`` ``OUT/overlays/<stem>.png``. Every file is written atomically. An input that cannot be
read is listed at the end with its reason; the others are still predicted.
"""
from __future__ import annotations

import csv
import glob
import io
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from pipeline import plots
from pipeline.atomic import write_bytes, write_text
from pipeline.config.errors import PipelineError
from pipeline.data.dataset import open_image
from pipeline.data.files import IMAGE_EXTENSIONS
from pipeline.inference.predictor import Predictor, mask_at_size


@dataclass
class PredictReport:
    """What a run of predict did: the files it wrote and the inputs it could not read."""

    predicted: int = 0
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def find_inputs(inputs: Sequence[str]) -> list[Path]:
    """Image files named directly, found under folders (recursively) or matched by globs, in order,
    each once. A name that matches nothing is an error naming it."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
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
        raise PipelineError(f"no images found in {', '.join(inputs)} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return unique


def _batches(paths: list[Path], predictor: Predictor, size: int,
             report: PredictReport) -> Iterator[tuple[list[Path], list[tuple[int, int]], torch.Tensor]]:
    """Decoded and prepared inputs in batches; unreadable ones go into ``report.failed``."""
    batch: list[tuple[Path, tuple[int, int], torch.Tensor]] = []
    for path in paths:
        try:
            image = open_image(path)
        except PipelineError as exc:
            report.failed.append((str(path), str(exc).removeprefix(f"{path}: ")))
            continue
        batch.append((path, image.size, predictor.prepare(image)))
        if len(batch) == size:
            yield [b[0] for b in batch], [b[1] for b in batch], torch.stack([b[2] for b in batch])
            batch = []
    if batch:
        yield [b[0] for b in batch], [b[1] for b in batch], torch.stack([b[2] for b in batch])


def _png(array: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def predict_files(predictor: Predictor, inputs: Sequence[str], out: Path, *, batch_size: int = 16,
                  overlays: bool = False) -> PredictReport:
    """Predict every input and write the outputs under ``out``; returns what was done."""
    paths = find_inputs(inputs)
    stems = [p.stem for p in paths]
    if predictor.task == "segmentation" and len(set(stems)) != len(stems):
        twice = sorted({s for s in stems if stems.count(s) > 1})
        raise PipelineError(f"inputs share a file stem ({', '.join(twice[:5])}); masks are named by stem, so "
                            "predict them into separate output folders")
    names = predictor.info.classes if predictor.task == "classification" else None
    report, rows = PredictReport(), []
    bar = tqdm(total=len(paths), desc="predict", unit="image", disable=None, file=sys.stderr)
    for batch_paths, sizes, batch in _batches(paths, predictor, batch_size, report):
        logits = predictor.logits(batch)
        classes = predictor.classes(logits)
        if predictor.task == "classification":
            probs = predictor.probabilities(logits).cpu()
            for path, label, p in zip(batch_paths, classes.cpu().tolist(), probs):
                rows.append([str(path), names[label], f"{p[label].item():.6f}", *(f"{v:.6f}" for v in p.tolist())])
        else:
            for path, size, mask, image in zip(batch_paths, sizes, classes, batch):
                full = mask_at_size(mask, size)
                write_bytes(out / "masks" / f"{path.stem}.png", _png(full))
                report.written.append(out / "masks" / f"{path.stem}.png")
                if overlays:
                    picture = plots.colour_mask(image.permute(1, 2, 0).numpy(), mask.to("cpu", torch.uint8).numpy())
                    write_bytes(out / "overlays" / f"{path.stem}.png", _png(picture))
                    report.written.append(out / "overlays" / f"{path.stem}.png")
        report.predicted += len(batch_paths)
        bar.update(len(batch_paths))
    bar.update(len(report.failed))
    bar.close()
    if names is not None and rows:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["path", "predicted", "probability", *(f"p_{name}" for name in names)])
        writer.writerows(rows)
        write_text(out / "predictions.csv", buffer.getvalue())
        report.written.append(out / "predictions.csv")
    return report
