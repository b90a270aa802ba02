"""The package has no import cycle: a static check of module-level imports, and each module imported alone."""
from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import hgattn

PACKAGE = Path(hgattn.__file__).parent


def module_names() -> list[str]:
    """Every Python module of the package but ``__main__`` (which runs the command line); the native kernel's
    shared library is not a Python module."""
    return ["hgattn"] + [m.name for m in pkgutil.walk_packages([str(PACKAGE)], prefix="hgattn.")
                         if not m.name.endswith(".__main__") and _module_path(m.name).exists()]


def _module_path(name: str) -> Path:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _imported_modules(name: str, known: set[str]) -> set[str]:
    """hgattn modules that module ``name`` imports at module level (relative imports resolved)."""
    is_package = _module_path(name).name == "__init__.py"
    base = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.parse(_module_path(name).read_text()).body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = base[:len(base) - node.level + 1] if node.level else []
            target = ".".join(parts + ([node.module] if node.module else []))
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {m for m in found if m in known and m != name}


def test_no_import_cycle() -> None:
    names = module_names()
    known = set(names)
    graph = {name: _imported_modules(name, known) for name in names}
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open" and not node.startswith(nxt + "."):
                cycle = path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for name in names:
        if name not in state:
            visit(name, [name])


@pytest.mark.slow
def test_every_module_imports_alone() -> None:
    for name in module_names():
        result = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True)
        assert result.returncode == 0, f"import {name} failed alone:\n{result.stderr[-2000:]}"
