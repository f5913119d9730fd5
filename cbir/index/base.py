"""The vector-index interface every backend implements, and the metric spaces that map the
project's four distances onto what an ANN engine can search.

An index is built from one feature store for one metric and answers
``search(queries, k) -> (rows, distances)``: for each query the store rows of its ``k``
nearest vectors (-1 where fewer exist) and their distances in the project's units
(lower is closer), so results are comparable across backends.

The ANN engines search inner products or squared L2 distances. The project's metrics map
onto them through the same transforms the exact index uses:

* cosine: L2-normalised vectors, inner product ``s``, distance ``1 - s``;
* euclidean: raw vectors, squared L2 ``s``, distance ``sqrt(s)``;
* bhattacharyya: square roots of the sum-1 histograms, inner product ``bc``, distance
  ``sqrt(1 - bc)``;
* chi-square has no such form: no ANN backend serves it (a clear error, never a silent
  approximation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..distances import METRICS, _sqrt_histogram, l2_normalise
from ..errors import CBIRError, use_setting


class IndexBackendError(CBIRError):
    """A backend that cannot serve a request: unknown, unreachable, or the wrong metric."""


class UnsupportedMetric(IndexBackendError):
    pass


@dataclass(frozen=True)
class Space:
    """How a metric is searched by an ANN engine: vector transform, engine metric, and the
    conversion of the engine's scores back to the project's distances."""

    kind: str  # "ip" (larger is closer) or "l2" (squared, smaller is closer)
    transform: Callable[[np.ndarray], np.ndarray]
    to_distance: Callable[[np.ndarray], np.ndarray]


def _sqrt_clip(x: np.ndarray) -> np.ndarray:
    return np.sqrt(np.clip(x, 0.0, None))


SPACES: dict[str, Space] = {
    "cosine": Space("ip", l2_normalise, lambda s: np.clip(1.0 - s, 0.0, 2.0)),
    "euclidean": Space("l2", lambda x: np.ascontiguousarray(x, dtype=np.float32), _sqrt_clip),
    "bhattacharyya": Space("ip", lambda x: _sqrt_histogram(np.asarray(x, dtype=np.float32)), lambda s: _sqrt_clip(1.0 - np.clip(s, 0.0, 1.0))),
}


def space_for(metric: str, backend: str) -> Space:
    if metric not in SPACES:
        raise UnsupportedMetric(
            f"the {backend} backend cannot serve {METRICS[metric].label.lower()} (it has no inner-product or L2 form; "
            f"it serves {', '.join(SPACES)})", remedy=use_setting("backend", "exact", "Exact (numpy)"),
        )
    return SPACES[metric]


class VectorIndex:
    """What every backend offers. ``rows`` are the store's row numbers."""

    backend = ""
    approximate = True

    def candidates(self, queries: np.ndarray, depth: int, n: int) -> np.ndarray:
        """(q, n) float distances over all ``n`` store rows: each query's ``depth`` nearest as
        found by the index, NaN for every other row ("not returned": fusion and ranking skip
        them). What every search and evaluation asks an index for; the exact index returns
        every row's distance instead (see :class:`cbir.index.exact.ExactIndex`)."""
        return candidate_matrix(self, queries, depth, n)

    def search(self, queries: np.ndarray, k: int, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(q, k) rows and distances of the nearest vectors, nearest first; ``rows``
        restricts the search to those store rows (a label filter). Missing: row -1, +inf."""
        raise NotImplementedError

    def add(self, vectors: np.ndarray) -> None:
        """Append vectors as the next store rows (incremental re-indexing)."""
        raise NotImplementedError

    def remove(self, rows: np.ndarray) -> None:
        """Forget store rows."""
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"backend": self.backend, "approximate": self.approximate, "vectors": len(self)}


def candidate_matrix(index: VectorIndex, queries: np.ndarray, depth: int, n: int) -> np.ndarray:
    """(q, n) float64: the distances of the ``depth`` rows ``index.search`` returns for each
    of the (q, d) ``queries`` (a (d,) query counts as one), NaN for every other row of the
    ``n`` store rows. The one place where an approximate index's answer becomes a distance row."""
    found, dist = index.search(np.atleast_2d(queries), depth)
    out = np.full((len(found), n), np.nan)
    ok = found >= 0
    out[np.nonzero(ok)[0], found[ok]] = dist[ok]
    return out


def top_k(distances: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and values of the k smallest entries of each row of a (q, n) matrix, sorted;
    padded with (-1, +inf) when n < k."""
    q, n = distances.shape
    kk = min(k, n)
    part = np.argpartition(distances, kk - 1, axis=1)[:, :kk] if kk < n else np.tile(np.arange(n), (q, 1))
    vals = np.take_along_axis(distances, part, axis=1)
    order = np.argsort(vals, axis=1, kind="stable")
    rows, vals = np.take_along_axis(part, order, axis=1), np.take_along_axis(vals, order, axis=1)
    if kk < k:
        rows = np.hstack([rows, np.full((q, k - kk), -1)])
        vals = np.hstack([vals, np.full((q, k - kk), np.inf)])
    rows = np.where(np.isfinite(vals), rows, -1)
    return rows, vals
