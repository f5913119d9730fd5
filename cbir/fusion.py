"""Combining the rankings of several models.

Distances of different models live on different scales, so ``average`` and
``weighted`` first min-max normalise each model's distances per query over the
whole collection. Reciprocal rank fusion (Cormack, Clarke, Buettcher, SIGIR 2009)
scores ``sum_m w_m / (k + rank_m)`` with ranks from 1 and k = 60. All functions
take full (q, n) distance matrices, never truncated lists, and never mutate input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from .errors import CBIRError, unknown

RRF_K = 60


def minmax_normalise(distances: np.ndarray) -> np.ndarray:
    """Per row (query) map distances to [0, 1]; a constant row becomes all zeros.

    Non-finite entries (excluded items, set to +inf) are ignored for the range and
    stay +inf.
    """
    d = np.asarray(distances, dtype=np.float64)
    d = d[None, :] if d.ndim == 1 else d
    finite = np.isfinite(d)
    lo = np.where(finite, d, np.inf).min(1, keepdims=True)
    hi = np.where(finite, d, -np.inf).max(1, keepdims=True)
    span = hi - lo
    span[span <= 0] = 1.0
    out = (d - lo) / span
    out[~finite] = np.inf
    return out


def ranks_from_distances(distances: np.ndarray) -> np.ndarray:
    """1-based rank of every item per row (ties broken by position, stable)."""
    d = np.asarray(distances)
    d = d[None, :] if d.ndim == 1 else d
    order = np.argsort(d, axis=1, kind="stable")
    ranks = np.empty_like(order)
    rows = np.arange(d.shape[0])[:, None]
    ranks[rows, order] = np.arange(1, d.shape[1] + 1)[None, :]
    return ranks


def check_weights(models: Sequence[str], weights: Mapping[str, float] | Sequence[float] | None) -> np.ndarray:
    """Weights as an array aligned with ``models``: non-negative, finite, not all zero."""
    if weights is None:
        return np.ones(len(models))
    if isinstance(weights, Mapping):
        extra = set(weights) - set(models)
        if extra:
            raise CBIRError(f"weights given for models not searched: {', '.join(sorted(extra))}")
        w = np.array([float(weights.get(m, 1.0)) for m in models])
    else:
        w = np.asarray(list(weights), dtype=float)
        if w.shape != (len(models),):
            raise CBIRError(f"expected {len(models)} weights (one per model), got {w.size}")
    bad = [f"{m}={v:g}" for m, v in zip(models, w) if not np.isfinite(v) or v < 0]
    if bad:
        raise CBIRError(f"fusion weights must be finite and non-negative; got {', '.join(bad)}")
    if w.sum() <= 0:
        raise CBIRError("fusion weights are all zero; give at least one model a positive weight")
    return w


def average_fusion(mats: list[np.ndarray], weights: np.ndarray, excluded: np.ndarray, rrf_k: int = RRF_K) -> np.ndarray:
    """mean_m minmax(d_m): every model counts the same (``weights`` are ignored)."""
    return weighted_fusion(mats, np.ones(len(mats)), excluded)


def weighted_fusion(mats: list[np.ndarray], weights: np.ndarray, excluded: np.ndarray, rrf_k: int = RRF_K) -> np.ndarray:
    """sum_m w_m minmax(d_m) / sum_m w_m, excluded items counting 0 before they are reset.
    An item a model did not return (NaN, approximate search) gets that model's worst
    normalised distance, 1."""
    normalised = [np.where(excluded, 0.0, np.where(np.isnan(m), 1.0, minmax_normalise(np.where(np.isnan(m), np.inf, m))))
                  for m in mats]
    return sum(w * n for w, n in zip(weights, normalised)) / weights.sum()


def rrf_fusion(mats: list[np.ndarray], weights: np.ndarray, excluded: np.ndarray, rrf_k: int = RRF_K) -> np.ndarray:
    """-sum_m w_m / (k + rank_m), ranks from 1 (Cormack et al., SIGIR 2009); negated so
    that lower is closer. k = 0 is allowed (rank 1 scores w_m). A model that did not
    return an item (NaN) adds no term for it."""
    if rrf_k < 0:
        raise CBIRError("rrf k must be >= 0")
    score = sum(np.where(np.isnan(m), 0.0, w / (rrf_k + ranks_from_distances(np.where(np.isnan(m), np.inf, m))))
                for w, m in zip(weights, mats))
    return -np.asarray(score, dtype=np.float64)


#: fuser(mats, weights, excluded, rrf_k) -> fused (q, n) float64, lower is closer: ``mats`` are
#: the models' (q, n) float64 distances (NaN: not returned), ``weights`` (m,) >= 0 and
#: ``excluded`` (q, n) bool (+inf in any model)
Fuser = Callable[[list[np.ndarray], np.ndarray, np.ndarray, int], np.ndarray]


@dataclass(frozen=True)
class FusionMethod:
    """One fusion method: its name, labels (long for menus, short for run names), the
    formula it computes (one line, shown by the pages and the CLI's help) and its function."""

    name: str
    label: str
    short: str
    formula: str
    fuser: Fuser
    weighted: bool  # whether it reads the per-model weights


#: The fusion methods, one record each: the API schema, the CLI and the app pages read this.
FUSIONS: dict[str, FusionMethod] = {
    "average": FusionMethod("average", "Average", "Average", "mean_m minmax(d_m)", average_fusion, False),
    "weighted": FusionMethod("weighted", "Weighted", "Weighted", "sum_m w_m minmax(d_m) / sum_m w_m", weighted_fusion, True),
    "rrf": FusionMethod("rrf", "Reciprocal rank fusion", "RRF",
                        f"-sum_m w_m / ({RRF_K} + rank_m) (Cormack, Clarke & Büttcher, SIGIR 2009)", rrf_fusion, True),
}
FUSION_METHODS = tuple(FUSIONS)


def fusion_method(name: str) -> FusionMethod:
    """The record of fusion method ``name`` (case ignored); the unknown-name error otherwise."""
    key = str(name).lower()
    if key not in FUSIONS:
        raise unknown("fusion method", name, FUSIONS)
    return FUSIONS[key]


def fuse(
    distances: Mapping[str, np.ndarray],
    method: str = "average",
    weights: Mapping[str, float] | Sequence[float] | None = None,
    rrf_k: int = RRF_K,
) -> np.ndarray:
    """Fuse per-model (q, n) distance matrices into one (q, n) matrix where lower is closer.

    * ``average``: mean of min-max-normalised distances.
    * ``weighted``: sum_m w_m d_m / sum_m w_m over normalised distances.
    * ``rrf``: returns ``-sum_m w_m / (k + rank_m)`` (negated so lower is closer);
      with no weights every model counts 1.
    Items that are +inf (excluded) in any model stay +inf. NaN marks an item a model did
    not return (approximate search: only its top candidates); the fusion covers the union
    of the candidates, and items no model returned stay NaN (not returned, not excluded:
    recall still counts them as relevant items of the collection).
    """
    if not distances:
        raise CBIRError("nothing to fuse: choose at least one model")
    record = fusion_method(method)
    models = list(distances)
    mats = [np.asarray(distances[m], dtype=np.float64) for m in models]
    mats = [m[None, :] if m.ndim == 1 else m for m in mats]
    shapes = {m.shape for m in mats}
    if len(shapes) != 1:
        raise CBIRError(f"models disagree on the collection: distance shapes {sorted(shapes)}")
    excluded = np.zeros(mats[0].shape, dtype=bool)
    nowhere = np.ones(mats[0].shape, dtype=bool)
    for m in mats:
        excluded |= np.isinf(m)
        nowhere &= np.isnan(m)
    w = check_weights(models, weights) if record.weighted else np.ones(len(models))
    out = record.fuser(mats, w, excluded, rrf_k)
    out[nowhere] = np.nan
    out[excluded] = np.inf
    return out
