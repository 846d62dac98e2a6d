"""The config layer (pipeline/config/) never imports upward: not at import, not in a function, not
through registration. What it must reach above it (the checks, the registries) it names as data,
``"module:attr"`` strings in pipeline/config/components.py, resolved by importlib when used."""

from __future__ import annotations

from pipeline.imports import imported_modules
from tests.conftest import REPO

ALLOWED = ("pipeline.config",)  # itself; the packages below it would go here (none yet)


def test_the_config_layer_imports_nothing_above_it():
    for path in sorted((REPO / "pipeline" / "config").glob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        upward = sorted(
            name
            for name in imported_modules(module, REPO, packages=("pipeline", "stages"))
            if not name.startswith(ALLOWED)
        )
        assert not upward, f"{path.relative_to(REPO)} imports {upward}"


def test_the_walk_sees_a_lazy_upward_import(tmp_path):
    """A control: the walk above would catch an import inside a function."""
    (tmp_path / "pipeline" / "config").mkdir(parents=True)
    (tmp_path / "pipeline" / "training").mkdir()
    (tmp_path / "pipeline" / "config" / "x.py").write_text("def f():\n    from pipeline.training import loss\n")
    (tmp_path / "pipeline" / "training" / "loss.py").write_text("A = 1\n")
    assert imported_modules("pipeline.config.x", tmp_path) == {"pipeline.training.loss"}
