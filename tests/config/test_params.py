"""Validation of params files: every problem at once, each with line, column, key and a useful hint."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pipeline.config.errors import ConfigError
from pipeline.config.params import flatten, load_params
from tests.conftest import REPO, write_params

SHIPPED = sorted([REPO / "params.yaml", *(REPO / "configs").glob("*.yaml")])


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_params_file_validates(path, tmp_path):
    # configs/*.yaml are used by copying them over params.yaml: validate them from the repo root.
    params = load_params(write_params(tmp_path / "params.yaml", path, link=True))
    assert params.get("data.task") in ("segmentation", "classification", "multilabel")


def test_defaults_are_filled(tmp_path):
    path = write_params(
        tmp_path / "params.yaml",
        link=True,
        replace={"  grad_clip: 1.0                # max gradient norm (null: off)\n": ""},
    )
    params = load_params(path)
    assert params.get("train.grad_clip") is None  # the schema's default
    assert params.get("train.epochs") == yaml.safe_load((REPO / "params.yaml").read_text())["train"]["epochs"]


def _problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_params(path)
    return str(info.value).splitlines()


def test_each_kind_of_error_located(tmp_path):
    path = write_params(
        tmp_path / "params.yaml",
        link=True,
        replace={
            "  task: segmentation ": "  task: segmentaton  ",  # enum typo
            "  epochs: ": "  epochs: many #",  # wrong type
            "  batch_size: 16": "  batch_size: 0",  # out of range
            "  seed: 42 ": "  sed: 42  ",  # unknown key
        },
    )
    text = path.read_text()
    lines = _problems(path)
    name = str(tmp_path / "params.yaml")
    expected = {
        "data.task": (_line_of(text, "task: segmentaton"), 9, "did you mean 'segmentation'?"),
        "train.epochs": (_line_of(text, "epochs: many"), 11, "expected integer, got string 'many'"),
        "train.batch_size": (_line_of(text, "batch_size: 0"), 15, "less than the minimum of 1"),
        "split.sed": (_line_of(text, "sed: 42"), 3, "unknown key (did you mean 'seed'?)"),
    }
    assert len(lines) == len(expected), lines
    for key, (line, col, hint) in expected.items():
        matching = [entry for entry in lines if entry.startswith(f"{name}:{line}:{col}: {key}: ")]
        assert matching and hint in matching[0], (key, lines)


def test_duplicate_keys_and_schema_errors_together(tmp_path):
    lines = _problems(
        write_params(
            tmp_path / "params.yaml",
            link=True,
            replace={"  epochs: ": "  epochs: 3\n  epochs: ", "  workers: auto": "  workers: -1"},
        )
    )
    assert any("train.epochs: duplicate key" in line for line in lines)
    assert any("train.workers" in line and "minimum" in line for line in lines)


def test_missing_section_named(tmp_path):
    lines = _problems(write_params(tmp_path / "params.yaml", link=True, drop=["tracking"]))
    assert any(re.search(r":1:1: tracking: missing", line) for line in lines), lines


def test_unknown_top_level_section(tmp_path):
    lines = _problems(write_params(tmp_path / "params.yaml", link=True, evalute={}))
    assert any("evalute: unknown key (did you mean 'evaluate'?)" in line for line in lines)


def test_view_refuses_undeclared_keys(tmp_path):
    params = load_params(write_params(tmp_path / "params.yaml", link=True))
    view = params.view(["data.task", "loss"], stage="demo")
    assert view["data.task"] == "segmentation"
    assert view["loss.name"] == params.get("loss.name")
    with pytest.raises(KeyError, match=r"demo reads 'data\.root' but does not declare it"):
        view["data.root"]
    with pytest.raises(KeyError):
        view["data"]  # the whole section would be more than declared


def test_view_returns_copies(tmp_path):
    params = load_params(write_params(tmp_path / "params.yaml", link=True))
    view = params.view(["loss"])
    view["loss"]["name"] = "mutated"
    assert params.get("loss.name") != "mutated"


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {"a.b": 1, "a.c.d": [1, 2], "e": {}}
