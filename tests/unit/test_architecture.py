"""Dependencies run one way. These tests read the source with ``ast`` (nothing is imported),
so a cycle or a wrong-way import fails here, named, before it confuses a reader.

- No import cycle among the modules of ``app/``, ``workers/`` and ``tools/``, not even through
  an import inside a function.
- ``app/`` (the web process and the services) never imports ``workers/`` or ``tools/``: tasks
  are sent by name (``app/queue.py``) and the web process never loads torch.
- The domains stack up: ``accounts`` < ``credits`` and ``gallery`` < ``generation`` < ``admin``. Routes are
  the top layer and may compose several domains; below them no domain imports one above it.
  Imports under ``if TYPE_CHECKING:`` are for the type checker only and do not count.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.config import REPO_ROOT

PACKAGES = ("app", "workers", "tools")
# Lower domains first: a domain may import the ones before it, never the ones after.
DOMAIN_ORDER = ("storage", "mail", "accounts", "apikeys", "credits", "gallery", "generation", "admin", "erasure")


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for package in PACKAGES
        if (REPO_ROOT / package).is_dir()
        for path in sorted((REPO_ROOT / package).rglob("*.py"))
    }


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """Every module name an import statement in ``tree`` may bind, skipping TYPE_CHECKING blocks."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            yield from (name for child in node.orelse for name in _imported_names(child, module, is_package))
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            yield source
            yield from (f"{source}.{alias.name}" for alias in node.names)
        yield from _imported_names(node, module, is_package)


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for imported in _imported_names(ast.parse(path.read_text()), name, path.name == "__init__.py"):
            # "from app.gallery import service" imports app.gallery.service; "from app.db import x", app.db.
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                edges.add(imported)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return _graph()


def test_the_walker_sees_imports_inside_functions_and_skips_type_checking_blocks():
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import a\ndef f():\n    from b import c\n"
    assert set(_imported_names(ast.parse(source), "x", False)) == {"typing", "typing.TYPE_CHECKING", "b", "b.c"}


def test_the_walker_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_among_our_modules(graph):
    assert _cycles(graph) == []


def test_app_never_imports_workers_or_tools(graph):
    wrong_way = sorted(
        (module, imported)
        for module, imports in graph.items()
        if module.startswith("app.")
        for imported in imports
        if imported.split(".")[0] in ("workers", "tools")
    )
    assert wrong_way == []


def _rank(module: str) -> int:
    parts = module.split(".")
    if len(parts) > 1 and parts[0] == "app" and parts[1] in DOMAIN_ORDER:
        return DOMAIN_ORDER.index(parts[1])
    return -1


def test_below_the_routes_no_domain_imports_a_domain_above_it(graph):
    wrong_way = sorted(
        (module, imported)
        for module, imports in graph.items()
        if _rank(module) >= 0 and not module.endswith(".routes")
        for imported in imports
        if _rank(imported) > _rank(module)
    )
    assert wrong_way == []
