"""The pipelines package imports without cycles, counting imports inside functions too (the old azure_backend and
preflight imported each other's private names from function bodies)."""

from __future__ import annotations

import ast

from pipelines.settings import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "pipelines"


def module_name(path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
                imported.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
        graph[name] = {m for m in imported if m in modules and m != name}
    return graph


def test_no_module_of_pipelines_imports_itself_back_through_others():
    graph = import_graph()
    cycles = []

    def visit(name, path):
        for target in graph.get(name, ()):
            if target in path:
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target in graph:
                visit(target, [*path, target])

    for start in graph:
        visit(start, [start])
    assert cycles == []
    assert "pipelines.azure.submit" not in graph["pipelines.preflight"]
