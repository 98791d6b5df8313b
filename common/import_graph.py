"""The project's import graph, read from the source (``ast``, nothing is imported): which
project module imports which, at any depth (a lazy import inside a function counts), folded
into packages for ``docs/architecture.md`` and checked for cycles by ``tests/test_layout.py``."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

SKIPPED_DIRS = frozenset({"build", "dist", "notebooks", "runs", "outputs", "__pycache__"})
"""Folders under the root that hold no project source (hidden folders are skipped too)."""

Graph = dict[str, set[str]]


def module_name(path: Path, root: Path) -> str:
    """``root/evaluation/harness.py`` -> ``evaluation.harness``; a package's ``__init__.py``
    is the package itself."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path) -> dict[str, Path]:
    """Every project module under ``root`` (name -> file), skipping virtual environments,
    build output, hidden folders and ``SKIPPED_DIRS``."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts[:-1]
        if any(p.startswith(".") or p in SKIPPED_DIRS for p in rel):
            continue
        modules[module_name(path, root)] = path
    return modules


def _resolve(name: str, modules: Iterable[str]) -> str | None:
    """The longest dotted prefix of ``name`` that is a project module, else None."""
    known = set(modules)
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in known:
            return prefix
    return None


def imports_of(path: Path, module: str, modules: Mapping[str, Path]) -> set[str]:
    """The project modules ``module`` (the file ``path``) imports, at any depth. Relative
    imports are resolved against ``module``'s package."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".") if package else []
                anchor = anchor[: len(anchor) - (node.level - 1)] if node.level > 1 else anchor
                base = ".".join([*anchor, base] if base else anchor)
            # ``from pkg import name``: the submodule ``pkg.name`` if there is one, else ``pkg``
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        else:
            continue
        for name in names:
            resolved = _resolve(name, modules) if name else None
            if resolved is not None and resolved != module:
                found.add(resolved)
    return found


def module_graph(root: Path) -> Graph:
    """Project module -> the project modules it imports."""
    modules = project_modules(root)
    return {name: imports_of(path, name, modules) for name, path in modules.items()}


def package_of(module: str) -> str:
    """The top-level package (or root module) a module belongs to."""
    return module.split(".")[0]


def package_graph(graph: Mapping[str, set[str]]) -> Graph:
    """``graph`` folded into top-level packages, without self-imports."""
    folded: Graph = {}
    for module, targets in graph.items():
        source = package_of(module)
        edges = folded.setdefault(source, set())
        edges.update(package_of(t) for t in targets if package_of(t) != source)
    return folded


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One import cycle (``[a, b, ..., a]``) in ``graph``, or None if it has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None
