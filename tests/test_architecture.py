"""The import architecture: no import circles, no import against the layer order.

Every module of ``litv2``, ``space``, ``search`` and ``experiments`` is read with ``ast`` (nothing
is imported): each ``import`` / ``from ... import`` statement anywhere in a file counts - at module
level, inside functions, under ``if TYPE_CHECKING:``, in ``try`` blocks - with relative imports
resolved to absolute module names. ``from pkg import name`` is an edge to ``pkg.name`` when that is
a module, otherwise to ``pkg``. Parent packages that Python runs implicitly are not edges (that is
why a package's ``__init__`` sits at the bottom of its own package in ``LAYERS``). Imports built at
run time (``importlib.import_module(f"...")``, the lazy attributes of ``litv2`` and ``space``) are
not statements and are not seen.
"""
from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The layer order, lowest first: a module may import modules of its own layer and of any layer
# below it, never of a layer above. A module belongs to the longest entry that is its name or a
# dotted prefix of it; an entry that is itself split into layers below it (``search``) holds only
# its own ``__init__``, which Python runs before any of its sub-packages, so it may import nothing
# of them. A module that belongs to no entry (a new module directly in ``search/``) fails the test.
# README, "Architecture", documents this order.
LAYERS = (
    "litv2",             # models, FLOPs, throughput protocol
    "space",             # search spaces
    "search",            # search/__init__.py alone
    "search.core",       # budget, constraints, objectives, scheduler, targets: no processes, no torch
    "search.study",      # Optuna studies, settings, storages, Pareto fronts
    "search.training",   # proxy training and its data
    "search.engine",     # the driver, executors, jobs, cache, tracking
    "search.deploy",     # pick, export, full training, model cards
    "search.bench",      # strategy replay and benchmark tables
    "search.cli",        # python -m search's commands
    "search.__main__",   # python -m search, the entry point
    "experiments",       # the paper's ablation tables
)
PACKAGES = ("litv2", "space", "search", "experiments")


class Edge(NamedTuple):
    source: str
    target: str
    line: int
    type_only: bool   # under ``if TYPE_CHECKING:``
    deferred: bool    # inside a function: runs when called, not on import


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def walk_modules() -> dict[str, Path]:
    """Every module of the four packages, by dotted name."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "__pycache__" not in path.parts:
                modules[module_name(path)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _known(name: str, modules) -> str | None:
    """``name`` or its longest dotted prefix that is a module of ours (None: not ours)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(source: str, name: str, is_package: bool, modules) -> list[Edge]:
    """The edges from module ``name`` (whose source is ``source``) to modules in ``modules``."""
    package = name if is_package else name.rpartition(".")[0]
    edges: list[Edge] = []

    def add(target: str | None, node: ast.stmt, type_only: bool, deferred: bool) -> None:
        if target is not None and target != name:
            edges.append(Edge(name, target, node.lineno, type_only, deferred))

    def visit(node: ast.AST, type_only: bool, deferred: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(_known(alias.name, modules), node, type_only, deferred)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                if node.level - 1 > len(base):
                    raise AssertionError(f"{name}:{node.lineno}: relative import beyond the top package")
                base = base[:len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            for alias in node.names:
                full = f"{origin}.{alias.name}" if origin else alias.name
                add(full if full in modules else _known(origin, modules), node, type_only, deferred)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True, deferred)
            for child in node.orelse:
                visit(child, type_only, deferred)
            return
        inner = deferred or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, type_only, inner)

    visit(ast.parse(source), False, False)
    return edges


def import_graph() -> tuple[dict[str, Path], list[Edge]]:
    modules = walk_modules()
    edges = []
    for name, path in modules.items():
        edges += imports_of(path.read_text(encoding="utf-8"), name, path.name == "__init__.py", modules)
    return modules, edges


