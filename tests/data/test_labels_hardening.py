"""Data files the user wrote, read safely: one identity per listed image (however its path is spelled),
labels.csv that is not UTF-8 or holds a huge field, a ``split.group_by`` pattern that would backtrack
for hours, and a k-fold split that leaves a fold empty. Each is refused with the file and line or the
dotted key at fault; none raises a traceback or writes anything."""

from __future__ import annotations

import csv
import importlib
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config.errors import PipelineError
from pipeline.data.assign import assign_folds, group_by_problem, group_keys
from pipeline.data.labels import read_labels
from pipeline.data.manifest import SPLITS
from pipeline.data.split import build_manifest
from tests.conftest import make_workspace, write_params

FRACTIONS = {"train": 0.34, "val": 0.33, "test": 0.33}
CLASSIFY = {
    "data.task": "classification",
    "data.root": "data",
    "data.labels": "labels.csv",
    "model.source": "timm",
    "model.name": "test_resnet",
    "model.pretrained": False,
    "loss": {"name": "cross_entropy", "params": {}, "terms": []},
}
SPLIT_STAGE_KEYS = importlib.import_module("stages.split").PARAMS


def problems_by_key(path: Path) -> dict[str, str]:
    """{dotted key: message} of what the split stage's validation (the checks of the keys it reads,
    as ``validate`` runs them) reports for ``path``; each problem located at a line. (The checks of
    every section would build a model: seconds, and no other answer here.)"""
    from pipeline.config.errors import ConfigError
    from pipeline.config.params import load_params

    try:
        load_params(path, keys=SPLIT_STAGE_KEYS)
    except ConfigError as exc:
        assert all(p.line is not None for p in exc.problems), exc.problems
        return {p.key: p.message for p in exc.problems}
    return {}


def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(path)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """tmp_path/data with img/a.png .. img/f.png (distinct contents) and img/link.png -> a.png."""
    root = tmp_path / "data"
    for seed, name in enumerate("abcdef"):
        _png(root / "img" / f"{name}.png", seed)
    (root / "img" / "link.png").symlink_to("a.png")
    return root


def _write(root: Path, content: str | bytes) -> Path:
    path = root / "labels.csv"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def _refused(csv_path: Path, root: Path) -> str:
    with pytest.raises(PipelineError) as caught:
        read_labels(csv_path, root)
    return str(caught.value)


def _validated(tmp_path: Path) -> str:
    """What ``validate`` says at data.labels for tmp_path/data/labels.csv."""
    return problems_by_key(write_params(tmp_path / "params.yaml", **CLASSIFY))["data.labels"]


# --- one identity per listed image -----------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["./img/a.png", "img//a.png", "img/../img/a.png", "img/./a.png", "img/link.png"])
def test_one_image_under_two_spellings_is_listed_twice(data: Path, tmp_path: Path, spelling: str):
    csv_path = _write(data, f"path,label\nimg/a.png,circle\nimg/b.png,square\n{spelling},square\n")
    expected = (
        f"{csv_path}:4: {spelling} is img/a.png, listed again (first on line 2): labelled 'circle' there, 'square' here"
    )
    assert _refused(csv_path, data) == expected
    with pytest.raises(PipelineError, match="listed again"):  # the split stage reads it the same way
        build_manifest(
            data,
            task="classification",
            root_as_written="data",
            num_classes=None,
            seed=0,
            fractions=FRACTIONS,
            stratify=True,
            labels_csv=csv_path,
        )
    assert _validated(tmp_path) == expected  # and so does validate


def test_the_same_spelling_twice_keeps_the_short_message(data: Path):
    csv_path = _write(data, "path,label\nimg/a.png,circle\nimg/a.png,circle\n")
    assert _refused(csv_path, data) == f"{csv_path}:3: img/a.png is listed again (first on line 2)"


def test_rows_and_the_manifest_hold_one_spelling(data: Path):
    csv_path = _write(
        data,
        "path,label\n./img/a.png,x\nimg//b.png,y\nimg/../img/c.png,x\n"
        "img/./d.png,y\n/" + str(data / "img" / "e.png").lstrip("/") + ",x\nimg/f.png,y\n",
    )
    expected = [
        ("img/a.png", "x"),
        ("img/b.png", "y"),
        ("img/c.png", "x"),
        ("img/d.png", "y"),
        ("img/e.png", "x"),
        ("img/f.png", "y"),
    ]
    assert read_labels(csv_path, data) == expected
    manifest = build_manifest(
        data,
        task="classification",
        root_as_written="data",
        num_classes=None,
        seed=0,
        fractions=FRACTIONS,
        stratify=True,
        labels_csv=csv_path,
    )
    assert sorted(e["image"] for s in SPLITS for e in manifest["splits"][s]) == [rel for rel, _ in expected]


