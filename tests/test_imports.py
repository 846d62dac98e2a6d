"""Validation imports only what the params file declares, and a stage only what its keys need.

Each probe is a fresh interpreter (``sys.modules`` is what it loaded, not what other tests did) that
validates a file the way ``python -m pipeline validate`` or a stage's runner does, then names the
heavy libraries it loaded. Nothing here is timed: benchmarks/validate_time.py measures the cost.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config.components import CHECKS
from pipeline.config.components import REGISTRIES as DECLARED_REGISTRIES
from pipeline.config.dotted import import_object
from pipeline.config.errors import ConfigError
from pipeline.config.params import load_params
from pipeline.config.registry import REGISTRIES, Registry
from stages import split as split_stage
from stages import train as train_stage
from tests.conftest import REPO, write_params

HEAVY = (
    "torch",
    "torch._dynamo",
    "torchvision",
    "timm",
    "imgaug",
    "scipy",
    "mlflow",
    "matplotlib",
    "onnx",
    "onnxruntime",
)

_PROBE = """
import importlib, json, sys
path, stage, watched = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
if stage:  # the stage module, then its runner's validation (the work itself is not run)
    from pipeline.stage import run_stage
    status = run_stage(stage, importlib.import_module("stages." + stage).PARAMS, lambda view: None, ["--params", path])
else:      # python -m pipeline validate
    from pipeline.cli import main
    status = main(["validate", path])
print(json.dumps({"status": status, "loaded": [m for m in watched if m in sys.modules]}))
"""


def _loaded(path: Path, stage: str = "") -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(path), stage, json.dumps(HEAVY)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["status"] == 0, proc.stderr
    return set(result["loaded"])


def _classification(tmp_path: Path, **overrides: object) -> Path:
    return write_params(tmp_path / "params.yaml", REPO / "configs" / "classification.yaml", link=True, **overrides)


def test_the_split_stage_imports_no_torch():
    """It reads data and split: no loss, optimizer or model to build, so no torch and no imgaug."""
    assert _loaded(REPO / "params.yaml", "split") == set()


@pytest.mark.slow
def test_the_model_stage_imports_no_optimizer_augmentation_or_tracking():
    loaded = _loaded(REPO / "params.yaml", "model")
    assert "torch" in loaded
    assert not loaded & {"torch._dynamo", "imgaug", "scipy", "mlflow", "timm", "torchvision"}, loaded


@pytest.mark.slow
def test_validating_the_shipped_unet_file_imports_no_classifier_library():
    loaded = _loaded(REPO / "params.yaml")
    assert {"torch", "imgaug"} <= loaded  # it builds and steps the optimizer, builds the augmenters
    assert not loaded & {"timm", "torchvision", "mlflow", "matplotlib", "onnx", "onnxruntime"}, loaded


@pytest.mark.slow
def test_validating_a_timm_classifier_imports_timm_and_nothing_it_does_not_declare(tmp_path):
    loaded = _loaded(_classification(tmp_path))
    assert "timm" in loaded
    assert not loaded & {"mlflow", "matplotlib", "onnx", "onnxruntime"}, loaded


@pytest.mark.slow
def test_a_torchvision_model_without_augmenters_imports_neither_timm_nor_imgaug(tmp_path):
    loaded = _loaded(
        _classification(
            tmp_path,
            **{"model.source": "torchvision", "model.name": "resnet18", "augment.train": [], "augment.eval": []},
        )
    )
    assert "torchvision" in loaded
    assert not loaded & {"timm", "imgaug", "scipy", "mlflow"}, loaded


def test_a_stage_runs_the_checks_of_the_keys_it_reads_and_the_schema_everywhere(tmp_path):
    bad_loss = write_params(tmp_path / "loss.yaml", link=True, **{"loss.name": "dicee"})
    load_params(bad_loss, keys=split_stage.PARAMS)  # the split stage builds no loss
    for keys in (train_stage.PARAMS, None):  # the train stage and validate do
        with pytest.raises(ConfigError) as caught:
            load_params(bad_loss, keys=keys)
        assert [p.key for p in caught.value.problems] == ["loss.name"]
    typo = write_params(tmp_path / "typo.yaml", link=True, replace={"  params: {}": "  parms: {}"})
    with pytest.raises(ConfigError) as caught:  # a typo anywhere stops every stage
        load_params(typo, keys=split_stage.PARAMS)
    assert [p.key for p in caught.value.problems] == ["loss.parms"]


def test_every_check_entry_resolves_to_a_function():
    """The table names each check as "module:function"; each resolves (its module imported now) to a
    callable, and no two entries name the same function."""
    targets = [spec.target for spec in CHECKS]
    assert len(targets) == len(set(targets)), "a check listed twice"
    for spec in CHECKS:
        assert isinstance(spec.target, str) and ":" in spec.target, spec.target
        assert callable(spec.fn), spec.target
        assert spec.fn.__module__ == spec.target.split(":")[0], spec.target


def _params_checks(path: Path) -> list[str]:
    """Top-level functions ``check_*(params)`` of a source file: the shape of a semantic check."""
    tree = ast.parse(path.read_text())
    return [
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
        and node.name.startswith("check_")
        and [a.arg for a in node.args.args] == ["params"]
    ]


def test_every_check_function_is_in_the_table():
    """A check written but not listed would never run: each ``check_*(params)`` is a CHECKS entry."""
    listed = {spec.target for spec in CHECKS}
    found = []
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        if not module.startswith("pipeline.config."):
            found += [f"{module}:{name}" for name in _params_checks(path)]
    assert len(found) == len(CHECKS)
    assert set(found) == listed


def test_the_search_check_reads_every_section_a_trial_may_set():
    from pipeline.search import space

    [search] = [spec for spec in CHECKS if spec.inputs[0] == ("search",)]
    assert [".".join(key) for key in search.inputs[1:]] == list(space.SECTIONS)


def test_every_registry_entry_resolves_to_its_registry():
    assert sorted(REGISTRIES) == sorted(DECLARED_REGISTRIES)
    for kind, target in DECLARED_REGISTRIES.items():
        assert isinstance(import_object(target), Registry), target
        assert REGISTRIES[kind].kind == kind
        assert REGISTRIES[kind] is import_object(target)


def _creates_registry(path: Path) -> bool:
    tree = ast.parse(path.read_text())
    return any(
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Registry"
        for node in ast.walk(tree)
    )


def test_every_module_with_a_registry_is_declared():
    """A new module that creates a Registry must be named in pipeline/config/components.py."""
    declared = {target.split(":")[0] for target in DECLARED_REGISTRIES.values()}
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        if module.startswith("pipeline.config."):
            continue  # the mechanism itself
        assert not _creates_registry(path) or module in declared, f"{module}: add it to REGISTRIES"
