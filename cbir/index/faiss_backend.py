"""The FAISS backend (``faiss-cpu``): in-process approximate search on one machine.

HNSW (``IndexHNSWFlat``, M = 32) is the default: high recall at a fraction of a
millisecond. IVF-PQ (``IndexIVFPQ``, 8-bit codes) is the low-memory option: about
``d / 16`` bytes per vector instead of ``4 d``, at some recall. Built once per store
version and metric, serialised with ``faiss.serialize_index`` and cached beside the
store as a derived array (rebuilt when the store changes).
"""

from __future__ import annotations

import math

import numpy as np

from ..config import FAISS_KINDS
from .base import IndexBackendError, VectorIndex, space_for

HNSW_M = 32
HNSW_EF_CONSTRUCTION = 200
KINDS = FAISS_KINDS


def _faiss():
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - a dependency
        raise IndexBackendError("the faiss backend needs `pip install faiss-cpu`") from exc
    return faiss


def _pq_subquantizers(d: int) -> int:
    """The largest of 64, 48, 32, 16, 8 that divides d (PQ needs d % m == 0)."""
    return next((m for m in (64, 48, 32, 16, 8) if d % m == 0), 1)


def build_faiss(vectors: np.ndarray, metric: str, kind: str = "hnsw"):
    """A FAISS index over the transformed ``vectors`` for ``metric``."""
    faiss = _faiss()
    if kind not in KINDS:
        raise IndexBackendError(f"unknown FAISS index kind {kind!r}; choose one of: {', '.join(KINDS)}")
    space = space_for(metric, "faiss")
    x = np.ascontiguousarray(space.transform(vectors), dtype=np.float32)
    fmetric = faiss.METRIC_INNER_PRODUCT if space.kind == "ip" else faiss.METRIC_L2
    d = x.shape[1]
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, HNSW_M, fmetric)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    else:
        nlist = max(1, min(4096, int(4 * math.sqrt(len(x)))))
        index = faiss.IndexIVFPQ(faiss.IndexFlat(d, fmetric), d, nlist, _pq_subquantizers(d), 8, fmetric)
        index.train(x[np.random.default_rng(0).permutation(len(x))[: max(nlist * 40, 10_000)]])
    index.add(x)
    return index


class FaissIndex(VectorIndex):
    backend = "faiss"

    def __init__(self, index, metric: str, kind: str = "hnsw"):
        self.index, self.metric, self.kind = index, metric, kind
        self.space = space_for(metric, "faiss")

    @classmethod
    def from_bytes(cls, data: np.ndarray, metric: str, kind: str) -> "FaissIndex":
        return cls(_faiss().deserialize_index(np.asarray(data, dtype=np.uint8)), metric, kind)

    def to_bytes(self) -> np.ndarray:
        return _faiss().serialize_index(self.index)

    def _params(self, k: int, rows):
        faiss = _faiss()
        selector = None if rows is None else faiss.IDSelectorBatch(np.asarray(rows, dtype=np.int64))
        if self.kind == "hnsw":  # the candidate list must hold k; past 64 its cost grows with it
            return faiss.SearchParametersHNSW(efSearch=max(64, k), sel=selector)
        return faiss.SearchParametersIVF(nprobe=min(self.index.nlist, 32), sel=selector)

    def search(self, queries, k, rows=None):
        q = np.ascontiguousarray(self.space.transform(np.atleast_2d(queries)), dtype=np.float32)
        scores, found = self.index.search(q, k, params=self._params(k, rows))
        dist = self.space.to_distance(scores.astype(np.float64))
        dist[found < 0] = np.inf
        return found.astype(np.int64), dist

    def add(self, vectors):
        self.index.add(np.ascontiguousarray(self.space.transform(vectors), dtype=np.float32))

    def remove(self, rows):
        if self.kind != "hnsw":
            raise IndexBackendError("an IVF-PQ index keeps no exact vectors to rebuild from: rebuild it from the store")
        keep = np.setdiff1d(np.arange(len(self)), np.asarray(rows, dtype=int))
        kept = self.index.reconstruct_n(0, len(self))[keep]  # HNSW keeps the (transformed) vectors
        index = _faiss().IndexHNSWFlat(kept.shape[1], HNSW_M, self.index.metric_type)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.add(kept)
        self.index = index

    def __len__(self):
        return int(self.index.ntotal)

    def describe(self):
        return {**super().describe(), "kind": self.kind}
