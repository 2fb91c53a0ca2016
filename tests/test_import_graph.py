"""The package's subpackages import one another one way only: down the declared layers, never in a cycle.

Every module under ``src/scconcerto`` is parsed with :mod:`ast`; every import counts, those inside functions
included, except imports under ``if TYPE_CHECKING:`` (they never run). An import of ``scconcerto.X...`` from
a module of ``scconcerto.Y...`` is an edge ``Y -> X`` of the subpackage graph (``X`` the first name under
``scconcerto``: a subpackage or a top-level module).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "scconcerto"

#: Lowest first. A module may import its own layer and the layers below it, never one above. Within a layer
#: imports may go either way, but never round a cycle (checked separately).
LAYERS: list[set[str]] = [
    {"__init__", "_errors", "_keys", "_settings", "_hardware", "_io", "_ragged", "_copy", "_defaults", "_random"},
    {"search"},                      # exact / approximate k-NN, the one index rule, the kNN graph transformer
    {"data", "datasets"},            # validation, genes, normalization, batches, streaming; the simulator
    {"nn"},                          # torch modules and losses
    {"train"},                       # training plans and loops
    {"mapping", "metrics"},          # the label decision of mapping; evaluation (and the one Leiden)
    {"tools", "tl"},                 # what uses an embedding: label transfer, imputation, placement, clustering
    {"model"},                       # the user-facing Concerto class
    {"plotting", "pl", "report"},    # figures and the HTML report
    {"cli", "__main__"},             # the command line
]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of ``tree``, at any depth, except the bodies of ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))
    return found


def _module_name(path: Path) -> tuple[str, str]:
    """Dotted name of the module at ``path`` and the package its relative imports start from."""
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
        return ".".join(parts), ".".join(parts)
    return ".".join(parts), ".".join(parts[:-1])


def _targets(node: ast.Import | ast.ImportFrom, package: str) -> list[str]:
    """The dotted names an import loads (``from pkg import name`` may load the submodule ``pkg.name``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = package.split(".")
        base = base[:len(base) - (node.level - 1)]
        module = ".".join(base + ([node.module] if node.module else []))
    else:
        module = node.module or ""
    return [module] + [f"{module}.{alias.name}" for alias in node.names if alias.name != "*"]


def _unit(dotted: str) -> str | None:
    """The subpackage (or top-level module) of ``dotted``; ``"__init__"`` for the package itself."""
    parts = dotted.split(".")
    if parts[0] != "scconcerto":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _units() -> set[str]:
    return {p.stem if p.is_file() else p.name for p in SRC.iterdir()
            if (p.is_file() and p.suffix == ".py") or (p.is_dir() and (p / "__init__.py").exists())}


def import_graph() -> dict[str, dict[str, list[str]]]:
    """``{importer: {imported: ["module:line", ...]}}`` over the subpackages of scconcerto."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    units = _units()
    for path in sorted(SRC.rglob("*.py")):
        module, package = _module_name(path)
        source = _unit(module)
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            for target in _targets(node, package):
                unit = _unit(target)
                if unit is None or unit == source:
                    continue
                if unit not in units:  # ``from .. import __version__``: an attribute of the package
                    unit = "__init__"
                if unit != source:
                    graph[source][unit].append(f"{module}:{node.lineno}")
    return graph


def _layer_of() -> dict[str, int]:
    return {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def test_every_subpackage_has_a_layer():
    declared = set().union(*LAYERS)
    assert _units() - declared == set(), "give each new subpackage its place in LAYERS"
    assert declared - _units() == set(), "LAYERS names a subpackage that no longer exists"


def test_imports_point_down_the_layers():
    layer = _layer_of()
    upward = [f"{src} -> {dst} ({', '.join(sorted(set(where)))})"
              for src, targets in sorted(import_graph().items()) for dst, where in sorted(targets.items())
              if src in layer and dst in layer and layer[dst] > layer[src]]
    assert upward == [], "imports of a higher layer:\n" + "\n".join(upward)


def _cycle(graph: dict[str, dict[str, list[str]]]) -> list[str] | None:
    """One cycle of ``graph`` as a node list, or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle_between_subpackages():
    cycle = _cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("code, expected", [
    ("from ..tools.neighbors import knn", {"tools"}),
    ("def f():\n    from ..model import Concerto", {"model"}),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..model import Concerto", set()),
    ("if TYPE_CHECKING:\n    pass\nelse:\n    from .. import plotting", {"__init__", "plotting"}),
    ("import scconcerto.metrics.clustering", {"metrics"}),
    ("from . import helper", set()),
])
def test_the_graph_sees_imports_inside_functions_but_not_type_checking_ones(code, expected):
    tree = ast.parse(code)
    found = {_unit(t) for node in _imports(tree) for t in _targets(node, "scconcerto.data")}
    assert found - {"data", None} == expected


def test_a_cycle_is_found():
    assert _cycle({"a": {"b": []}, "b": {"c": []}, "c": {"a": []}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b": []}, "b": {"c": []}}) is None
