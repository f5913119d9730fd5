"""Vector indexes behind one interface: ``exact`` (numpy, the reference), ``faiss`` (one
machine, approximate) and ``milvus`` (a server or cluster). ``open_index`` builds or opens
the chosen backend's index of a feature store for a metric; ``backend_status`` says which
backends can run here and why not."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import AUTO, BACKENDS
from ..errors import unknown
from .base import IndexBackendError, UnsupportedMetric, VectorIndex, space_for

CHOICES = (AUTO, *BACKENDS)
BACKEND_LABELS = {AUTO: "Automatic (by size)", "exact": "Exact (numpy)", "faiss": "FAISS (HNSW / IVF-PQ)", "milvus": "Milvus server"}


def check_backend(name: str) -> str:
    key = str(name or AUTO).strip().lower()
    if key not in CHOICES:
        raise unknown("index backend", name, CHOICES)
    return key


def resolve_backend(name: str, vectors: int, settings) -> str:
    """The backend that serves a request: ``auto`` is exact up to ``settings.exact_max``
    vectors (the largest store searched) and FAISS above it, when faiss-cpu is installed."""
    import importlib.util

    key = check_backend(name)
    if key != AUTO:
        return key
    return "faiss" if vectors > settings.exact_max and importlib.util.find_spec("faiss") else "exact"


def open_index(backend: str, store, folder: Path, metric: str, settings, labels=None, collection: str = "collection") -> VectorIndex:
    """The ``backend``'s index of ``store`` for ``metric`` (built, loaded or synced)."""
    backend = check_backend(backend)
    if backend == "exact":
        from .exact import ExactIndex

        return ExactIndex(store.embeddings, metric)
    if backend == "faiss":
        return faiss_index(store, folder, f"faiss-{settings.faiss_kind}-{metric}", store.embeddings, metric, settings.faiss_kind)
    if not settings.milvus_uri:
        raise IndexBackendError("the milvus backend needs a server: set CBIR_MILVUS_URI (e.g. http://localhost:19530)")
    from .milvus_backend import MilvusIndex

    labels = labels if labels is not None else [None] * len(store)
    return MilvusIndex(store, labels, metric, settings.milvus_uri, settings.milvus_token, collection)


def faiss_index(store, folder: Path, name: str, vectors: np.ndarray, metric: str, kind: str) -> VectorIndex:
    """A FAISS index over ``vectors`` (the store's, or vectors derived from it such as DBA's),
    built once per store version and cached beside the store as ``<name>.npz``."""
    from ..derived import derived_array
    from .faiss_backend import FaissIndex, build_faiss

    space_for(metric, "faiss")  # chi-square: a clear error before any work
    data, _ = derived_array(store, folder, name, lambda: FaissIndex(build_faiss(vectors, metric, kind), metric, kind).to_bytes())
    return FaissIndex.from_bytes(data, metric, kind)


def candidate_row(index: VectorIndex, query: np.ndarray, depth: int, n: int) -> np.ndarray:
    """One query's distances over all ``n`` store rows: the ``depth`` candidates the index
    returned, NaN for every other row ("not returned": fusion and ranking skip them)."""
    rows, dist = index.search(query[None, :], depth)
    out = np.full(n, np.nan)
    ok = rows[0] >= 0
    out[rows[0][ok]] = dist[0][ok]
    return out


def expanded_query(index: VectorIndex, vectors: np.ndarray, query: np.ndarray, n: int, alpha: float, own: int = -1) -> np.ndarray:
    """αQE through the index: the query's top-n neighbours (itself excluded) come from a
    first index search, their stored vectors are averaged in cosine space, and the caller
    searches again with the result."""
    from ..distances import l2_normalise

    q = l2_normalise(query)[None, :]
    rows, _ = index.search(q, n + 1)
    rows = [r for r in rows[0] if r >= 0 and r != own][:n]
    neighbours = l2_normalise(vectors[rows])
    w = np.clip(neighbours @ q[0], 0.0, None) ** alpha
    return l2_normalise(q[0] + w @ neighbours)


def neighbour_graph(index: VectorIndex, vectors: np.ndarray, n: int, batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Each stored vector's n nearest others by searching the index with every stored
    vector: (N, n) store rows (itself left out, -1 where fewer exist) and their cosine
    similarities. DBA's k-NN graph without the N^2 brute force; ``index`` is a cosine index."""
    if getattr(index, "metric", "cosine") != "cosine":
        raise IndexBackendError(f"the k-NN graph of DBA needs a cosine index, not {index.metric}")
    rows_out = np.empty((len(vectors), n), dtype=np.int64)
    sims_out = np.empty((len(vectors), n), dtype=np.float32)
    for start in range(0, len(vectors), batch):
        rows, dist = index.search(np.asarray(vectors[start : start + batch], dtype=np.float32), n + 1)
        rows[rows == np.arange(start, start + len(rows))[:, None]] = -1  # itself
        first = np.argsort(rows < 0, axis=1, kind="stable")[:, :n]  # found rows first, in rank order
        rows_out[start : start + len(rows)] = np.take_along_axis(rows, first, axis=1)
        sims_out[start : start + len(rows)] = 1.0 - np.take_along_axis(dist, first, axis=1)
    return rows_out, sims_out


def backend_status(settings) -> dict[str, tuple[bool, str]]:
    """name -> (can run here, why) without building anything."""
    import importlib.util

    out = {"exact": (True, "numpy, always available")}
    out["faiss"] = (True, f"faiss-cpu, {settings.faiss_kind.upper()}") if importlib.util.find_spec("faiss") else \
        (False, "`pip install faiss-cpu`")
    if importlib.util.find_spec("pymilvus") is None:
        out["milvus"] = (False, "`pip install pymilvus`")
    elif not settings.milvus_uri:
        out["milvus"] = (False, "set CBIR_MILVUS_URI to a Milvus server")
    else:
        out["milvus"] = (True, f"server at {settings.milvus_uri}")
    return out


__all__ = ["AUTO", "BACKENDS", "BACKEND_LABELS", "CHOICES", "resolve_backend", "IndexBackendError", "UnsupportedMetric", "VectorIndex", "backend_status", "candidate_row",
           "check_backend", "expanded_query", "faiss_index", "neighbour_graph", "open_index"]
