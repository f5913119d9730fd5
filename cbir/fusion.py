"""Combining the rankings of several models.

Distances of different models live on different scales, so ``average`` and
``weighted`` first normalise each model's distances per query, as
:data:`NORMALISATIONS` says: min-max over the whole collection (the default), min-max
over the union of each model's top N (ranked first, then the rest), z-score, or rank
(Fox & Shaw's CombSUM/CombMNZ family, TREC-2 1994; Montague & Aslam, "Relevance score
normalization for metasearch", CIKM 2001). Reciprocal rank fusion (Cormack, Clarke,
Buettcher, SIGIR 2009) scores ``sum_m w_m / (k + rank_m)`` with ranks from 1 and k = 60.
All functions take full (q, n) distance matrices, never truncated lists, and never mutate
input.
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


def zscore_normalise(distances: np.ndarray) -> np.ndarray:
    """Per row, (d - mean) / std over the finite entries; a constant row becomes zeros;
    non-finite entries stay +inf."""
    d = np.asarray(distances, dtype=np.float64)
    d = d[None, :] if d.ndim == 1 else d
    finite = np.isfinite(d)
    count = np.maximum(finite.sum(1, keepdims=True), 1)
    mean = np.where(finite, d, 0.0).sum(1, keepdims=True) / count
    std = np.sqrt(np.where(finite, (d - mean) ** 2, 0.0).sum(1, keepdims=True) / count)
    std[std <= 0] = 1.0
    out = (d - mean) / std
    out[~finite] = np.inf
    return out


def rank_normalise(distances: np.ndarray) -> np.ndarray:
    """Per row, rank / number of finite entries, in (0, 1] (ties by position); non-finite
    entries stay +inf."""
    d = np.asarray(distances, dtype=np.float64)
    d = d[None, :] if d.ndim == 1 else d
    finite = np.isfinite(d)
    out = ranks_from_distances(np.where(finite, d, np.inf)) / np.maximum(finite.sum(1, keepdims=True), 1)
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


#: A positive fusion weight's bounds: only the weights' ratios count, and outside these the
#: weighted sum overflows or underflows in float64.
WEIGHT_RANGE = (1e-6, 1e6)


def check_weights(models: Sequence[str], weights: Mapping[str, float] | Sequence[float] | None) -> np.ndarray:
    """Weights as a float64 array aligned with ``models`` (a model a mapping leaves out: 1):
    non-negative, finite, 0 or within :data:`WEIGHT_RANGE`, not all zero. Raises CBIRError."""
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
    extreme = [f"{m}={v:g}" for m, v in zip(models, w) if v != 0 and not WEIGHT_RANGE[0] <= v <= WEIGHT_RANGE[1]]
    if extreme:  # (1e308 overflowed the weighted sum, 5e-324 underflowed it: figures with no meaning)
        raise CBIRError(f"fusion weights must be 0 or between {WEIGHT_RANGE[0]:g} and {WEIGHT_RANGE[1]:g} (only their "
                        f"ratios count); got {', '.join(extreme)}")
    if w.sum() <= 0:
        raise CBIRError("fusion weights are all zero; give at least one model a positive weight")
    return w


#: How many of each model's best items make the candidate set of ``minmax_top`` (the seed
#: app's union of each model's top 20).
TOP_N = 20


@dataclass(frozen=True)
class Normalisation:
    """One score normalisation before average or weighted fusion: its name, label, one-line
    description, and ``normalise(d)`` (one model's (q, n) distances -> (q, n), lower is
    closer, +inf stays +inf); ``top``: min-max over the union of the models' top ``TOP_N``."""

    name: str
    label: str
    description: str
    normalise: Callable[[np.ndarray], np.ndarray]
    top: bool = False


#: The normalisations, one record each: the API schema, the CLI and the app pages read this.
NORMALISATIONS: dict[str, Normalisation] = {
    "minmax": Normalisation("minmax", "Min-max (collection)", "(d - min) / (max - min) over the whole collection", minmax_normalise),
    "minmax_top": Normalisation("minmax_top", f"Min-max (top {TOP_N})",
                                f"min-max over the union of each model's top {TOP_N}, which is ranked first",
                                minmax_normalise, top=True),
    "zscore": Normalisation("zscore", "z-score", "(d - mean) / standard deviation over the collection", zscore_normalise),
    "rank": Normalisation("rank", "Rank", "rank / n (Borda count)", rank_normalise),
}
DEFAULT_NORMALISATION = "minmax"


def normalisation_method(name: str | None) -> Normalisation:
    """The record of normalisation ``name`` (None: the default); case, ``-``, ``_`` and spaces
    ignored (``z-score`` is ``zscore``); the unknown-name error otherwise."""
    if name is None:
        return NORMALISATIONS[DEFAULT_NORMALISATION]
    squeezed = {k.replace("_", ""): k for k in NORMALISATIONS}
    key = squeezed.get("".join(c for c in str(name).lower() if c not in "-_ "))
    if key is None:
        raise unknown("normalisation", name, NORMALISATIONS)
    return NORMALISATIONS[key]


