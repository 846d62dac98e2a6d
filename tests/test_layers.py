"""The library's layers, read from the imports of every module under pipeline/ and stages/ (module level
and inside functions alike; an ``if TYPE_CHECKING:`` import never runs and is left out): each module
imports only from its own layer or the layers below it, and no chain of imports leads back to the module
it starts from.

Bottom to top: the config layer; the small shared modules at pipeline/'s top (atomic writes, the modules
that name the components' checks and registries, hashing, output paths, the overwrite guard, plots, worker
processes, seeding, the stage runner, the torch file reader); data; models; augment; training; tracking;
search; inference; the command line; the DVC stages. An entry names a subpackage of pipeline/, or several
modules at pipeline/'s top, or ``stages``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.imports import direct_imports
from tests.conftest import REPO

LAYERS = [
    "config",
    "atomic hashing imports outputs overwrite plots processes seeding stage torchfile",
    "data",
    "models",
    "augment",
    "training",
    "tracking",
    "search",
    "inference",
    "cli dvcfile __main__",
    "stages",
]
RANK = {name: rank for rank, entry in enumerate(LAYERS) for name in entry.split()}


def _modules() -> dict[str, Path]:
    """Every module of pipeline/ and stages/ by dotted name (a package by its own name)."""
    found = {}
    for root in ("pipeline", "stages"):
        for path in sorted((REPO / root).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


GRAPH = {name: direct_imports(name, REPO) & MODULES.keys() for name in MODULES}


def layer_of(module: str) -> str:
    """The LAYERS name ``module`` belongs to: its subpackage of pipeline/, its own name for a module at
    pipeline/'s top, ``stages`` for a stage."""
    parts = module.split(".")
    if parts[0] == "stages":
        return "stages"
    if len(parts) == 1:
        return "__init__"
    return parts[1]


def test_every_module_has_a_layer():
    unplaced = sorted({layer_of(m) for m in MODULES} - set(RANK) - {"__init__"})
    assert unplaced == [], f"add {unplaced} to LAYERS in tests/test_layers.py, at the height its imports put it"


def _upward(graph: dict[str, set[str]]) -> list[str]:
    """Each import in ``graph`` from a module to one in a higher layer."""
    return [
        f"{module} ({layer_of(module)}) imports {target} ({layer_of(target)})"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if layer_of(module) in RANK and layer_of(target) in RANK and RANK[layer_of(target)] > RANK[layer_of(module)]
    ]


def test_no_module_imports_from_a_layer_above_its_own():
    assert _upward(GRAPH) == []


def test_an_upward_import_is_named():
    graph = {"pipeline.data.shards": {"pipeline.augment.cache", "pipeline.config.errors"}, "stages.train": set()}
    assert _upward(graph) == ["pipeline.data.shards (data) imports pipeline.augment.cache (augment)"]


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (as the path around it), or None."""
    done: set[str] = set()
    for start in sorted(graph):
        stack, path, on_path = [(start, iter(sorted(graph[start])))], [start], {start}
        while stack:
            node, targets = stack[-1]
            step = next(targets, None)
            if step is None:
                stack.pop()
                path.pop()
                on_path.discard(node)
                done.add(node)
            elif step in on_path:
                return [*path[path.index(step) :], step]
            elif step not in done:
                stack.append((step, iter(sorted(graph[step]))))
                path.append(step)
                on_path.add(step)
    return None


def test_no_import_cycle_between_modules():
    cycle = _cycle(GRAPH)
    assert cycle is None, "an import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"b"}, "b": {"b2"}, "b2": {"b"}}, ["b", "b2", "b"]),
    ],
)
def test_the_cycle_finder_finds_cycles(graph, expected):
    assert _cycle(graph) == expected


def test_the_import_reader_sees_lazy_imports_and_the_layers_hold_real_edges():
    """What the checks above rely on: an import inside a function is an edge (the registry check
    imports torch-free code lazily; cli imports the whole library that way), and the layers are not
    vacuous: training really imports models, augment and data."""
    assert "pipeline.inference.predict" in GRAPH["pipeline.cli"]  # inside _predict()
    assert GRAPH["pipeline.training.batches"] == {"pipeline.models.input_contract"}
    assert {layer_of(t) for m, ts in GRAPH.items() if layer_of(m) == "training" for t in ts} >= {
        "models",
        "augment",
        "data",
        "config",
    }
