"""Classification labels from a file: ``data.labels: labels.csv`` with columns ``path,label`` (paths
relative to data.root), the common competition layout, instead of one folder per class.

``validate`` and the split stage read the file with the same function; every problem names the file
and its line.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from pipeline.config.checks import semantic_check
from pipeline.config.errors import PipelineError, Problem
from pipeline.data.files import IMAGE_EXTENSIONS, inside

COLUMNS = ["path", "label"]


def read_labels(csv_path: Path, root: Path, *, check_files: bool = True) -> list[tuple[str, str]]:
    """``[(relative image path, label)]`` in file order. Problems (a missing file, other columns, an
    empty field, a path listed twice, an image that is not there or lies outside the root) are
    collected and raised together, each as ``labels.csv:LINE: what``."""
    if not csv_path.is_file():
        raise PipelineError(f"data.labels: {csv_path} does not exist")
    problems: list[str] = []
    rows: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    real_root = root.resolve()
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise PipelineError(f"{csv_path}:1: empty file; expected the header path,label")
        if [h.strip() for h in header] != COLUMNS:
            raise PipelineError(f"{csv_path}:1: columns must be path,label (found {','.join(header)})")
        for row in reader:
            where = f"{csv_path}:{reader.line_num}"
            if not any(field.strip() for field in row):
                continue  # a blank line
            if len(row) != 2:
                problems.append(f"{where}: expected 2 fields (path,label), found {len(row)}")
                continue
            rel, label = row[0].strip(), row[1].strip()
            if not rel or not label:
                problems.append(f"{where}: empty {'path' if not rel else 'label'}")
                continue
            if rel in seen:
                problems.append(f"{where}: {rel} is listed again (first on line {seen[rel]})")
                continue
            seen[rel] = reader.line_num
            if check_files:
                path = root / rel
                if Path(rel).suffix.lower() not in IMAGE_EXTENSIONS:
                    problems.append(f"{where}: {rel}: unsupported file type (supported: "
                                    f"{', '.join(sorted(IMAGE_EXTENSIONS))})")
                    continue
                if not path.is_file():
                    problems.append(f"{where}: {rel} does not exist under {root}")
                    continue
                if not inside(path, real_root):
                    problems.append(f"{where}: {rel} lies outside data.root")
                    continue
            rows.append((rel, label))
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise PipelineError("\n".join(shown))
    if not rows:
        raise PipelineError(f"{csv_path}: no labelled images")
    return rows


@semantic_check("data.task", "data.root", "data.labels")
def _check_labels(params: Any) -> list[Problem]:
    """data.labels is for classification, and the file reads (with the split stage's own reader)."""
    name = params.get("data.labels")
    if name is None:
        return []
    if params.get("data.task") != "classification":
        return [Problem("data.labels", "a labels file is for classification; segmentation reads masks")]
    root = params.resolve_path(params.get("data.root"))
    if not root.is_dir():
        return []  # data.root's own check says so
    try:
        read_labels(root / name, root)
    except PipelineError as exc:
        return [Problem("data.labels", str(exc).removeprefix("data.labels: "))]
    return []
