"""Classification labels from a file: ``data.labels: labels.csv`` with columns ``path,label`` (paths
relative to data.root), the common competition layout, instead of one folder per class. Multi-label
data (``data.task: multilabel``) has the columns ``path,labels``: the class names present in the image
separated by ``;`` (``circle;square``), an empty field meaning none of them.

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
from typing import Any

from pipeline.config.errors import PipelineError, Problem
from pipeline.config.params import Params
from pipeline.data.files import IMAGE_EXTENSIONS, data_path_key

COLUMNS = ["path", "label"]
MULTILABEL_COLUMNS = ["path", "labels"]
SEPARATOR = ";"  # between the class names of one multilabel row

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


def _label_set(field: str) -> tuple[str | None, tuple[str, ...]]:
    """``(problem, names)`` of a multilabel field: ``;``-separated class names, sorted, each once; an
    empty field is the empty set, an empty name between separators is a problem."""
    if not field:
        return None, ()
    names = [name.strip() for name in field.split(SEPARATOR)]
    if not all(names):
        return f"an empty class name in {_shown(field)!r} (names are separated by {SEPARATOR!r})", ()
    return None, tuple(sorted(set(names)))


def read_labels(csv_path: Path, root: Path, *, check_files: bool = True) -> list[tuple[str, str]]:
    """``[(image path, label)]`` in file order, each path as :func:`data_path_key` spells it.
    Problems (a file that is not UTF-8 CSV, other columns, an empty field, an image listed twice
    under any spelling, a path outside the root, and with ``check_files`` a file that is not there
    or not an image type) are collected and raised together, each as ``labels.csv:LINE: what``."""
    return [(rel, label) for rel, label in _read(csv_path, root, check_files=check_files, multilabel=False)]


def read_multilabels(csv_path: Path, root: Path, *, check_files: bool = True) -> list[tuple[str, tuple[str, ...]]]:
    """``[(image path, class names)]`` of a ``path,labels`` file (:data:`MULTILABEL_COLUMNS`), with the
    checks of :func:`read_labels`; an empty labels field is an image with none of the classes."""
    return [(rel, names) for rel, names in _read(csv_path, root, check_files=check_files, multilabel=True)]


def _read(csv_path: Path, root: Path, *, check_files: bool, multilabel: bool) -> list[tuple[str, Any]]:
    """The rows of either layout: ``label`` a string, or (multilabel) a tuple of class names."""
    columns = MULTILABEL_COLUMNS if multilabel else COLUMNS
    spelled = ",".join(columns)
    if not csv_path.is_file():
        raise PipelineError(f"data.labels: {csv_path} does not exist")
    text = _decoded(csv_path)
    problems: list[str] = []
    rows: list[tuple[str, Any]] = []
    seen: dict[str, tuple[int, Any]] = {}
    real_root = root.resolve()
    records = _records(csv_path, text, problems)
    first = next(records, None)
    if first is None:
        raise PipelineError(problems[0] if problems else f"{csv_path}:1: empty file; expected the header {spelled}")
    header = first[1]
    if [h.strip() for h in header] != columns:
        other = MULTILABEL_COLUMNS if not multilabel else COLUMNS
        hint = ""
        if [h.strip() for h in header] == other:
            hint = (
                "; path,labels is the multilabel layout (data.task: multilabel)"
                if not multilabel
                else "; path,label is the single-label layout (data.task: classification)"
            )
        raise PipelineError(f"{csv_path}:1: columns must be {spelled} (found {_shown(','.join(header))}){hint}")
    for line, row in records:
        where = f"{csv_path}:{line}"
        if not any(field.strip() for field in row):
            continue  # a blank line
        if len(row) == 1 and multilabel:
            row = [*row, ""]  # "a.png" alone: no trailing comma, no labels
        if len(row) != 2:
            problems.append(f"{where}: expected 2 fields ({spelled}), found {len(row)}")
            continue
        rel, field = row[0].strip(), row[1].strip()
        if not rel or (not field and not multilabel):
            problems.append(f"{where}: empty {'path' if not rel else 'label'}")
            continue
        label: Any = field
        if multilabel:
            problem, label = _label_set(field)
            if problem is not None:
                problems.append(f"{where}: {problem}")
                continue
        problem = _file_problem(root, real_root, rel) if check_files else None
        if problem is None:
            problem, key = _identity(real_root, rel)
        if problem is not None:
            problems.append(f"{where}: {problem}")
            continue
        if key in seen:
            first_line, first_label = seen[key]
            who = f"{key} is" if rel == key else f"{_shown(rel)} is {key},"
            shown: Any = (lambda v: SEPARATOR.join(v)) if multilabel else str
            relabelled = (
                f": labelled {shown(first_label)!r} there, {shown(label)!r} here" if label != first_label else ""
            )
            problems.append(f"{where}: {who} listed again (first on line {first_line}){relabelled}")
            continue
        seen[key] = (line, label)
        rows.append((key, label))
    if problems:
        shown_problems = problems[:MAX_PROBLEMS]
        if len(problems) > MAX_PROBLEMS:
            shown_problems.append(f"... and {len(problems) - MAX_PROBLEMS} more")
        raise PipelineError("\n".join(shown_problems))
    if not rows:
        raise PipelineError(f"{csv_path}: no labelled images")
    return rows


def check_labels(params: Params) -> list[Problem]:
    """data.labels is for classification (multilabel needs it), and the file reads (with the split stage's own reader)."""
    name, task = params.get("data.labels"), params.get("data.task")
    if name is None:
        if task == "multilabel":
            return [Problem("data.labels", "multilabel data needs a labels file: a CSV path,labels under data.root")]
        return []
    if task == "segmentation":
        return [Problem("data.labels", "a labels file is for classification; segmentation reads masks")]
    root = params.resolve_path(params.get("data.root"))
    if not root.is_dir():
        return []  # data.root's own check says so
    try:
        _read(root / name, root, check_files=True, multilabel=task == "multilabel")
    except PipelineError as exc:
        return [Problem("data.labels", str(exc).removeprefix("data.labels: "))]
    return []
