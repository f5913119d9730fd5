"""The exact backend: the stored vectors prepared once for one metric, searched by brute
force. It is the reference every ANN backend is tested against, the default below
``CBIR_EXACT_MAX`` vectors, and what :meth:`cbir.store.FeatureStore.index` returns (one class,
formerly ``cbir.distances.PreparedIndex`` beside this one).

Cosine keeps the L2-normalised matrix, Euclidean the squared norms, Bhattacharyya the
square roots of the sum-1 normalised vectors; chi-square has no shortcut. A matrix whose
float32 copy exceeds ``max_bytes`` (default :data:`PREPARED_MAX_BYTES`) is *streamed*: each
search prepares it block by block from the source (a memory-mapped float16 or float32
store), so memory stays bounded at any size.
"""

from __future__ import annotations

import numpy as np

from ..distances import _EPS, METRICS, _all_finite, _check, _check_non_negative, l2_normalise, normalise_metric, refine_euclidean
from ..errors import CBIRError, MetricError, use_setting
from .base import VectorIndex, top_k

#: A stored matrix whose prepared float32 copy would be larger than this is not copied into
#: memory: it is searched in row blocks read straight from its (memory-mapped) source.
PREPARED_MAX_BYTES = 2 << 30
_STREAM_ROWS = 1024  # rows per block of a streamed search (5 MiB of float32 at d = 1280: casts stay in cache)


class ExactIndex(VectorIndex):
    """(n, d) stored vectors (any float dtype; a memory map stays one) prepared for
    ``metric`` (a name or alias of :data:`cbir.distances.METRICS`).

    ``distances(queries)`` gives (q, n) float32 distances to every stored vector;
    ``search`` / ``candidates`` answer the :class:`~cbir.index.base.VectorIndex` interface
    (every row is a candidate: exact search ranks the whole store). Raises :class:`cbir.errors.MetricError`
    for a non-2-D or non-numeric matrix, :class:`~cbir.errors.MetricError` for NaN or
    infinity (or negative values under a histogram metric), and the unknown-name error
    for an unknown metric.
    """

    backend = "exact"
    approximate = False

    def __init__(self, stored, metric: str, max_bytes: int | None = None):
        self._max_bytes = max_bytes
        self.metric = normalise_metric(metric)
        self._spec = METRICS[self.metric]
        x = np.asarray(stored)  # a memory map stays one
        self._stored = x
        if x.ndim != 2:
            raise MetricError(f"expected a 2-D (n, d) array of stored vectors; got shape {x.shape}")
        self.dim, self._n = int(x.shape[1]), int(x.shape[0])
        self.streamed = self._n * self.dim * 4 > (PREPARED_MAX_BYTES if max_bytes is None else max_bytes)
        if self.streamed:
            if not np.issubdtype(x.dtype, np.floating):
                raise MetricError("features must be floating point")
            self._source, self._x, self._aux = x, None, None
            return
        _, x = _check(np.zeros((1, x.shape[1]), dtype=np.float32), x)
        if self._spec.histogram:
            _check_non_negative(self._spec.label.lower(), x)
        self._x, self._aux = self._spec.prepare(x)

    def __len__(self) -> int:
        return self._n

    @property
    def vectors(self) -> np.ndarray:
        """The prepared matrix (for cosine: the L2-normalised vectors)."""
        if self.streamed:
            raise CBIRError(
                f"this store ({self._n:,} x {self.dim}) is searched in streaming blocks, too large to prepare in memory "
                "for re-ranking", remedy=use_setting("backend", "faiss", "FAISS (HNSW / IVF-PQ)"),
            )
        return self._x

    def distances(self, queries) -> np.ndarray:
        q, _ = _check(queries, np.zeros((0, self.dim), dtype=np.float32))
        if self._spec.histogram:
            _check_non_negative(self._spec.label.lower(), q)
        if not self.streamed:
            return self._spec.kernel(q, self._x, self._aux)
        return self._streamed(q)

    def _streamed(self, q: np.ndarray) -> np.ndarray:
        """Distances block by block from the source. Cosine and Euclidean need only each
        row's squared norm besides the dot products: the norms are computed on the first
        search (which also checks that every value is finite) and kept (n floats)."""
        fast = self.metric in ("cosine", "euclidean")
        if fast and self._aux is None:
            self._aux = self._row_norms()
        qn = l2_normalise(q) if self.metric == "cosine" else q
        q_sq = (q * q).sum(1)[:, None]
        out = np.empty((q.shape[0], self._n), dtype=np.float32)
        for start, x in self._blocks():
            if not fast:
                if not _all_finite(x):
                    raise MetricError("features contain NaN or infinity")
                if self._spec.histogram:
                    _check_non_negative(self._spec.label.lower(), x)
                out[:, start : start + len(x)] = self._spec.kernel(q, *self._spec.prepare(x))
                continue
            dots = qn @ x.T
            sq = self._aux[start : start + len(x)]
            if self.metric == "cosine":
                out[:, start : start + len(x)] = np.clip(1.0 - dots / np.maximum(np.sqrt(sq), _EPS), 0.0, 2.0)
            else:
                out[:, start : start + len(x)] = np.sqrt(np.maximum(q_sq + sq - 2.0 * dots, 0.0))
        if self.metric == "euclidean":  # the nearest recomputed exactly, read back from the source
            refine_euclidean(q, out, lambda rows: np.asarray(self._source[rows], dtype=np.float32))
        return out

    def _blocks(self):
        """(first row, float32 block) over the source, through one small reused buffer
        (float16 -> float32 in cache); a block is valid until the next one is read."""
        buf = np.empty((_STREAM_ROWS, self.dim), dtype=np.float32)
        for start in range(0, self._n, _STREAM_ROWS):
            block = self._source[start : start + _STREAM_ROWS]
            x = buf[: len(block)]
            np.copyto(x, block)
            yield start, x

    def _row_norms(self) -> np.ndarray:
        """Squared L2 norm of every stored row, read block by block (NaN or inf refused)."""
        sq = np.empty(self._n, dtype=np.float32)
        for start, x in self._blocks():
            sq[start : start + len(x)] = np.einsum("ij,ij->i", x, x)
        if not np.isfinite(sq).all():
            raise MetricError("features contain NaN or infinity")
        return sq

    @property
    def stored(self) -> np.ndarray:
        """The (n, d) matrix as given (not prepared; a memory map stays one)."""
        return self._stored

    def candidates(self, queries: np.ndarray, depth: int | None = None, n: int | None = None) -> np.ndarray:
        """(q, n) distances to every stored vector: exact search returns them all (``depth``
        and ``n`` are ignored)."""
        return self.distances(np.atleast_2d(queries))

    def search(self, queries, k, rows=None):
        d = self.distances(np.atleast_2d(queries)).astype(np.float64)
        if rows is not None:
            keep = np.zeros(d.shape[1], dtype=bool)
            keep[np.asarray(rows, dtype=int)] = True
            d[:, ~keep] = np.inf
        return top_k(d, k)

    def add(self, vectors):
        self.__init__(np.vstack([np.asarray(self._stored, dtype=np.float32), np.asarray(vectors, dtype=np.float32)]),
                      self.metric, self._max_bytes)

    def remove(self, rows):
        keep = np.setdiff1d(np.arange(len(self)), np.asarray(rows, dtype=int))
        self.__init__(np.asarray(self._stored[keep]), self.metric, self._max_bytes)
