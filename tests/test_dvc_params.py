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


def _stage_imports(module: str, seen: set[str] | None = None) -> set[str]:
    """Every ``stages.*`` module ``module`` imports, transitively (read from source, not executed)."""
    import ast

    seen = set() if seen is None else seen
    tree = ast.parse((REPO / (module.replace(".", "/") + ".py")).read_text())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            if name.startswith("stages.") and (REPO / (name.replace(".", "/") + ".py")).exists() and name not in seen:
                seen.add(name)
                _stage_imports(name, seen)
    return seen


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_stage_module_the_code_imports_is_a_dependency(name):
    """Editing a helper module (say stages/plots.py) must re-run the stages that use it."""
    stage = STAGES[name]
    module = stage["cmd"].split()[2]
    needed = {m.replace(".", "/") + ".py" for m in _stage_imports(module)}
    missing = sorted(needed - set(stage.get("deps", [])))
    assert not missing, f"{name}: dvc.yaml deps lack {missing}"
