"""The import graph of prdit: no cycles (counting imports inside functions), and the bottom layers stay at the bottom."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "prdit"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the prdit modules it imports anywhere in its body (``from pkg import module`` counts as the module)."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {alias.name for alias in node.names if alias.name.startswith("prdit")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("prdit"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    edges.add(full if full in modules else node.module)
        graph[name] = edges - {name}
    return graph


def test_io_depends_only_on_errors_and_errors_on_nothing():
    graph = import_graph()
    assert graph["prdit.io"] <= {"prdit.errors"}
    assert graph["prdit.errors"] == set()
    assert graph["prdit.runtime"] <= {"prdit.errors"}


def test_only_the_command_line_imports_the_command_line():
    graph = import_graph()
    importers = {module for module, edges in graph.items() if any(e.startswith("prdit.cli") for e in edges)}
    assert all(module.startswith("prdit.cli") or module == "prdit.__main__" for module in importers), importers


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                cycle = path[path.index(target):] + [target] if target in path else [module, target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