def strongly_connected(nodes, edges: list[Edge]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (or a module importing
    itself), each sorted, the list sorted."""
    successors = defaultdict(set)
    for edge in edges:
        successors[edge.source].add(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(successors[node]):
            if succ not in index:
                connect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in successors[node]:
                components.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(set(nodes) | set(successors)) + 1000))
    try:
        for node in sorted(set(nodes) | set(successors)):
            if node not in index:
                connect(node)
    finally:
        sys.setrecursionlimit(limit)
    return sorted(components)


def _describe(edge: Edge) -> str:
    kind = ", type-only" if edge.type_only else (", in a function" if edge.deferred else "")
    return f"{edge.target} (line {edge.line}{kind})"


def one_cycle(component: list[str], edges: list[Edge]) -> str:
    """A shortest circle through the component's first module, written edge by edge."""
    members = set(component)
    by_source = defaultdict(list)
    for edge in sorted(edges, key=lambda e: (e.type_only, e.deferred, e.line)):
        if edge.source in members and edge.target in members:
            by_source[edge.source].append(edge)
    start = component[0]
    paths = {start: []}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for edge in by_source[node]:
            if edge.target == start:
                path = paths[node] + [edge]
                return start + "".join(f" -> {_describe(e)}" for e in path)
            if edge.target not in paths:
                paths[edge.target] = paths[node] + [edge]
                queue.append(edge.target)
    raise AssertionError(f"no circle through {start} in {component}")


def layer_of(module: str) -> int | None:
    """The index in LAYERS of ``module``'s layer, None for a module of no layer."""
    best = None
    for i, entry in enumerate(LAYERS):
        if module == entry or module.startswith(entry + "."):
            if best is None or len(entry) > len(LAYERS[best]):
                best = i
    if best is None:
        return None
    entry = LAYERS[best]
    split = any(other.startswith(entry + ".") for other in LAYERS)
    return best if (module == entry or not split) else None


def upward_imports(edges: list[Edge]) -> list[str]:
    found = []
    for edge in edges:
        source, target = layer_of(edge.source), layer_of(edge.target)
        if source is not None and target is not None and target > source:
            found.append(f"{edge.source}:{edge.line} imports {edge.target} "
                         f"({LAYERS[source]} < {LAYERS[target]}"
                         f"{', type-only' if edge.type_only else ''}{', in a function' if edge.deferred else ''})")
    return sorted(found)


# -- the checks of the walker itself: the tests below must not pass on an empty graph ------------

def test_walker_sees_the_imports():
    modules, edges = import_graph()
    assert {m.split(".")[0] for m in modules} == set(PACKAGES)
    assert len(modules) > 60, sorted(modules)
    pairs = {(e.source, e.target) for e in edges}
    # ``from ..core.budget import CostModel`` in search/engine/driver.py
    assert ("search.engine.driver", "search.core.budget") in pairs
    # ``from .cli.main import main`` in search/__main__.py
    assert ("search.__main__", "search.cli.main") in pairs
    # ``from .attention import ...`` in a package __init__ (litv2/layers/__init__.py)
    assert ("litv2.layers", "litv2.layers.attention") in pairs
    assert len(edges) > 100


def test_walker_resolves_relative_deferred_and_type_only_imports():
    modules = {"pkg", "pkg.sub", "pkg.sub.a", "pkg.sub.b", "pkg.other", "pkg.other.c"}
    source = (
        "import os\n"
        "from typing import TYPE_CHECKING\n"
        "from . import b\n"
        "from ..other import c\n"
        "if TYPE_CHECKING:\n"
        "    from pkg.other.c import Thing\n"
        "def f():\n"
        "    import pkg.other\n"
        "    from .. import missing_name\n")
    edges = imports_of(source, "pkg.sub.a", False, modules)
    assert sorted(edges) == sorted([
        Edge("pkg.sub.a", "pkg.sub.b", 3, False, False),
        Edge("pkg.sub.a", "pkg.other.c", 4, False, False),
        Edge("pkg.sub.a", "pkg.other.c", 6, True, False),
        Edge("pkg.sub.a", "pkg.other", 8, False, True),
        Edge("pkg.sub.a", "pkg", 9, False, True),
    ])
    # in a package __init__, ``.`` is the package itself
    assert imports_of("from .a import x\n", "pkg.sub", True, modules) == [Edge("pkg.sub", "pkg.sub.a", 1, False, False)]


def test_cycle_and_layer_checks_find_what_they_should():
    edges = [Edge("a", "b", 1, False, False), Edge("b", "c", 2, False, True), Edge("c", "a", 3, True, False),
             Edge("c", "d", 4, False, False)]
    components = strongly_connected("abcd", edges)
    assert components == [["a", "b", "c"]]
    assert one_cycle(components[0], edges) == (
        "a -> b (line 1) -> c (line 2, in a function) -> a (line 3, type-only)")
    assert strongly_connected("ab", [Edge("a", "b", 1, False, False)]) == []
    assert layer_of("search.engine.driver") == LAYERS.index("search.engine")
    assert layer_of("search.core") == LAYERS.index("search.core")
    assert layer_of("search") == LAYERS.index("search")
    assert layer_of("search.loose_module") is None
    assert layer_of("litv2.layers.hilo") == LAYERS.index("litv2")
    assert layer_of("experiments.cli") == LAYERS.index("experiments")
    assert upward_imports([Edge("search.core.budget", "search.engine.driver", 7, False, True)]) == [
        "search.core.budget:7 imports search.engine.driver (search.core < search.engine, in a function)"]
    assert upward_imports([Edge("search.engine.driver", "search.core.budget", 7, False, False),
                           Edge("search.engine.driver", "search.engine.cache", 8, False, False)]) == []


# -- the architecture ---------------------------------------------------------------------------

def test_every_module_has_a_layer():
    modules, _ = import_graph()
    assert [m for m in modules if layer_of(m) is None] == []


def test_no_import_circles():
    modules, edges = import_graph()
    circles = [one_cycle(component, edges) for component in strongly_connected(modules, edges)]
    if circles:
        pytest.fail(f"{len(circles)} import circle(s) (runtime or type-only):\n  " + "\n  ".join(circles),
                    pytrace=False)


def test_no_import_against_the_layer_order():
    _, edges = import_graph()
    upward = upward_imports(edges)
    if upward:
        pytest.fail(f"{len(upward)} import(s) against the layer order {' < '.join(LAYERS)}:\n  "
                    + "\n  ".join(upward), pytrace=False)
