"""Ranking one query's full distance row: hits, P@k, R@k, AP and the PR curve; and the
re-fusion of one query's rows with other weights or another method.

A search ranks the *whole* collection for each model (so that fusion and the
evaluation figures work on full rankings) and then keeps the top k for display.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from .evaluation import average_precision, interpolated_pr, pr_curve

MAX_PR_POINTS = 2000


@dataclass
class Hit:
    rank: int
    id: str
    score: float  # distance (lower is closer); for RRF the negated fused score
    label: str | None
    relevant: bool | None

    def to_dict(self) -> dict:
        return {"rank": self.rank, "id": self.id, "score": round(float(self.score), 6), "label": self.label, "relevant": self.relevant}


@dataclass
class RankedList:
    name: str
    hits: list[Hit]
    top_k: int
    precision_at_k: float | None = None
    recall_at_k: float | None = None
    average_precision: float | None = None
    n_relevant: int | None = None
    pr_recall: list[float] = field(default_factory=list)
    pr_precision: list[float] = field(default_factory=list)
    pr_11: list[float] = field(default_factory=list)
    seconds: float = 0.0
    depth: int | None = None  # approximate search: AP and the PR curve are computed at this depth

    @property
    def has_metrics(self) -> bool:
        return self.average_precision is not None

    def to_dict(self, pr_points: int = 101) -> dict:
        step = max(1, len(self.pr_recall) // pr_points) if self.pr_recall else 1
        return {
            "name": self.name,
            "results": [h.to_dict() for h in self.hits],
            "top_k": self.top_k,
            "precision_at_k": self.precision_at_k,
            "recall_at_k": self.recall_at_k,
            "average_precision": self.average_precision,
            "relevant_in_collection": self.n_relevant,
            "pr_curve": {"recall": self.pr_recall[::step], "precision": self.pr_precision[::step]},
            "pr_11_point": self.pr_11,
            "ap_depth": self.depth,
            "ap_label": "AP" if self.depth is None else f"AP@{self.depth}",
            "seconds": round(self.seconds, 5),
        }


def rank_distances(
    name: str,
    distances: np.ndarray,
    ids: Sequence[str],
    labels: Sequence[str | None] | None,
    query_label: str | None,
    top_k: int,
    seconds: float = 0.0,
    depth: int | None = None,
    label_counts: Mapping[str, int] | None = None,
) -> RankedList:
    """Turn one query's full distance row (+inf = excluded) into a ranked list with metrics.

    With ``depth`` (approximate search) the row holds NaN for items the index did not
    return: the list is that depth's candidates, and recall, AP and the PR curve count
    every relevant item of the collection (not only those returned), as "AP@depth".
    ``label_counts`` (images per label among ``ids``) spares a pass over every label."""
    d = np.asarray(distances, dtype=np.float64)
    finite = np.isfinite(d)
    ranked = np.flatnonzero(finite)  # an approximate row: only its candidates are sorted
    order = ranked[np.argsort(d[ranked], kind="stable")]
    k = min(top_k, order.size)
    lab = None if labels is None else np.asarray(labels, dtype=object)
    rel = None
    result = RankedList(name=name, hits=[], top_k=top_k, seconds=seconds, depth=depth)
    if lab is not None and query_label is not None:
        rel = lab[order] == query_label
        excluded = np.flatnonzero(d == np.inf) if ranked.size < d.size else np.empty(0, dtype=int)
        if label_counts is None:
            n_rel = int((lab == query_label).sum())
        else:
            n_rel = int(label_counts.get(query_label, 0))
        n_rel -= int((lab[excluded] == query_label).sum())
        result.n_relevant = n_rel
        # k in the denominator, as trec_eval and `cbir evaluate` do: 6 images, k = 10 and
        # 4 relevant returned give P@10 = 0.4, not 4/5 (fewer than k ranked count as misses)
        result.precision_at_k = float(rel[:k].sum() / top_k) if top_k > 0 else 0.0
        if n_rel:  # a query alone in its class: recall, AP and the PR curve are undefined (None, not 0)
            result.recall_at_k = float(rel[:k].sum() / n_rel)
            result.average_precision = float(average_precision(rel, n_rel)[0])
            recall, precision = pr_curve(rel, n_rel)
            last = int(np.searchsorted(recall, 1.0 - 1e-12)) + 1
            last = min(max(last, k), MAX_PR_POINTS, len(recall))
            result.pr_recall = recall[:last].round(5).tolist()
            result.pr_precision = precision[:last].round(5).tolist()
            result.pr_11 = interpolated_pr(rel, n_rel)[0].round(5).tolist()
    for r in range(k):
        i = order[r]
        result.hits.append(
            Hit(
                rank=r + 1,
                id=str(ids[i]),
                score=float(d[i]),
                label=None if lab is None else lab[i],
                relevant=None if rel is None else bool(rel[r]),
            )
        )
    return result


@dataclass
class FusionInputs:
    """What a fusion of one query needs: every model's distance row over the shared ids.
    Kept after a search, so new weights or another method re-fuse without searching again."""

    ids: list[str]
    distances: dict[str, np.ndarray]
    labels: np.ndarray | None
    label_counts: dict[str, int]
    query_label: str | None
    top_k: int
    depth: int | None = None

    def fuse(self, method: str, weights: Mapping[str, float] | None = None, normalisation: str | None = None) -> RankedList:
        """The combined ranked list (and its metrics) for ``method``, ``weights`` and the
        score ``normalisation`` (:data:`cbir.fusion.NORMALISATIONS`; default min-max)."""
        from .fusion import fuse

        start = time.perf_counter()
        fused = fuse({m: d[None, :] for m, d in self.distances.items()}, method=method, weights=weights,
                     normalisation=normalisation)[0]
        return rank_distances("combined", fused, self.ids, self.labels, self.query_label, self.top_k,
                              seconds=time.perf_counter() - start, depth=self.depth, label_counts=self.label_counts)
