"""The layout's rule, checked from the imports themselves: a package imports only packages of
lower layers (or itself), and no two modules import each other, however indirectly.

    config <- models <- channels <- logs <- dispatch <- ingest <- reports <- wiring
           <- worker, web <- demo <- cli

``migrations`` sits beside ``models`` (it builds the tables; the CLI and the tests run it).
A function-level import counts as much as one at the top of a file: it is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

LAYERS: dict[str, int] = {
    "config": 0,
    "models": 1,
    "migrations": 2,
    "channels": 2,
    "logs": 3,
    "dispatch": 4,
    "ingest": 5,
    "reports": 6,
    "wiring": 7,
    "worker": 8,
    "web": 8,
    "demo": 9,
    "cli": 10,
}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(module: str, path: Path) -> set[str]:
    """Our modules that ``module`` imports (resolved to the longest known module name)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    ours = set()
    for name in names:
        parts = name.split(".")
        for end in range(len(parts), 0, -1):
            candidate = ".".join(parts[:end])
            if candidate in MODULES:
                if candidate != module:
                    ours.add(candidate)
                break
    return ours


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _layer(module: str) -> int:
    return LAYERS[module.split(".", maxsplit=1)[0]]


def test_every_package_is_placed_in_a_layer() -> None:
    top_level = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()} - {
        "tests",
        "bench",
    }
    assert top_level <= set(LAYERS), f"place these packages in LAYERS: {top_level - set(LAYERS)}"


def test_no_module_imports_a_layer_above_it_or_beside_it() -> None:
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        for target in targets
        if module.split(".")[0] != target.split(".")[0] and _layer(target) >= _layer(module)
    )
    assert wrong == []


def test_no_import_circles() -> None:
    # Tarjan's strongly connected components: any component of two or more modules is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            visit(module)
    assert circles == []


@pytest.mark.parametrize("package", ["config"])
def test_the_config_imports_none_of_our_packages(package: str) -> None:
    ours = {t for m, ts in GRAPH.items() if m.split(".")[0] == package for t in ts}
    assert {t for t in ours if t.split(".")[0] != package} == set()


def test_no_module_reads_the_environment_outside_the_config() -> None:
    readers = sorted(
        module
        for module, path in MODULES.items()
        if not module.startswith("config")
        and (
            "os.environ" in path.read_text(encoding="utf-8")
            or "getenv(" in path.read_text(encoding="utf-8")
        )
    )
    assert readers == []
