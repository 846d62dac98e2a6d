"""Each stage's `params:` list in dvc.yaml names exactly the keys the stage reads (its PARAMS), so
DVC re-runs what changed and nothing else; and each key exists in params.yaml."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from pipeline.config.params import load_params
from tests.conftest import REPO

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


def _module_file(name: str) -> Path | None:
    for candidate in (REPO / (name.replace(".", "/") + ".py"), REPO / name.replace(".", "/") / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _stage_imports(module: str, seen: set[str] | None = None) -> set[str]:
    """Every ``stages.*``/``pipeline.*`` module ``module`` imports, transitively (read from source, not
    executed). ``pipeline.components`` (what validation registers, imported by the stage runner) is not
    followed: validating checks the params, it does not shape the outputs."""
    import ast

    seen = set() if seen is None else seen
    tree = ast.parse(_module_file(module).read_text())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            found = _module_file(name)
            if (
                name.split(".")[0] in ("stages", "pipeline")
                and name != "pipeline.components"
                and found is not None
                and found.read_text().strip()
                and name not in seen
            ):
                seen.add(name)
                _stage_imports(name, seen)
    return seen  # empty package __init__ files are left out: they hold no code


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_module_the_code_imports_is_a_dependency(name):
    """Editing a library module (say pipeline/plots.py) must re-run the stages that use it."""
    stage = STAGES[name]
    module = stage["cmd"].split()[2]
    deps = [str(d) for d in stage.get("deps", [])]
    needed = {_module_file(m).relative_to(REPO).as_posix() for m in _stage_imports(module)}
    missing = sorted(f for f in needed if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps))
    assert not missing, f"{name}: dvc.yaml deps lack {missing}"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_no_stage_depends_on_code_it_does_not_import(name):
    """A dep on a module the stage never imports would re-run it for nothing."""
    stage = STAGES[name]
    needed = {_module_file(m).relative_to(REPO).as_posix() for m in _stage_imports(stage["cmd"].split()[2])}
    code = [d for d in stage.get("deps", []) if str(d).startswith(("pipeline", "stages"))]
    own = stage["cmd"].split()[2].replace(".", "/") + ".py"
    idle = [d for d in code if d != own and not any(f == d or f.startswith(d.rstrip("/") + "/") for f in needed)]
    assert not idle, f"{name}: dvc.yaml deps on code the stage does not import: {idle}"


def _declared_outputs(stage: dict) -> set[str]:
    return {
        next(iter(o)) if isinstance(o, dict) else o
        for kind in ("outs", "metrics", "plots")
        for o in stage.get(kind, [])
    }


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_outputs_are_declared_once(name):
    """pipeline/outputs.py is where the code finds each output; dvc.yaml must cache the same paths."""
    from pipeline import outputs

    assert _declared_outputs(STAGES[name]) == {p.as_posix() for p in outputs.BY_STAGE[name]}


def test_every_stage_has_its_outputs_declared():
    from pipeline import outputs

    assert set(outputs.BY_STAGE) == set(STAGES)


def test_every_stage_module_is_a_dvc_stage():
    """stages/ holds DVC stages only: each module is some stage's cmd."""
    modules = {p.stem for p in (REPO / "stages").glob("*.py") if p.name != "__init__.py"}
    assert modules == {STAGES[name]["cmd"].split()[2].split(".")[1] for name in STAGES}
