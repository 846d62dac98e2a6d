"""``python -m pipeline predict``: a trained model on new images, no params.yaml needed.

Inputs are image files, folders (searched recursively) and globs, found and read by
:mod:`pipeline.inference.images`; the model is a :class:`~pipeline.inference.predictor.Predictor`. This
module checks the output folder and writes the results. Classification writes
``OUT/predictions.csv`` (path, predicted class, its probability, one probability column per class);
multilabel writes it as path, one ``p_<class>`` column per class, and ``labels`` (the predicted set,
names joined by ``;``, empty for none);
segmentation writes ``OUT/masks/<stem>.png``, class-index masks at each input's original size (a
model trained at native resolution predicts each whole image by tiles, one image at a time), and
with ``overlays`` ``OUT/overlays/<stem>.png``. Every file is written atomically. An input that cannot be
read is listed at the end with its reason; the others are still predicted.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from pipeline import plots
from pipeline.atomic import write_bytes
from pipeline.config.errors import PipelineError
from pipeline.config.schema import check_value
from pipeline.inference.images import find_inputs, read_batches
from pipeline.inference.predictor import Predictor, mask_at_size
from pipeline.overwrite import refuse_overwrite, writable_folder


@dataclass
class PredictReport:
    """What a run of predict did: the files it wrote and the inputs it could not read."""

    predicted: int = 0
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def outputs_of(task: str, out: Path, *, overlays: bool) -> list[Path]:
    """What predict writes under ``out`` for ``task``: the folders and file it may replace."""
    if task in ("classification", "multilabel"):
        return [out / "predictions.csv"]
    return [out / "masks"] + ([out / "overlays"] if overlays else [])


def predict_files(
    predictor: Predictor,
    inputs: Sequence[str],
    out: Path,
    *,
    batch_size: int = 16,
    overlays: bool = False,
    model: Path | None = None,
) -> PredictReport:
    """Predict every input and write the outputs under ``out``; returns what was done. Before any
    work: ``out`` must be a writable folder whose outputs neither are nor hold an input (nor
    ``model``, the file predicted with)."""
    check_value("sections/evaluate.schema.json#/properties/batch_size", batch_size, "--batch-size")
    writable_folder(out)
    report, rows = PredictReport(), []
    paths = find_inputs(inputs, report.failed)
    refuse_overwrite(
        outputs_of(predictor.task, out, overlays=overlays),
        [Path(i) for i in inputs if Path(i).exists()] + paths + ([model] if model else []),
    )
    stems = [p.stem for p in paths]
    if predictor.task == "segmentation" and len(set(stems)) != len(stems):
        twice = sorted({s for s in stems if stems.count(s) > 1})
        raise PipelineError(
            f"inputs share a file stem ({', '.join(twice[:5])}); masks are named by stem, so "
            "predict them into separate output folders"
        )
    names = predictor.info.classes if predictor.task in ("classification", "multilabel") else None
    bar = tqdm(total=len(paths) + len(report.failed), desc="predict", unit="image", disable=None, file=sys.stderr)
    for batch_paths, sizes, batch in read_batches(
        paths, predictor, 1 if predictor.tiled else batch_size, report.failed
    ):
        if predictor.tiled:  # the whole image by tiles, its mask at its own size
            path, image = batch_paths[0], batch[0]
            classes = predictor.whole_classes(predictor.whole_logits(image))  # where data.max_side shrank it, smaller
            _write(out / "masks" / f"{path.stem}.png", _png(mask_at_size(classes, sizes[0])), report)  # input's size
            if overlays:
                picture = plots.colour_mask(image.permute(1, 2, 0).numpy(), classes.to(torch.uint8).numpy())
                _write(out / "overlays" / f"{path.stem}.png", _png(picture), report)
            report.predicted += 1
            bar.update(1)
            continue
        logits = predictor.logits(batch)
        classes = predictor.classes(logits)
        if predictor.task == "multilabel":
            probs = predictor.probabilities(logits).cpu()
            for path, hot, p in zip(batch_paths, classes.cpu().tolist(), probs):
                chosen = ";".join(n for n, v in zip(names or [], hot) if v)
                rows.append([str(path), *(f"{v:.6f}" for v in p.tolist()), chosen])
        elif predictor.task == "classification":
            probs = predictor.probabilities(logits).cpu()
            assert names is not None  # a classifier's recipe names its classes
            for path, label, p in zip(batch_paths, classes.cpu().tolist(), probs):
                rows.append([str(path), names[label], f"{p[label].item():.6f}", *(f"{v:.6f}" for v in p.tolist())])
        else:
            for path, size, mask, image in zip(batch_paths, sizes, classes, batch):
                full = mask_at_size(mask, size)
                _write(out / "masks" / f"{path.stem}.png", _png(full), report)
                if overlays:
                    picture = plots.colour_mask(image.permute(1, 2, 0).numpy(), mask.to("cpu", torch.uint8).numpy())
                    _write(out / "overlays" / f"{path.stem}.png", _png(picture), report)
        report.predicted += len(batch_paths)
        bar.update(len(batch_paths))
    bar.update(len(report.failed))
    bar.close()
    if names is not None and rows:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        if predictor.task == "multilabel":
            writer.writerow(["path", *(f"p_{name}" for name in names), "labels"])
        else:
            writer.writerow(["path", "predicted", "probability", *(f"p_{name}" for name in names)])
        writer.writerows(rows)
        _write(out / "predictions.csv", buffer.getvalue().encode("utf-8"), report)
    return report


def _write(path: Path, data: bytes, report: PredictReport) -> None:
    """One output, atomically; a place that refuses it (full disk, read-only) is one line naming it."""
    try:
        write_bytes(path, data)
    except OSError as exc:
        raise PipelineError(f"--out: cannot write {path} ({exc.strerror or exc})") from None
    report.written.append(path)