def test_a_symlink_is_known_by_its_target(data: Path):
    csv_path = _write(data, "path,label\nimg/link.png,x\nimg/b.png,y\n")
    assert read_labels(csv_path, data) == [("img/a.png", "x"), ("img/b.png", "y")]


def test_a_path_leading_outside_the_root_is_refused(data: Path, tmp_path: Path):
    _png(tmp_path / "outside.png", 9)
    csv_path = _write(data, "path,label\nimg/a.png,x\n../outside.png,y\nimg/../../outside.png,y\n")
    assert _refused(csv_path, data) == (
        f"{csv_path}:3: ../outside.png lies outside data.root\n"
        f"{csv_path}:4: img/../../outside.png lies outside data.root"
    )


# --- labels.csv: encoding and huge fields ----------------------------------------------------------


@pytest.mark.parametrize(
    "content, line, column",
    [
        (b"path,label\nimg/a.png,x\ncaf\xe9.png,x\n", 3, 4),
        (b"\xef\xbb\xbfpath,label\r\nimg/a.png,x\r\nimg/b.png,\xe9t\xe9\r\n", 3, 11),  # BOM, CRLF
        (b"pa\xffth,label\nimg/a.png,x\n", 1, 3),
    ],
)
def test_a_byte_that_is_not_utf8_is_located(data: Path, tmp_path: Path, content: bytes, line: int, column: int):
    csv_path = _write(data, content)
    bad = next(b for b in content.removeprefix(b"\xef\xbb\xbf") if b >= 0x80)
    expected = (
        f"{csv_path}:{line}: byte 0x{bad:02x} at column {column} is not UTF-8; "
        f"a labels file must be UTF-8 text (re-save it as UTF-8)"
    )
    assert _refused(csv_path, data) == expected
    assert _validated(tmp_path) == expected


def test_a_field_over_the_csv_limit_is_located(data: Path, tmp_path: Path):
    limit = csv.field_size_limit()
    csv_path = _write(data, "path,label\nimg/a.png,x\n" + "b" * (limit + 10) + ".png,y\nimg/c.png,x\n")
    expected = f"{csv_path}:3: a field longer than {limit} characters"
    assert _refused(csv_path, data) == expected
    assert _validated(tmp_path) == expected


def test_an_unclosed_quote_is_located_where_it_opens(data: Path):
    csv_path = _write(data, 'path,label\nimg/a.png,x\n"img/b.png,y\n' + "img/c.png,x\n" * 20000)
    message = _refused(csv_path, data)
    assert message.startswith(
        f"{csv_path}:3: a field longer than {csv.field_size_limit()} characters (running to line "
    ), message
    assert message.endswith(': is a quote (") left open?)'), message


def test_a_path_too_long_for_the_file_system_is_located(data: Path):
    long = "d" * 5000 + ".png"
    csv_path = _write(data, f"path,label\nimg/a.png,x\n{long},y\n")
    assert _refused(csv_path, data) == (
        f"{csv_path}:3: {'d' * 60}... (5004 characters): cannot be read (File name too long)"
    )


