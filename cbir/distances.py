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

from .errors import MetricError, unknown

#: Elements of the (q, chunk, d) temporary used by the non-matmul kernels.
_CHUNK_ELEMENTS = 1 << 23  # 8 Mi floats = 32 MiB in float32
_EPS = 1e-12
#: Euclidean: the nearest candidates of each query whose distance is recomputed directly as
#: ||q - x|| (the fast |q|^2 + |x|^2 - 2 q.x in float32 is off by up to ~5e-4 near zero, so an
#: image's distance to itself was not 0 and near-ties flipped). 100 costs 0.1-0.6 ms per
#: query (a whole Wang-1000 Euclidean evaluation: 0.33 s -> 0.44 s on 2 cores).
EUCLIDEAN_EXACT_TOP = 100


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
    return refine_euclidean(q, np.sqrt(sq, out=sq), lambda rows: x[rows])


def refine_euclidean(q: np.ndarray, d: np.ndarray, stored_rows: Callable[[np.ndarray], np.ndarray],
                     top: int | None = None) -> np.ndarray:
    """``d`` (q, n) with each query's ``top`` (default :data:`EUCLIDEAN_EXACT_TOP`) smallest
    entries recomputed directly, ``sqrt(sum((q - x)^2))``: each difference rounded once
    (float32, relative error 6e-8), the squares summed in float64. No cancellation against
    the norms, so an image's distance to itself is exactly 0 and the candidates shown are
    ordered by their true distances. ``stored_rows(sorted rows)`` gives those stored vectors."""
    n = d.shape[1]
    t = min(EUCLIDEAN_EXACT_TOP if top is None else top, n)
    if t <= 0 or d.shape[0] == 0:
        return d
    part = np.argpartition(d, t - 1, axis=1)[:, :t] if t < n else np.broadcast_to(np.arange(n), (d.shape[0], n))
    q32 = np.asarray(q, dtype=np.float32)
    for i in range(d.shape[0]):
        rows = np.sort(part[i])
        diff = np.asarray(stored_rows(rows), dtype=np.float32) - q32[i]
        d[i, rows] = np.sqrt(np.einsum("ij,ij->i", diff, diff, dtype=np.float64))
    return d


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


def _exact(stored, metric: str, queries) -> np.ndarray:
    """(q, n) float32 distances with one metric: the stored matrix prepared and searched once.
    A search that repeats keeps the prepared matrix instead (:class:`cbir.index.exact.ExactIndex`,
    which also streams a matrix too large to copy)."""
    spec = METRICS[normalise_metric(metric)]
    q, x = _check(queries, stored)
    if spec.histogram:
        _check_non_negative(spec.label.lower(), q, x)
    return spec.kernel(q, *spec.prepare(x))


def euclidean_distances(queries, stored) -> np.ndarray:
    """||q - x||_2."""
    return _exact(stored, "euclidean", queries)


def cosine_distances(queries, stored) -> np.ndarray:
    """1 - cos(q, x), in [0, 2]; a zero vector is treated as orthogonal to everything."""
    return _exact(stored, "cosine", queries)


def chi_square_distances(queries, stored) -> np.ndarray:
    """0.5 * sum (q - x)^2 / (q + x); features must be non-negative."""
    return _exact(stored, "chi_square", queries)


def bhattacharyya_distances(queries, stored) -> np.ndarray:
    """sqrt(1 - sum sqrt(p r)) of sum-normalised vectors, in [0, 1]; features must be non-negative."""
    return _exact(stored, "bhattacharyya", queries)


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
    return _exact(stored, metric, queries)
