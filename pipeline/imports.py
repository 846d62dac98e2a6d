"""What a module imports from this repository, read from its source (never executed).

``python -m pipeline dvc`` lists these files as a stage's deps, so editing a library module re-runs
exactly the stages whose code reaches it. The walk is static and transitive: every ``import`` and
``from ... import`` in the file, at any depth (inside functions too: a lazy import still shapes the
outputs; an ``if TYPE_CHECKING:`` import never runs and is left out), followed into the modules it
names under ``packages``. Empty files (package ``__init__``
files that hold no code) are left out. Nothing is imported, so the walk costs milliseconds and loads no
torch.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

PACKAGES = ("stages", "pipeline")


def module_file(name: str, root: Path) -> Path | None:
    """The source file of dotted module ``name`` under ``root`` (a module or a package), or None."""
    base = root / name.replace(".", "/")
    for candidate in (base.with_name(base.name + ".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package_of(name: str, path: Path) -> str:
    """The package a relative import in module ``name`` (at ``path``) starts from."""
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _typing_only(tree: ast.AST) -> set[int]:
    """The ids of the nodes inside ``if TYPE_CHECKING:`` blocks (imports for annotations, never run)."""
    return {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for statement in node.body
        for inner in ast.walk(statement)
    }


def _named(tree: ast.AST, name: str, path: Path) -> Iterator[str]:
    """Every dotted name an import statement in ``tree`` that runs may refer to: the module, and each
    ``from X import Y`` as ``X.Y`` too (Y may be a submodule)."""
    typing_only = _typing_only(tree)
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = _package_of(name, path)
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            if base:
                yield base
                yield from (f"{base}.{alias.name}" for alias in node.names)


def direct_imports(module: str, root: Path, packages: Iterable[str] = PACKAGES) -> set[str]:
    """The modules under ``packages`` that ``module``'s own source imports (not transitively)."""
    path = module_file(module, root)
    if path is None:
        return set()
    names = _named(ast.parse(path.read_text(), filename=str(path)), module, path)
    return {n for n in names if n.split(".")[0] in tuple(packages) and n != module and module_file(n, root)}


def imported_modules(module: str, root: Path, packages: Iterable[str] = PACKAGES, skip: Iterable[str] = ()) -> set[str]:
    """Every module under ``packages`` that ``module`` imports, transitively (``module`` itself only if
    it imports itself back). ``skip`` names modules not to include nor follow."""
    packages, skip = tuple(packages), set(skip)
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        path = module_file(current, root)
        if path is None:
            continue
        for name in _named(ast.parse(path.read_text(), filename=str(path)), current, path):
            if name in seen or name in skip or name.split(".")[0] not in packages:
                continue
            found = module_file(name, root)
            if found is not None and found.read_text().strip():
                seen.add(name)
                todo.append(name)
    return seen


def imported_files(module: str, root: Path, packages: Iterable[str] = PACKAGES) -> set[str]:
    """:func:`imported_modules` as repository-relative POSIX paths."""
    return {
        module_file(name, root).relative_to(root).as_posix()  # type: ignore[union-attr]
        for name in imported_modules(module, root, packages)
    }