def test_the_split_stage_refuses_a_latin1_labels_file_without_a_traceback_or_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    params = make_workspace(tmp_path, task="classification", stages=(), images=2, **{"data.labels": "labels.csv"})
    first = next(p for p in sorted((tmp_path / "data").rglob("*.png")))
    rel = first.relative_to(tmp_path / "data").as_posix()
    csv_path = _write(tmp_path / "data", f"path,label\n{rel},x\n".encode() + b"caf\xe9.png,y\n")
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    capsys.readouterr()
    assert importlib.import_module("stages.split").main(["--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert f"data.labels: {csv_path}:3: byte 0xe9 at column 4 is not UTF-8" in err, err
    assert "Traceback" not in err, err
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == before


# --- split.group_by cannot hang --------------------------------------------------------------------

CATASTROPHIC = "^((?:a+)+)$"


@pytest.mark.parametrize(
    "pattern", [CATASTROPHIC, "(a|a)+$", "^(?:x(?:a|a))+(y)", "((?:a|ab)*)c", "(a?)*", "((?:\\w+\\s?)+)$", "(a{2,3})+"]
)
def test_patterns_that_backtrack_exponentially_are_refused_at_validate(tmp_path: Path, pattern: str):
    start = time.perf_counter()
    message = problems_by_key(write_params(tmp_path / "params.yaml", link=True, **{"split.group_by": pattern}))[
        "split.group_by"
    ]
    assert time.perf_counter() - start < 5  # validate loads the whole file; the check itself is microseconds
    assert message.startswith(f"'{pattern}' repeats a part that can match the same text in several ways"), message
    assert "backtracks through exponentially many ways" in message


def test_the_split_stage_refuses_it_too_before_matching_any_stem(tmp_path: Path):
    rels = [f"img/{'a' * 34}.png", f"img/{'a' * 34}1.png"]  # matching the second stem: 2^34 steps
    start = time.perf_counter()
    with pytest.raises(PipelineError, match=r"^split.group_by: '\^\(\(\?:a\+\)\+\)\$' repeats a part"):
        group_keys(rels, CATASTROPHIC)
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize(
    "pattern",
    [
        r"^(car\d+)_",
        r"(.*)_\d+",
        r"^(.+)_\d+$",
        r"((?:jpg|png)+)x",
        r"((?:a{3})+)",
        r"((?:\d+_)++)\d",
        r"^(?:(\w+)-)?slice\d+",
        "folder",
    ],
)
def test_ordinary_patterns_still_pass(pattern: str):
    assert group_by_problem(pattern) is None


def test_ordinary_patterns_still_group():
    rels = ["img/car1_01.png", "img/car1_02.png", "img/car22_01.png", "img/car22_07.png"]
    assert group_keys(rels, r"^(car\d+)_") == ["car1", "car1", "car22", "car22"]
    assert group_keys(rels, r"(.*)_\d+") == ["car1", "car1", "car22", "car22"]


def test_group_by_capture_groups_are_checked_by_the_stage_too():
    with pytest.raises(PipelineError, match=r"^split.group_by: '\^car\\d\+_' has 0 capture groups"):
        group_keys(["car1_01.png", "car2_01.png"], r"^car\d+_")


# --- k-fold: an empty part names a key that exists -------------------------------------------------


def test_a_fold_left_empty_names_split_folds():
    with pytest.raises(PipelineError) as caught:
        assign_folds([f"g{i}" for i in range(4)], [0] * 4, test_fraction=0.25, folds=5, fold=0, seed=0, stratify=False)
    assert str(caught.value) == (
        "split.folds = 5 leaves fold 3 empty: the 3 groups outside the test set cannot fill "
        "5 folds; lower split.folds (at most 3), lower split.fractions.test or add data"
    )


def test_an_empty_test_set_with_folds_names_split_fractions_test():
    with pytest.raises(PipelineError) as caught:
        assign_folds(
            [f"g{i}" for i in range(4)],
            [0] * 4,
            test_fraction=0.05,
            folds=2,
            fold=0,
            seed=0,
            stratify=False,
            unit="files",
        )
    assert str(caught.value) == (
        "split.fractions.test = 0.05 leaves the test split empty: 4 files x 0.05 = 0.20; raise the fraction or add data"
    )


def test_the_split_stage_names_split_folds_for_an_empty_fold(data: Path):
    csv_path = _write(data, "path,label\nimg/a.png,x\nimg/b.png,y\nimg/c.png,x\nimg/d.png,y\n")
    with pytest.raises(PipelineError, match=r"^split.folds = 5 leaves fold \d empty: the 3 files outside") as caught:
        build_manifest(
            data,
            task="classification",
            root_as_written="data",
            num_classes=None,
            seed=0,
            fractions={"train": 0.5, "val": 0.25, "test": 0.25},
            stratify=False,
            labels_csv=csv_path,
            folds=5,
            fold=0,
        )
    assert "split.fractions.fold" not in str(caught.value)


def test_a_test_set_that_takes_everything_with_folds_names_split_fractions_test():
    with pytest.raises(PipelineError) as caught:
        assign_folds(["a", "b"], [0, 0], test_fraction=0.9, folds=2, fold=0, seed=0, stratify=False)
    assert str(caught.value) == (
        "split.fractions.test = 0.9 leaves nothing outside the test set for the 2 folds "
        "(split.folds): 2 groups in all; lower split.fractions.test or add data"
    )
