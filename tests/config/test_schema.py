"""The schema itself: strict at every level and documented, so editors can complete and explain."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from pipeline.config.schema import ROOT_SCHEMA, SCHEMA_DIR, fill_defaults

FILES = sorted(SCHEMA_DIR.rglob("*.json"))


def _objects(node, where: str) -> Iterator[tuple[str, dict]]:
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node:
            yield where, node
        for key, value in node.items():
            yield from _objects(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _objects(value, f"{where}/{i}")


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_schema_file_is_valid_2020_12(path: Path):
    schema = json.loads(path.read_text())
    assert schema.get("$schema", "").endswith("2020-12/schema")
    jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_object_is_closed_and_every_key_described(path: Path):
    schema = json.loads(path.read_text())
    for where, obj in _objects(schema, path.name):
        assert obj.get("additionalProperties") is False, f"{where}: unknown keys must be rejected"
        for key, prop in obj["properties"].items():
            assert "description" in prop or "$ref" in prop, f"{where}/{key}: no description"


def test_defaults_fill_nested_sections():
    filled = fill_defaults({"train": {}, "augment": {"offline": {}}})
    assert filled["train"]["epochs"] >= 1
    assert filled["train"]["early_stopping"]["patience"] is None
    assert filled["augment"]["offline"]["enabled"] is False
    assert "data" not in filled  # required sections are never invented
    assert json.loads((SCHEMA_DIR / ROOT_SCHEMA).read_text())["additionalProperties"] is False
