"""The house's rules of who may import whom (README "Layout", DESIGN's map), checked on
the package's own source: ``http/`` is protocol only (nothing of the gateway above it),
``dialects/`` imports only values, and no module of the package imports one that
imports it back (no circle, type-only imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "jupyter_vkeys"
VALUES = {"jupyter_vkeys.usage", "jupyter_vkeys.money", "jupyter_vkeys.keys",
          "jupyter_vkeys.pricing"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every ``jupyter_vkeys`` module ``path`` imports, anywhere in it (functions and
    ``TYPE_CHECKING`` blocks too), resolved to module names."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # ``from . import x`` names a module, not the package
                submodule = f"{target}.{alias.name}"
                found.add(submodule if submodule in MODULES else target)
    return {m for m in found if m == "jupyter_vkeys" or m.startswith("jupyter_vkeys.")}


FILES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
MODULES = set(FILES)
GRAPH = {name: {m for m in imports_of(path) if m in MODULES} for name, path in FILES.items()}


@pytest.mark.parametrize("room", ["jupyter_vkeys.http"])
def test_http_imports_nothing_above_it(room):
    for name, imported in GRAPH.items():
        if name == room or name.startswith(room + "."):
            outside = {m for m in imported if not (m == room or m.startswith(room + "."))}
            assert not outside, f"{name} imports {sorted(outside)}"


def test_dialects_import_only_values():
    for name, imported in GRAPH.items():
        if name.startswith("jupyter_vkeys.dialects"):
            outside = {m for m in imported if not m.startswith("jupyter_vkeys.dialects")
                       and m not in VALUES}
            assert not outside, f"{name} imports {sorted(outside)}"


def test_no_import_circle():
    """Depth-first search for a cycle through modules (a package's ``__init__`` counts
    as the package: importing ``a.b`` runs ``a/__init__.py``, so only explicit imports of
    the package are followed)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for target in sorted(GRAPH[name]):
            if target == name:
                continue
            if state.get(target) == 1:
                cycle = stack[stack.index(target):] + [target]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)
