"""The loader keeps positions and reports what PyYAML would hide or crash on."""

from __future__ import annotations

from pathlib import Path

from pipeline.config.yaml_source import dotted, load_yaml


def _load(tmp_path: Path, text: str):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return load_yaml(path)


def test_positions_of_keys_and_values(tmp_path):
    data, marks, problems = _load(tmp_path, "a:\n  b: 1\n  c:\n    - x\n    - {d: 2}\n")
    assert problems == []
    assert data == {"a": {"b": 1, "c": ["x", {"d": 2}]}}
    assert marks.keys[("a", "b")] == (2, 3)
    assert marks.values[("a", "b")] == (2, 6)
    assert marks.values[("a", "c", 1)] == (5, 7)
    assert marks.keys[("a", "c", 1, "d")] == (5, 8)
    # an absent key falls back to its nearest ancestor
    assert marks.locate(("a", "c", 1, "zzz")) == (5, 7)


def test_duplicate_key_reported_with_both_lines(tmp_path):
    data, _, problems = _load(tmp_path, "a:\n  b: 1\n  b: 2\n")
    assert data == {"a": {"b": 1}}
    assert len(problems) == 1
    p = problems[0]
    assert (p.key, p.line, p.column) == ("a.b", 3, 3)
    assert "duplicate key" in p.message and "line 2" in p.message


def test_tab_indentation(tmp_path):
    data, _, problems = _load(tmp_path, "a:\n\tb: 1\n")
    assert data is None
    assert problems[0].line == 2 and "tab" in problems[0].message


def test_not_yaml(tmp_path):
    data, _, problems = _load(tmp_path, "a: [1, 2\nb: 3\n")
    assert data is None
    assert problems[0].line == 2 and "not valid YAML" in problems[0].message


def test_top_level_list_and_scalar(tmp_path):
    _, _, problems = _load(tmp_path, "- a\n- b\n")
    assert "top level is a list" in problems[0].message
    _, _, problems = _load(tmp_path, "just words\n")
    assert "top level is a str" in problems[0].message


def test_empty_and_comment_only(tmp_path):
    for text in ("", "# only a comment\n"):
        data, _, problems = _load(tmp_path, text)
        assert data is None and "empty" in problems[0].message


def test_missing_file_and_directory(tmp_path):
    _, _, problems = load_yaml(tmp_path / "nope.yaml")
    assert "file not found" in problems[0].message
    _, _, problems = load_yaml(tmp_path)
    assert "directory" in problems[0].message


def test_several_documents(tmp_path):
    _, _, problems = _load(tmp_path, "a: 1\n---\nb: 2\n")
    assert problems[0].line == 3 and "several YAML documents" in problems[0].message


def test_dotted():
    assert dotted(("augment", "train", 2, "Affine")) == "augment.train[2].Affine"
    assert dotted(()) == ""
