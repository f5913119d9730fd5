"""Vector indexes behind one interface (:class:`~cbir.index.base.VectorIndex`): ``exact``
(numpy, the reference), ``faiss`` (one machine, approximate) and ``milvus`` (a server or
cluster). Each backend is one record in :data:`BACKENDS` (:mod:`cbir.index.backends`):
label, exact or approximate, metrics and re-rankings served, ``available(settings)`` and
``open(...)``. ``open_index`` opens the chosen backend's index of a feature store for a
metric; ``backend_status`` says which backends can run here and why not."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import AUTO
from ..errors import unknown
from .backends import BACKENDS, Backend, faiss_index, get_backend
from .base import IndexBackendError, UnsupportedMetric, VectorIndex, candidate_matrix, space_for

AUTO_LABEL = "Automatic (by size)"
#: what a request may name: ``auto`` or a backend (the API schema and the CLI read this)
CHOICES = (AUTO, *BACKENDS)


def backend_label(name: str) -> str:
    """The label of ``auto`` or of a backend (from its record)."""
    return AUTO_LABEL if name == AUTO else get_backend(name).label


def check_backend(name: str) -> str:
    """``name`` lower-cased (None: ``auto``); raises the unknown-name error for anything not in :data:`CHOICES`."""
    key = str(name or AUTO).strip().lower()
    if key not in CHOICES:
        raise unknown("index backend", name, CHOICES)
    return key


def resolve_backend(name: str, vectors: int, settings, metric: str | None = None, rerank: str | None = None) -> str:
    """The backend that serves a request: ``auto`` is exact up to ``settings.exact_max``
    vectors (the largest store searched) and FAISS above it, when faiss-cpu is installed and
    serves ``metric`` and the ``rerank`` method (FAISS has no chi-square: ``auto`` then
    stays exact, which serves every metric, instead of choosing a backend that refuses
    the request)."""
    key = check_backend(name)
    if key != AUTO:
        return key
    faiss = BACKENDS["faiss"]
    serves = (metric is None or faiss.supports_metric(metric)) and (rerank is None or faiss.supports_rerank(rerank))
    return "faiss" if vectors > settings.exact_max and serves and faiss.available(settings)[0] else "exact"


def open_index(backend: str, store, folder: Path, metric: str, settings, labels=None, collection: str = "collection") -> VectorIndex:
    """The ``backend``'s index of ``store`` for ``metric`` (built, loaded or synced): its record's ``open``."""
    return get_backend(check_backend(backend)).open(store, folder, metric, settings, labels, collection)


def expanded_query(index: VectorIndex, vectors: np.ndarray, query: np.ndarray, n: int, alpha: float, own: int = -1) -> np.ndarray:
    """αQE through an index (Radenović, Tolias & Chum, TPAMI 2018): the (d,) query's top-n
    neighbours (store row ``own`` excluded) come from a first ``index.search``; the
    expansion itself is :func:`cbir.rerank.alpha_query_expansion` over those neighbours'
    stored ``vectors`` (N, d). Returns the (d,) float32 L2-normalised expanded query, which
    the caller searches with again."""
    from ..distances import l2_normalise
    from ..rerank import alpha_query_expansion

    q = l2_normalise(query)[None, :]
    rows, _ = index.search(q, n + 1)
    rows = [r for r in rows[0] if r >= 0 and r != own][:n]
    if not rows:
        return q[0]
    return alpha_query_expansion(q, l2_normalise(vectors[rows]), len(rows), alpha)[0]


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
    """name -> (can run here, why) for every backend, without building anything."""
    return {name: b.available(settings) for name, b in BACKENDS.items()}


__all__ = ["AUTO", "AUTO_LABEL", "BACKENDS", "Backend", "CHOICES", "IndexBackendError", "UnsupportedMetric", "VectorIndex",
           "backend_label", "backend_status", "candidate_matrix", "check_backend", "expanded_query", "faiss_index", "get_backend",
           "neighbour_graph", "open_index", "resolve_backend", "space_for"]
