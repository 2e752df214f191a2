"""The import graph of prdit: no cycles (counting imports inside functions), and every module imports only its own
package and the layers below it (the layering is stated in docs/architecture.md)."""

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "prdit"

#: Bottom to top. A module may import modules of its own package (``prdit.data.*`` for ``prdit.data.dataset``) and of
#: any lower layer, never of its own layer's other packages or of a higher layer. ``prdit`` itself is the package's
#: ``__init__`` (``__version__`` and lazy names, importing nothing at import time).
LAYERS: list[set[str]] = [
    {"prdit", "prdit.errors", "prdit.hu"},
    {"prdit.io", "prdit.runtime"},
    {"prdit.models", "prdit.diffusion", "prdit.preview"},
    {"prdit.config"},
    {"prdit.data", "prdit.runs"},
    {"prdit.checkpoint", "prdit.evaluation", "prdit.inverse", "prdit.conditioning"},
    {"prdit.train", "prdit.sample", "prdit.modelcard", "prdit.plan"},
    {"prdit.report", "prdit.bundle"},
    {"prdit.demo"},
    {"prdit.cli"},
    {"prdit.__main__"},
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
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


def component(module: str) -> str:
    """The package (or top-level module) of LAYERS that ``module`` belongs to."""
    owners = [name for layer in LAYERS for name in layer if module == name or module.startswith(name + ".")]
    if not owners:
        raise AssertionError(f"{module} is in no layer: add its package to LAYERS (and to docs/architecture.md)")
    return max(owners, key=len)


LEVEL = {name: level for level, layer in enumerate(LAYERS) for name in layer}


def test_every_module_is_in_a_layer():
    assert all(component(module) for module in import_graph())


@pytest.mark.parametrize("module", sorted(import_graph()))
def test_imports_point_down_the_layers(module):
    here = component(module)
    upward = sorted(f"{target} ({component(target)}, layer {LEVEL[component(target)]})" for target in import_graph()[module]
                    if component(target) != here and LEVEL[component(target)] >= LEVEL[here])
    assert not upward, f"{module} ({here}, layer {LEVEL[here]}) imports {upward}"


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
