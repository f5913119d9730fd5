"""How the engine is wired, counted: the import graph of cbir/ (modules, layers, cycles, imports
pointing up to a front end) and what one search costs in lookups (store manifest checks,
registry lookups, id-space builds, upload hashes and decodes).

    python bench/structure.py            # this checkout
    python bench/structure.py OLD_DIR    # another checkout (e.g. a git worktree of an older commit)

The graph is read with the same ast reader as tests/unit/test_imports.py (lazy imports count).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def graph_figures(root: Path) -> dict:
    sys.path.insert(0, str(HERE))
    from tests.unit.test_imports import FRONT_ENDS, cycles, import_graph, module_name  # noqa: F401

    import tests.unit.test_imports as reader

    reader.ROOT = root  # read the other checkout's files with this checkout's reader
    graph = import_graph()
    found = cycles(graph)
    component = {m: i for i, c in enumerate(found) for m in c}
    node = lambda m: component.get(m, m)  # noqa: E731  (a cycle counts as one node)
    dag: dict = {}
    for m, targets in graph.items():
        dag.setdefault(node(m), set()).update(node(t) for t in targets if node(t) != node(m))
    depth: dict = {}

    def layer(n) -> int:
        if n not in depth:
            depth[n] = 1 + max((layer(t) for t in dag.get(n, ())), default=0)
        return depth[n]

    front = lambda m: any(m == f or m.startswith(f + ".") for f in FRONT_ENDS)  # noqa: E731
    up = [(m, t) for m, ts in graph.items() if not front(m) for t in ts if front(t)]
    return {"modules": len(graph), "layers": max(layer(n) for n in dag), "cycles": len(found),
            "modules in cycles": sum(len(c) for c in found), "imports pointing up": len(up),
            "lazy imports within cbir": lazy_imports(root)}


def lazy_imports(root: Path) -> int:
    """Imports of a cbir module inside a function (deferred: often a cycle dodged, or a heavy
    module kept out of start-up), TYPE_CHECKING blocks excluded."""
    import ast

    count = 0
    for path in (root / "cbir").rglob("*.py"):
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                count += sum(1 for node in ast.walk(fn) if isinstance(node, ast.ImportFrom)
                             and (node.level or (node.module or "").startswith("cbir")))
    return count


def search_figures() -> dict:
    """Calls made by one search on two models by id, and by one upload searched twice."""
    import numpy as np  # noqa: F401

    import cbir
    from cbir.engine import Engine

    counts = {"store manifest checks": 0, "registry lookups (get_spec)": 0, "id-space builds": 0,
              "upload hashes": 0, "upload decodes": 0}
    modules = [m for name, m in list(sys.modules.items()) if name.startswith("cbir") and m is not None]

    def counting(name, key):
        for module in modules:
            real = getattr(module, name, None)
            if callable(real) and not getattr(real, "_counted", False):
                def wrapper(*a, _real=real, **k):
                    counts[key] += 1
                    return _real(*a, **k)
                wrapper._counted = True
                setattr(module, name, wrapper)

    engine = Engine(HERE / "image.orig")
    two = ["efficientnet_lite0", "efficientnet_lite1"]
    engine.search(two, image_id="412", method="rrf")  # warm: stores open, id space cached
    engine.indexes._spaces.clear() if hasattr(engine.indexes, "_spaces") else None
    counting("store_stamp", "store manifest checks")
    counting("get_spec", "registry lookups (get_spec)")
    counting("common_ids", "id-space builds")
    counting("open_image", "upload decodes")
    real_blake = hashlib.blake2b

    def blake(*a, **k):
        counts["upload hashes"] += 1
        return real_blake(*a, **k)

    by_id = {}
    engine.search(two, image_id="413", method="rrf")
    by_id = dict(counts)
    for key in counts:
        counts[key] = 0
    data = (HERE / "image.orig" / "612.jpg").read_bytes()
    hashlib.blake2b = blake
    try:
        engine.search("efficientnet_lite0", image=data)
        engine.search("efficientnet_lite0", "euclidean", image=data)
    finally:
        hashlib.blake2b = real_blake
    upload = dict(counts)
    del cbir
    return {"by id, 2 models (first search of a new id space)": by_id, "upload, 1 model, searched twice": upload}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", nargs="?", default=str(HERE))
    parser.add_argument("--search-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    root = Path(args.checkout).resolve()
    if args.search_only:
        for title, figures in search_figures().items():
            print(f"one search, {title}:")
            for key, value in figures.items():
                print(f"  {key:<32} {value}")
        return
    print(f"import graph of {root.name}/cbir:")
    for key, value in graph_figures(root).items():
        print(f"  {key:<32} {value}")
    # the search figures run in that checkout's own code, in a fresh process
    env = {**os.environ, "PYTHONPATH": str(root), "TF_CPP_MIN_LOG_LEVEL": "3", "CBIR_FEATURES_DIR": str(HERE / "features")}
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--search-only"], cwd=root, env=env, check=True)


if __name__ == "__main__":
    main()
