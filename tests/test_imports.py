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

from pipeline import components
from pipeline.components import load_params
from pipeline.config import checks
from pipeline.config.errors import ConfigError
from pipeline.config.registry import REGISTRIES
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


def _section(key: str) -> str:
    return checks.key_parts(key)[0]


def test_every_check_is_declared_under_the_section_it_validates():
    """run_checks imports CHECK_MODULES[section] to check a section: a check elsewhere would be skipped."""
    ours = [r for r in checks.registered_checks() if r.fn.__module__.startswith("pipeline.")]  # imports them all
    found = {r.fn.__module__ for r in ours}
    for registered in ours:
        module, subject = registered.fn.__module__, ".".join(registered.inputs[0])
        assert module in components.CHECK_MODULES.get(_section(subject), ()), (module, subject)
    for section, modules in components.CHECK_MODULES.items():
        for module in modules:
            assert module in found, f"{module} is declared for {section} but registers no check"


def _decorated_or_called(path: Path) -> tuple[bool, bool]:
    """Whether a source file registers a semantic check / creates a Registry."""
    tree = ast.parse(path.read_text())
    names = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    return "semantic_check" in names, "Registry" in names


def test_every_module_with_checks_or_a_registry_is_declared():
    """A new module with a @semantic_check or a Registry must be named in pipeline/components.py."""
    declared_checks = {m for modules in components.CHECK_MODULES.values() for m in modules}
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        if module.startswith("pipeline.config."):
            continue  # the mechanism itself
        has_check, has_registry = _decorated_or_called(path)
        assert not has_check or module in declared_checks, f"{module}: add it to CHECK_MODULES"
        assert not has_registry or module in components.REGISTRY_MODULES.values(), (
            f"{module}: add it to REGISTRY_MODULES"
        )


def test_a_registry_is_imported_on_first_use():
    assert sorted(REGISTRIES) == sorted(components.REGISTRY_MODULES)
    for kind in components.REGISTRY_MODULES:
        assert REGISTRIES[kind].kind == kind
