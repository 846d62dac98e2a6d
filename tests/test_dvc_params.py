"""Each stage's `params:` list in dvc.yaml names exactly the keys the stage reads (its PARAMS), so
DVC re-runs what changed and nothing else; and each key exists in params.yaml."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_params

REPO = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_params_match_module(name):
    stage = STAGES[name]
    cmd = stage["cmd"]
    assert cmd.startswith("python -m stages."), cmd
    module = importlib.import_module(cmd.split()[2])
    declared = stage.get("params", [])
    assert len(declared) == len(set(declared)), f"{name}: a key listed twice"
    assert sorted(module.PARAMS) == sorted(declared), f"{name}: module PARAMS and dvc.yaml params differ"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_params_exist_in_params_yaml(name):
    params = load_params(REPO / "params.yaml", semantic=False)
    for key in STAGES[name].get("params", []):
        assert params.has(key), f"{name}: {key} is not in params.yaml"
        assert _in_file(key), f"{name}: {key} must be written in params.yaml itself (DVC reads the file)"


def _in_file(key: str) -> bool:
    node = yaml.safe_load((REPO / "params.yaml").read_text())
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_code_is_a_dependency(name):
    stage = STAGES[name]
    module_file = stage["cmd"].split()[2].replace(".", "/") + ".py"
    assert module_file in stage.get("deps", []), f"{name}: its own module is not a dep"
