"""Classification labels from a file: ``data.labels: labels.csv`` with columns ``path,label`` (paths
relative to data.root), the common competition layout, instead of one folder per class.

``validate`` and the split stage read the file with the same function; every problem names the file
and its line. A listed image is known by its path with symlinks followed, relative to data.root
(:func:`pipeline.data.files.data_path_key`): ``img/a.png`` and ``./img/a.png`` are one image, listed
once, and the rows (so the manifest) hold that one spelling.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Iterator
from pathlib import Path

from pipeline.config.errors import PipelineError, Problem
from pipeline.config.params import Params
from pipeline.data.files import IMAGE_EXTENSIONS, data_path_key

COLUMNS = ["path", "label"]

MAX_PROBLEMS = 20  # shown at once; the rest are counted


def _shown(text: str, limit: int = 120) -> str:
    """A field as a message shows it: a huge one cut short (the message must stay readable)."""
    return text if len(text) <= limit else f"{text[: limit // 2]}... ({len(text)} characters)"


def _decoded(csv_path: Path) -> str:
    """The file's text: UTF-8, a leading byte-order mark allowed. A byte that is not UTF-8 (a file
    saved as Latin-1 or Windows-1252) is reported at its line and column, not as a decoding traceback."""
    try:
        data = csv_path.read_bytes().removeprefix(codecs.BOM_UTF8)
    except OSError as exc:
        raise PipelineError(f"data.labels: {csv_path}: cannot read ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = len(re.split(rb"\r\n|\r|\n", before))
        column = exc.start - max(before.rfind(b"\n"), before.rfind(b"\r"))
        raise PipelineError(
            f"{csv_path}:{line}: byte 0x{data[exc.start]:02x} at column {column} is not UTF-8; "
            f"a labels file must be UTF-8 text (re-save it as UTF-8)"
        ) from None


def _records(csv_path: Path, text: str, problems: list[str]) -> Iterator[tuple[int, list[str]]]:
    """``(first line, fields)`` of each CSV record. A record the csv module cannot read (a field over
    its size limit, most often an unclosed quote running to the end of the file) is added to
    ``problems`` at the line where it starts, and ends the reading: nothing after it can be trusted."""
    reader = csv.reader(io.StringIO(text, newline=""))
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            if "field larger than field limit" in str(exc):
                why = f"a field longer than {csv.field_size_limit()} characters"
                if reader.line_num > start:
                    why += f' (running to line {reader.line_num}: is a quote (") left open?)'
            else:
                why = f"not readable as CSV ({exc})"
            problems.append(f"{csv_path}:{start}: {why}")
            return
        yield start, row


def _file_problem(root: Path, real_root: Path, rel: str) -> str | None:
    """Why the listed ``rel`` is not an image file inside the data root; None when it is."""
    if Path(rel).suffix.lower() not in IMAGE_EXTENSIONS:
        return f"{_shown(rel)}: unsupported file type (supported: {', '.join(sorted(IMAGE_EXTENSIONS))})"
    try:
        if not (root / rel).is_file():
            return f"{_shown(rel)} does not exist under {root}"
    except OSError as exc:  # a name too long for the file system, say
        return f"{_shown(rel)}: cannot be read ({exc.strerror or exc})"
    return None


def _identity(real_root: Path, rel: str) -> tuple[str | None, str]:
    """``(problem, key)``: the listed path's identity (:func:`data_path_key`), or why it has none."""
    try:
        return None, data_path_key(real_root, rel)
    except ValueError:
        return f"{_shown(rel)} lies outside data.root", ""
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
        return f"{_shown(rel)}: cannot be resolved ({getattr(exc, 'strerror', None) or exc})", ""


def read_labels(csv_path: Path, root: Path, *, check_files: bool = True) -> list[tuple[str, str]]:
    """``[(image path, label)]`` in file order, each path as :func:`data_path_key` spells it.
    Problems (a file that is not UTF-8 CSV, other columns, an empty field, an image listed twice
    under any spelling, a path outside the root, and with ``check_files`` a file that is not there
    or not an image type) are collected and raised together, each as ``labels.csv:LINE: what``."""
    if not csv_path.is_file():
        raise PipelineError(f"data.labels: {csv_path} does not exist")
    text = _decoded(csv_path)
    problems: list[str] = []
    rows: list[tuple[str, str]] = []
    seen: dict[str, tuple[int, str]] = {}
    real_root = root.resolve()
    records = _records(csv_path, text, problems)
    first = next(records, None)
    if first is None:
        raise PipelineError(problems[0] if problems else f"{csv_path}:1: empty file; expected the header path,label")
    header = first[1]
    if [h.strip() for h in header] != COLUMNS:
        raise PipelineError(f"{csv_path}:1: columns must be path,label (found {_shown(','.join(header))})")
    for line, row in records:
        where = f"{csv_path}:{line}"
        if not any(field.strip() for field in row):
            continue  # a blank line
        if len(row) != 2:
            problems.append(f"{where}: expected 2 fields (path,label), found {len(row)}")
            continue
        rel, label = row[0].strip(), row[1].strip()
        if not rel or not label:
            problems.append(f"{where}: empty {'path' if not rel else 'label'}")
            continue
        problem = _file_problem(root, real_root, rel) if check_files else None
        if problem is None:
            problem, key = _identity(real_root, rel)
        if problem is not None:
            problems.append(f"{where}: {problem}")
            continue
        if key in seen:
            first_line, first_label = seen[key]
            name = f"{key} is" if rel == key else f"{_shown(rel)} is {key},"
            other = f": labelled {first_label!r} there, {label!r} here" if label != first_label else ""
            problems.append(f"{where}: {name} listed again (first on line {first_line}){other}")
            continue
        seen[key] = (line, label)
        rows.append((key, label))
    if problems:
        shown = problems[:MAX_PROBLEMS]
        if len(problems) > MAX_PROBLEMS:
            shown.append(f"... and {len(problems) - MAX_PROBLEMS} more")
        raise PipelineError("\n".join(shown))
    if not rows:
        raise PipelineError(f"{csv_path}: no labelled images")
    return rows


def check_labels(params: Params) -> list[Problem]:
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
