"""The layers stay sealed: no import cycles, and only store/ talks to the database.

Read from the source (ast), so these hold for every module whether or not a
test happens to import it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "versioner_grpc": ROOT / "versioner_grpc",
    "versioner_client": ROOT / "clients" / "python" / "versioner_client",
}
DATABASE_MODULES = ("peewee", "playhouse", "psycopg2", "versioner_grpc.store.sql")
STORE = "versioner_grpc.store"
# Type-only imports that close a cycle, each with the work that removes it. The
# test fails once a cycle listed here is gone, so the list cannot go stale.
KNOWN_TYPE_ONLY_CYCLES: set[frozenset[str]] = set()


def _modules() -> dict[str, Path]:
    found = {}
    for package, directory in PACKAGES.items():
        for path in directory.rglob("*.py"):
            parts = [package, *path.relative_to(directory).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(module: str, *, type_only: bool) -> Iterator[str]:
    """Absolute names `module` imports (at run time; with `type_only`, also under TYPE_CHECKING)."""
    tree = ast.parse(MODULES[module].read_text())
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]

    def visit(nodes: list[ast.AST]) -> Iterator[str]:
        for node in nodes:
            if isinstance(node, ast.If) and _is_type_checking(node.test):
                if type_only:
                    yield from visit(list(node.body))
                yield from visit(list(node.orelse))
                continue
            if isinstance(node, ast.Import):
                yield from (alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                yield base
                yield from (f"{base}.{alias.name}" for alias in node.names)
            # Nested blocks count too: a lazy import in a function is still an import.
            for field in ("body", "orelse", "finalbody", "handlers"):
                children = getattr(node, field, None)
                if isinstance(children, list):
                    yield from visit([c for c in children if isinstance(c, ast.AST)])

    yield from visit(list(tree.body))


def _graph(*, type_only: bool) -> dict[str, set[str]]:
    return {
        module: {name for name in _imports(module, type_only=type_only) if name in MODULES}
        - {module}
        for module in MODULES
    }


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_the_graph_sees_real_imports() -> None:
    graph = _graph(type_only=False)
    assert "versioner_grpc.store.store" in graph["versioner_grpc.service"]
    assert "versioner_grpc.domain.filters" in graph["versioner_grpc.store.reads"]
    assert "versioner_grpc.store.sql" in graph["versioner_grpc.store.events"]


def test_no_import_cycle_at_run_time() -> None:
    assert _cycles(_graph(type_only=False)) == []


def test_no_import_cycle_counting_type_only_imports_beyond_the_known_ones() -> None:
    cycles = [frozenset(c) for c in _cycles(_graph(type_only=True))]
    assert [c for c in cycles if c not in KNOWN_TYPE_ONLY_CYCLES] == []
    gone = KNOWN_TYPE_ONLY_CYCLES - set(cycles)
    assert not gone, f"no longer a cycle, remove it from KNOWN_TYPE_ONLY_CYCLES: {gone}"


def test_only_the_store_imports_database_drivers_and_sql() -> None:
    offenders = []
    for module in MODULES:
        if module == STORE or module.startswith(STORE + "."):
            continue
        for name in _imports(module, type_only=True):
            if any(name == banned or name.startswith(banned + ".") for banned in DATABASE_MODULES):
                offenders.append(f"{module} imports {name}")
    assert offenders == []


def test_nothing_outside_the_store_touches_the_database_handle() -> None:
    offenders = []
    for module, path in MODULES.items():
        in_store = module == STORE or module.startswith(STORE + ".")
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Attribute):
                continue
            if node.attr == "_state" or (not in_store and node.attr in ("database", "db")):
                offenders.append(f"{module}:{node.lineno} .{node.attr}")
    assert offenders == []


def test_the_domain_imports_no_framework() -> None:
    offenders = []
    for module in MODULES:
        if not module.startswith("versioner_grpc.domain"):
            continue
        for name in _imports(module, type_only=True):
            top = name.split(".")[0]
            inside = name.startswith("versioner_grpc.domain") or top not in (
                "versioner_grpc",
                "versioner",
                "grpc",
                "google",
                "peewee",
                "playhouse",
                "psycopg2",
            )
            if not inside:
                offenders.append(f"{module} imports {name}")
    assert offenders == []
