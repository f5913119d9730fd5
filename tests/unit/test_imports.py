"""The import graph of ``cbir/``, built from the source with ``ast`` (function-level imports
included: a lazy import is still a dependency): no import cycle, nothing in the engine
imports a front end (API, CLI) or the UI, and the helpers see a store catalogue, not the engine."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: Cycles (strongly connected components) allowed: none. A cycle not listed here fails the
#: test; so does one listed that is gone.
KNOWN_CYCLES: list[set[str]] = []


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: str = "cbir") -> dict[str, set[str]]:
    files = {module_name(f): f for f in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for name, path in files.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(parent + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in files and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_reader_on_a_hand_made_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_but_the_known_ones():
    found = cycles(import_graph())
    new = [c for c in found if c not in KNOWN_CYCLES]
    gone = [c for c in KNOWN_CYCLES if c not in found]
    assert not new, f"new import cycles: {new}"
    assert not gone, f"cycles broken (take them off KNOWN_CYCLES): {gone}"


def test_the_engine_never_imports_the_ui():
    ui = {"app", "app_pages", "streamlit"}
    for path in (ROOT / "cbir").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            assert not [n for n in names if n.split(".")[0] in ui], f"{path.relative_to(ROOT)} imports {names}"


#: The front ends: the engine below them never imports one (an import "pointing up").
FRONT_ENDS = ("cbir.api", "cbir.cli", "cbir.run", "cbir.__main__")


def test_nothing_points_up_to_a_front_end():
    def front(name: str) -> bool:
        return any(name == f or name.startswith(f + ".") for f in FRONT_ENDS)

    graph = import_graph()
    up = sorted((m, t) for m, targets in graph.items() if not front(m) for t in targets if front(t))
    assert not up, f"engine modules import a front end: {up}"


def test_the_helpers_take_the_catalogue_not_the_engine():
    """The modules the engine calls back into see only the store catalogue."""
    graph = import_graph()
    for helper in ("cbir.experiments", "cbir.index_cache", "cbir.distance_rows", "cbir.tuning", "cbir.maps", "cbir.catalogue"):
        assert "cbir.engine" not in graph[helper], f"{helper} imports the engine"


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in graph[todo.pop()] - seen:
            seen.add(w)
            todo.append(w)
    return seen


def test_the_extractor_registry_imports_no_implementation():
    """The registry is data and lookups; only builders.py reaches the implementations."""
    graph = import_graph()
    implementations = {"cbir.extractors.keras_apps", "cbir.extractors.efficientnet_lite", "cbir.extractors.torchfile",
                       "cbir.extractors.builders", "cbir.extractors"}
    assert not reachable(graph, "cbir.extractors.registry") & implementations
    for module in ("cbir.extractors.keras_apps", "cbir.extractors.efficientnet_lite"):
        assert "cbir.extractors" not in graph[module], f"{module} imports the package, not the registry"
