"""Distances between query vectors (q, d) and stored vectors (n, d) -> (q, n).

Every metric is a distance: lower is closer, zero for identical vectors, so the
ranking code has one rule. Public functions validate once; the private kernels
assume clean float32 input. Memory stays bounded by working on row chunks of the
stored matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import CBIRError, MetricError, unknown

#: A stored matrix whose prepared float32 copy would be larger than this is not copied into
#: memory: it is searched in row blocks read straight from its (memory-mapped) source.
PREPARED_MAX_BYTES = 2 << 30
_STREAM_ROWS = 1024  # rows per block of a streamed search (5 MiB of float32 at d = 1280: casts stay in cache)
#: Elements of the (q, chunk, d) temporary used by the non-matmul kernels.
_CHUNK_ELEMENTS = 1 << 23  # 8 Mi floats = 32 MiB in float32
_EPS = 1e-12


def _check(queries: np.ndarray, stored: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = np.asarray(queries)
    x = np.asarray(stored)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or x.ndim != 2:
        raise MetricError(f"expected 2-D arrays (q, d) and (n, d); got shapes {q.shape} and {x.shape}")
    if q.shape[1] != x.shape[1]:
        raise MetricError(f"feature widths differ: queries have d={q.shape[1]}, stored d={x.shape[1]}")
    if not (np.issubdtype(q.dtype, np.number) and np.issubdtype(x.dtype, np.number)):
        raise MetricError("features must be numeric")
    q = np.ascontiguousarray(q, dtype=np.float32)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not (_all_finite(q) and _all_finite(x)):
        raise MetricError("features contain NaN or infinity")
    return q, x


def _all_finite(a: np.ndarray) -> bool:
    """np.isfinite(a).all() without an (n, d) temporary for large stores."""
    step = max(1, _CHUNK_ELEMENTS // max(a.shape[1], 1))
    return all(np.isfinite(a[i : i + step]).all() for i in range(0, a.shape[0], step))


def _check_non_negative(name: str, *arrays: np.ndarray) -> None:
    for a in arrays:
        if a.size and a.min() < 0:
            raise MetricError(
                f"{name} treats features as histograms and needs non-negative values "
                f"(min found {float(a.min()):.4g}); use cosine or euclidean for these features"
            )


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows (the last axis) scaled to unit length, as float32; a zero row stays zero."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), _EPS)


def _sqrt_histogram(a: np.ndarray) -> np.ndarray:
    return np.sqrt(a / np.maximum(a.sum(1, keepdims=True), _EPS))


def _chi_square(q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """0.5 * sum_i (q_i - x_i)^2 / (q_i + x_i), with 0/0 taken as 0, on row chunks of x."""
    out = np.empty((q.shape[0], x.shape[0]), dtype=np.float32)
    step = max(1, _CHUNK_ELEMENTS // max(q.shape[1], 1))
    for qi in range(q.shape[0]):
        row = q[qi]
        for start in range(0, x.shape[0], step):
            block = x[start : start + step]
            den = block + row
            num = block - row
            num *= num
            np.divide(num, den, out=num, where=den > 0)
            num[den <= 0] = 0.0
            out[qi, start : start + step] = 0.5 * num.sum(1)
    return out


# -- the metrics: (prepare the stored matrix once, kernel per query batch) --------------
def _prepare_euclidean(x: np.ndarray):
    return x, (x * x).sum(1)


def _euclidean(q: np.ndarray, x: np.ndarray, sq_norms: np.ndarray) -> np.ndarray:
    sq = (q * q).sum(1)[:, None] + sq_norms[None, :] - 2.0 * (q @ x.T)
    np.maximum(sq, 0.0, out=sq)  # rounding can give tiny negatives
    return np.sqrt(sq, out=sq)


def _cosine(q: np.ndarray, x: np.ndarray, aux=None) -> np.ndarray:
    d = 1.0 - l2_normalise(q) @ x.T
    return np.clip(d, 0.0, 2.0, out=d)


def _bhattacharyya(q: np.ndarray, x: np.ndarray, aux=None) -> np.ndarray:
    bc = _sqrt_histogram(q) @ x.T
    np.clip(bc, 0.0, 1.0, out=bc)
    return np.sqrt(1.0 - bc, out=bc)


@dataclass(frozen=True)
class Metric:
    """A distance as a registry entry: how the stored matrix is prepared once, the kernel
    that ranks a batch of queries against it, and whether it needs histograms (>= 0)."""

    label: str
    prepare: Callable[[np.ndarray], tuple[np.ndarray, object]]
    kernel: Callable[[np.ndarray, np.ndarray, object], np.ndarray]
    histogram: bool = False


METRICS: dict[str, Metric] = {
    "euclidean": Metric("Euclidean", _prepare_euclidean, _euclidean),
    "cosine": Metric("Cosine", lambda x: (l2_normalise(x), None), _cosine),
    "chi_square": Metric("Chi-square", lambda x: (x, None), lambda q, x, aux: _chi_square(q, x), histogram=True),
    "bhattacharyya": Metric("Bhattacharyya", lambda x: (_sqrt_histogram(x), None), _bhattacharyya, histogram=True),
}
METRIC_LABELS = {name: m.label for name, m in METRICS.items()}


class PreparedIndex:
    """Stored vectors prepared once for one metric, so each query costs one pass.

    Cosine keeps the L2-normalised matrix, Euclidean the squared norms, Bhattacharyya
    the square roots of the sum-1 normalised vectors; chi-square has no shortcut. A matrix
    whose float32 copy exceeds ``max_bytes`` (default :data:`PREPARED_MAX_BYTES`) is
    *streamed*: each search prepares it block by block from the source (a memory-mapped
    float16 or float32 store), so memory stays bounded at any size.
    """

    def __init__(self, stored, metric: str, max_bytes: int | None = None):
        self.metric = normalise_metric(metric)
        self._spec = METRICS[self.metric]
        x = np.asarray(stored)  # a memory map stays one
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
                "for re-ranking: use --backend faiss for αQE and DBA"
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


def euclidean_distances(queries, stored) -> np.ndarray:
    """||q - x||_2."""
    return PreparedIndex(stored, "euclidean").distances(queries)


def cosine_distances(queries, stored) -> np.ndarray:
    """1 - cos(q, x), in [0, 2]; a zero vector is treated as orthogonal to everything."""
    return PreparedIndex(stored, "cosine").distances(queries)


def chi_square_distances(queries, stored) -> np.ndarray:
    """0.5 * sum (q - x)^2 / (q + x); features must be non-negative."""
    return PreparedIndex(stored, "chi_square").distances(queries)


def bhattacharyya_distances(queries, stored) -> np.ndarray:
    """sqrt(1 - sum sqrt(p r)) of sum-normalised vectors, in [0, 1]; features must be non-negative."""
    return PreparedIndex(stored, "bhattacharyya").distances(queries)


DISTANCES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "euclidean": euclidean_distances,
    "cosine": cosine_distances,
    "chi_square": chi_square_distances,
    "bhattacharyya": bhattacharyya_distances,
}

METRIC_ALIASES = {"chi2": "chi_square", "chi-square": "chi_square", "chisquare": "chi_square", "l2": "euclidean"}


def normalise_metric(name: str) -> str:
    key = METRIC_ALIASES.get(str(name).strip().lower(), str(name).strip().lower())
    if key not in DISTANCES:
        raise unknown("metric", name, DISTANCES)
    return key


def pairwise_distances(queries, stored, metric: str = "cosine") -> np.ndarray:
    """Distances with the named metric; ValueError listing valid names for an unknown one."""
    return PreparedIndex(stored, metric).distances(queries)
