"""The layer contract over the import graph: `ml` at the bottom, `elk` on it, `serving` on both,
benchmarks and tests on top. Every import counts, the ones inside functions too (most
cross-package imports here are lazy, to keep the CLI quick to start).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

LAYERS = ("ml", "elk", "serving")  # bottom to top
ABOVE_ALL = ("benchmarks", "tests")
# How an arrow back up hides from the import statements: loading modules by name at run time
# (ml.cli once loaded elk and serving as entry-point plugins, which imported ml.cli back).
DYNAMIC_LOADERS = {"entry_points", "import_module", "__import__"}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """(top-level package, line) of every absolute import in one file."""
    found: set[tuple[str, int]] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update((alias.name.split(".")[0], node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.module.split(".")[0], node.lineno))
    return found


def forbidden_for(package: str) -> set[str]:
    if package in LAYERS:
        return set(LAYERS[LAYERS.index(package) + 1 :]) | set(ABOVE_ALL)
    if package == "benchmarks":
        return {"tests"}  # a benchmark runs without the test suite's fixtures
    raise AssertionError(package)


def violations(package: str) -> list[str]:
    forbidden = forbidden_for(package)
    return [
        f"{path.relative_to(REPO_ROOT)}:{line} imports {imported}"
        for path in sorted((REPO_ROOT / package).rglob("*.py"))
        for imported, line in sorted(imported_packages(path))
        if imported in forbidden
    ]


def dynamic_loads(path: Path) -> list[int]:
    """Lines that name a module loader (called or imported)."""
    return sorted(
        node.lineno
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
        if (isinstance(node, ast.Name) and node.id in DYNAMIC_LOADERS)
        or (isinstance(node, ast.Attribute) and node.attr in DYNAMIC_LOADERS)
        or (isinstance(node, ast.alias) and node.name in DYNAMIC_LOADERS)
    )


@pytest.mark.parametrize("package", [*LAYERS, "benchmarks"])
def test_no_package_imports_a_layer_above_it(package: str) -> None:
    assert not violations(package)


@pytest.mark.parametrize("package", LAYERS[:-1])
def test_lower_layers_load_no_module_by_name(package: str) -> None:
    found = [
        f"{path.relative_to(REPO_ROOT)}:{line}"
        for path in sorted((REPO_ROOT / package).rglob("*.py"))
        for line in dynamic_loads(path)
    ]
    assert not found, f"modules loaded by name (an arrow up the checker cannot follow): {found}"


def test_the_check_sees_lazy_imports_and_would_fail(tmp_path: Path) -> None:
    """The checker itself: an arrow back up inside a function is found."""
    module = tmp_path / "module.py"
    module.write_text("def f():\n    from serving.cli import app\n    import elk.sinks\n")
    assert imported_packages(module) == {("serving", 2), ("elk", 3)}
    assert {"serving", "elk"} <= forbidden_for("ml")
    assert "ml" not in forbidden_for("serving")
    plugin_loader = tmp_path / "plugins.py"
    plugin_loader.write_text(
        "from importlib.metadata import entry_points\n"
        "def plugins():\n    return [e.load() for e in entry_points(group='mlops.cli')]\n"
    )
    assert dynamic_loads(plugin_loader) == [1, 3]