def _top_union(mats: list[np.ndarray], n: int | None = None) -> np.ndarray:
    """(q, n) bool: the items among the first ``n`` (default :data:`TOP_N`) of at least one
    model (NaN and +inf never)."""
    n = TOP_N if n is None else n
    union = np.zeros(mats[0].shape, dtype=bool)
    rows = np.arange(mats[0].shape[0])[:, None]
    for m in mats:
        d = np.where(np.isfinite(m), m, np.inf)
        k = min(n, d.shape[1])
        top = np.argpartition(d, k - 1, axis=1)[:, :k] if k < d.shape[1] else np.argsort(d, axis=1)
        union[rows, top] = True
    finite = np.zeros(mats[0].shape, dtype=bool)
    for m in mats:
        finite |= np.isfinite(m)
    return union & finite


def average_fusion(mats: list[np.ndarray], weights: np.ndarray, excluded: np.ndarray, rrf_k: int = RRF_K,
                   norm: str = DEFAULT_NORMALISATION) -> np.ndarray:
    """mean_m norm(d_m): every model counts the same (``weights`` are ignored)."""
    return weighted_fusion(mats, np.ones(len(mats)), excluded, rrf_k, norm)


def weighted_fusion(mats: list[np.ndarray], weights: np.ndarray, excluded: np.ndarray, rrf_k: int = RRF_K,
                    norm: str = DEFAULT_NORMALISATION) -> np.ndarray:
    """sum_m w_m norm(d_m) / sum_m w_m, excluded items counting 0 before they are reset.
    An item a model did not return (NaN, approximate search) gets that model's worst
    normalised distance for the query. ``minmax_top``: each model's min and max are taken
    over the union of the models' top ``TOP_N``; those items are ranked first, the rest after
    them in their fused order."""
    record = normalisation_method(norm)
    union = _top_union(mats) if record.top else None
    normalised = []
    for m in mats:
        missing = np.isnan(m)
        d = np.where(missing, np.inf, m)
        if union is not None:  # min and max over the union, applied to every item
            counted = union & np.isfinite(d)
            has = counted.any(1, keepdims=True)  # a row with none: 0 and 1, as an empty min-max
            lo = np.nanmin(np.where(has, np.where(counted, d, np.nan), 0.0), 1, keepdims=True)
            hi = np.nanmax(np.where(has, np.where(counted, d, np.nan), 1.0), 1, keepdims=True)
            span = np.where(hi - lo > 0, hi - lo, 1.0)
            n = (d - lo) / span
        else:
            n = record.normalise(d)
        finite = np.isfinite(n)
        worst = np.where(finite, n, -np.inf).max(1, keepdims=True)
        worst[~np.isfinite(worst)] = 0.0
        normalised.append(np.where(excluded, 0.0, np.where(missing, worst, n)))
    fused = sum(w * n for w, n in zip(weights, normalised)) / weights.sum()
    if union is not None:  # the union first: the rest after its worst, in their own order
        inside = np.where(union, fused, -np.inf).max(1, keepdims=True)
        rest_best = np.where(~union & ~excluded, fused, np.inf).min(1, keepdims=True)
        shift = np.where(np.isfinite(inside) & np.isfinite(rest_best), inside - rest_best + 1.0, 0.0)
        fused = np.where(union, fused, fused + shift)
    return fused


def rrf_fusion(mats: list[np.ndarray], weights: np.ndarray, excluded: np.ndarray, rrf_k: int = RRF_K,
               norm: str = DEFAULT_NORMALISATION) -> np.ndarray:
    """-sum_m w_m / (k + rank_m), ranks from 1 (Cormack et al., SIGIR 2009); negated so
    that lower is closer. k = 0 is allowed (rank 1 scores w_m). A model that did not
    return an item (NaN) adds no term for it. Ranks need no normalisation (``norm`` unused)."""
    if rrf_k < 0:
        raise CBIRError("rrf k must be >= 0")
    score = sum(np.where(np.isnan(m), 0.0, w / (rrf_k + ranks_from_distances(np.where(np.isnan(m), np.inf, m))))
                for w, m in zip(weights, mats))
    return -np.asarray(score, dtype=np.float64)


#: fuser(mats, weights, excluded, rrf_k, normalisation) -> fused (q, n) float64, lower is
#: closer: ``mats`` are the models' (q, n) float64 distances (NaN: not returned), ``weights``
#: (m,) >= 0 and ``excluded`` (q, n) bool (+inf in any model)
Fuser = Callable[[list[np.ndarray], np.ndarray, np.ndarray, int, str], np.ndarray]


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
    normalised: bool = True  # whether it reads a score normalisation (rank fusion does not)


#: The fusion methods, one record each: the API schema, the CLI and the app pages read this.
FUSIONS: dict[str, FusionMethod] = {
    "average": FusionMethod("average", "Average", "Average", "mean_m norm(d_m)", average_fusion, False),
    "weighted": FusionMethod("weighted", "Weighted", "Weighted", "sum_m w_m norm(d_m) / sum_m w_m", weighted_fusion, True),
    "rrf": FusionMethod("rrf", "Reciprocal rank fusion", "RRF",
                        f"-sum_m w_m / ({RRF_K} + rank_m) (Cormack, Clarke & Büttcher, SIGIR 2009)", rrf_fusion, True,
                        normalised=False),
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
    normalisation: str | None = None,
) -> np.ndarray:
    """Fuse per-model (q, n) distance matrices into one (q, n) matrix where lower is closer.

    * ``average``: mean of normalised distances (``normalisation``: a key of
      :data:`NORMALISATIONS`, default min-max over the collection).
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
    out = record.fuser(mats, w, excluded, rrf_k, normalisation_method(normalisation).name)
    out[nowhere] = np.nan
    out[excluded] = np.inf
    return out
