"""Source-to-source steps that turn the project's runtime modules into a self-contained bundle.

The competition runs ``defense.py`` next to its own ``model.py``, so the bundle vendors our
runtime code under one private package and every import of a project module is redirected
there. The code is copied, never rewritten by hand: these functions only

* ``rewrite_imports``: redirect absolute ``from <module> import ...`` statements,
* ``prune_init``: drop a package ``__init__``'s re-exports of modules left out of the bundle,
* ``bundle_import_problems``: check statically that a bundled tree imports only the standard
  library, allowed third-party packages and names that exist inside the tree.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Collection, Mapping
from pathlib import Path

_FROM_MODULE = re.compile(r"from\s+([A-Za-z_][\w.]*)")


def _redirect(module: str, mapping: Mapping[str, str]) -> str | None:
    """``module`` with its longest mapped prefix (whole dotted components) replaced."""
    parts = module.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in mapping:
            return ".".join([mapping[prefix], *parts[cut:]])
    return None


def rewrite_imports(source: str, mapping: Mapping[str, str], filename: str = "<source>") -> str:
    """``source`` with every absolute ``from M import ...`` whose module ``M`` (or a dotted
    prefix of it) is a key of ``mapping`` redirected to the mapped module, e.g. with
    ``{"diffusion": "pkg.diffusion"}``: ``from diffusion.noise import x`` ->
    ``from pkg.diffusion.noise import x``. Imports at any depth are rewritten; relative
    imports and unmapped modules are left alone.

    Raises ``ValueError`` for ``import M`` of a mapped module (it would bind another name;
    write ``from M import ...``) and for source that does not parse.
    """
    try:
        tree = ast.parse(source, filename)
    except SyntaxError as err:
        raise ValueError(f"cannot parse {filename}: {err}") from err
    lines = source.splitlines(keepends=True)
    edits: list[tuple[int, int, int, str]] = []  # (line index, start col, end col, text)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _redirect(alias.name, mapping) is not None:
                    raise ValueError(
                        f"{filename}:{node.lineno}: `import {alias.name}` cannot be redirected; "
                        f"use `from {alias.name} import ...`"
                    )
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            target = _redirect(node.module, mapping)
            if target is None:
                continue
            line = lines[node.lineno - 1]
            # col_offset counts UTF-8 bytes; the statement starts with ASCII "from".
            start = len(line.encode()[: node.col_offset].decode())
            match = _FROM_MODULE.match(line, start)
            if match is None or match.group(1) != node.module:
                raise ValueError(
                    f"{filename}:{node.lineno}: cannot locate module {node.module!r} in "
                    f"{line.strip()!r}"
                )
            edits.append((node.lineno - 1, match.start(1), match.end(1), target))
    for index, begin, end, text in sorted(edits, reverse=True):
        lines[index] = lines[index][:begin] + text + lines[index][end:]
    return "".join(lines)


def prune_init(source: str, dropped: Collection[str], filename: str = "<source>") -> str:
    """A package ``__init__`` without its top-level ``from <m> import ...`` statements for the
    modules in ``dropped`` (full dotted names, e.g. ``"diffusion.training_loss"``), and
    without the names they imported in a literal ``__all__`` list."""
    tree = ast.parse(source, filename)
    lines = source.splitlines(keepends=True)
    removed_names: set[str] = set()
    spans: list[tuple[int, int, list[str] | None]] = []  # (first, last line index, replacement)
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in dropped:
            removed_names.update(alias.asname or alias.name for alias in node.names)
            spans.append((node.lineno - 1, node.end_lineno - 1, None))
    for node in tree.body:
        if _is_all_assignment(node):
            names = [element.value for element in node.value.elts]  # type: ignore[attr-defined]
            kept = [name for name in names if name not in removed_names]
            text = ["__all__ = [\n", *(f'    "{name}",\n' for name in kept), "]\n"]
            spans.append((node.lineno - 1, node.end_lineno - 1, text))
    for first, last, replacement in sorted(spans, key=lambda span: span[0], reverse=True):
        lines[first : last + 1] = replacement or []
    return "".join(lines)


def _is_all_assignment(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.Assign)
        and len(node.targets) == 1
        and isinstance(node.targets[0], ast.Name)
        and node.targets[0].id == "__all__"
        and isinstance(node.value, (ast.List, ast.Tuple))
        and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.value.elts)
    )


def bundle_import_problems(
    root: str | Path, package: str, third_party: Collection[str]
) -> list[str]:
    """Every import in the ``.py`` files under ``root`` that would not work in a bundle run with
    only the standard library and ``third_party`` installed (empty list: all good).

    Absolute imports must name the standard library, a ``third_party`` package or ``package``
    (the bundle's own); imports inside ``package`` must resolve to a file of the tree, and each
    name taken ``from`` one of its modules must be defined there (or be a submodule).
    """
    root = Path(root)
    allowed = set(sys.stdlib_module_names) | set(third_party) | {"__future__", package}
    problems = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        tree = ast.parse(path.read_text(), str(rel))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [(alias.name, []) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                module = _absolute_module(rel, node)
                targets = [(module, [alias.name for alias in node.names])]
            else:
                continue
            for module, names in targets:
                where = f"{rel}:{node.lineno}"
                top = module.split(".")[0]
                if top not in allowed:
                    problems.append(f"{where}: imports {module!r}, not allowed in the bundle")
                elif top == package:
                    problems.extend(f"{where}: {p}" for p in _resolve(root, module, names))
    return problems


def _absolute_module(rel: Path, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    parts = list(rel.with_suffix("").parts)
    base = parts[: len(parts) - node.level]
    return ".".join([*base, *([node.module] if node.module else [])])


def _module_file(root: Path, module: str) -> Path | None:
    path = root.joinpath(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _resolve(root: Path, module: str, names: list[str]) -> list[str]:
    path = _module_file(root, module)
    if path is None:
        return [f"module {module!r} is not in the bundle"]
    defined = _defined_names(ast.parse(path.read_text(), str(path)))
    return [
        f"{module!r} defines no {name!r}"
        for name in names
        if name != "*" and name not in defined and _module_file(root, f"{module}.{name}") is None
    ]


def _defined_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return names
