"""The exact backend: today's prepared numpy matrices, the reference every ANN backend is
tested against (and the default below ``CBIR_EXACT_MAX`` vectors)."""

from __future__ import annotations

import numpy as np

from ..distances import PreparedIndex
from .base import VectorIndex, top_k


class ExactIndex(VectorIndex):
    backend = "exact"
    approximate = False

    def __init__(self, vectors: np.ndarray, metric: str):
        self.metric = metric
        self._vectors = vectors if isinstance(vectors, np.ndarray) else np.asarray(vectors, dtype=np.float32)
        self._prepared = PreparedIndex(self._vectors, metric)

    def distances(self, queries: np.ndarray) -> np.ndarray:
        """Distances to every stored vector (what fusion and evaluation use)."""
        return self._prepared.distances(queries)

    def search(self, queries, k, rows=None):
        d = self.distances(np.atleast_2d(queries)).astype(np.float64)
        if rows is not None:
            keep = np.zeros(d.shape[1], dtype=bool)
            keep[np.asarray(rows, dtype=int)] = True
            d[:, ~keep] = np.inf
        return top_k(d, k)

    def add(self, vectors):
        self._vectors = np.vstack([self._vectors, np.asarray(vectors, dtype=np.float32)])
        self._prepared = PreparedIndex(self._vectors, self.metric)

    def remove(self, rows):
        keep = np.setdiff1d(np.arange(len(self)), np.asarray(rows, dtype=int))
        self._vectors = self._vectors[keep]
        self._prepared = PreparedIndex(self._vectors, self.metric)

    def __len__(self):
        return int(self._vectors.shape[0])
