"""Retrieval quality under the protocol of the project.

Protocol: relevant = same label as the query; the query is excluded from its own
ranking; recall is over all relevant images of the collection (not over k); AP is
computed over the full ranking, ``AP = (1/R) * sum_k P@k * rel_k`` with R the number
of relevant images (0 when R = 0); mAP is the mean AP over all queries. PR curves
are given raw per query and as 11-point interpolated means,
``p_interp(r) = max_{r' >= r} p(r')``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

PROTOCOL = (
    "Relevant = same label as the query; the query is excluded from its own results; "
    "recall is over all relevant images in the collection; AP over the full ranking; "
    "mAP = mean AP over every image used as a query; PR curves are 11-point interpolated means."
)
RECALL_LEVELS = np.linspace(0.0, 1.0, 11)


def relevance_matrix(order: np.ndarray, labels: Sequence[str], query_labels: Sequence[str]) -> np.ndarray:
    """(q, m) boolean: is the item at each rank of each query relevant."""
    lab = np.asarray(labels, dtype=object)
    ql = np.asarray(query_labels, dtype=object)[:, None]
    return lab[np.asarray(order)] == ql


def precision_at_k(relevant: np.ndarray, k: int) -> np.ndarray:
    """Fraction of the first k results that are relevant (per row). k = 0 gives 0."""
    rel = np.atleast_2d(relevant)
    if k <= 0:
        return np.zeros(rel.shape[0])
    return rel[:, :k].sum(1) / float(k)


def recall_at_k(relevant: np.ndarray, k: int, n_relevant: np.ndarray | int) -> np.ndarray:
    """Relevant results in the first k over all relevant items (0 when there are none)."""
    rel = np.atleast_2d(relevant)
    total = np.broadcast_to(np.asarray(n_relevant, dtype=float), (rel.shape[0],))
    hits = rel[:, : max(k, 0)].sum(1)
    return np.divide(hits, total, out=np.zeros(rel.shape[0]), where=total > 0)


def average_precision(relevant: np.ndarray, n_relevant: np.ndarray | int | None = None) -> np.ndarray:
    """AP per row over the ranking given; ``n_relevant`` defaults to the hits in the row."""
    rel = np.atleast_2d(relevant).astype(float)
    hits = np.cumsum(rel, axis=1)
    ranks = np.arange(1, rel.shape[1] + 1)[None, :]
    total = hits[:, -1] if n_relevant is None else np.broadcast_to(np.asarray(n_relevant, float), (rel.shape[0],))
    s = (hits / ranks * rel).sum(1)
    return np.divide(s, total, out=np.zeros(rel.shape[0]), where=total > 0)


def r_precision(relevant: np.ndarray, n_relevant: np.ndarray | int) -> np.ndarray:
    """Precision at R, R = number of relevant items for that query."""
    rel = np.atleast_2d(relevant)
    total = np.broadcast_to(np.asarray(n_relevant, dtype=int), (rel.shape[0],))
    hits = np.cumsum(rel, axis=1)
    out = np.zeros(rel.shape[0])
    ok = total > 0
    idx = np.clip(total - 1, 0, rel.shape[1] - 1)
    out[ok] = hits[np.arange(rel.shape[0]), idx][ok] / total[ok]
    return out


def pr_curve(relevant: np.ndarray, n_relevant: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw (recall, precision) after each rank of one query."""
    rel = np.asarray(relevant, dtype=float).ravel()
    hits = np.cumsum(rel)
    ranks = np.arange(1, rel.size + 1)
    recall = hits / n_relevant if n_relevant > 0 else np.zeros_like(hits)
    return recall, hits / ranks


def interpolated_pr(relevant: np.ndarray, n_relevant: np.ndarray | int) -> np.ndarray:
    """(q, 11) interpolated precision at recall 0, 0.1, ..., 1 per query."""
    rel = np.atleast_2d(relevant).astype(float)
    if rel.shape[1] == 0:  # nothing ranked (a one-image store, its query excluded): no recall reached
        return np.zeros((rel.shape[0], RECALL_LEVELS.size))
    total = np.broadcast_to(np.asarray(n_relevant, dtype=float), (rel.shape[0],))
    hits = np.cumsum(rel, axis=1)
    prec = hits / np.arange(1, rel.shape[1] + 1)[None, :]
    rec = np.divide(hits, total[:, None], out=np.zeros_like(hits), where=total[:, None] > 0)
    # running max from the right: best precision at any recall >= r
    best = np.maximum.accumulate(prec[:, ::-1], axis=1)[:, ::-1]
    out = np.zeros((rel.shape[0], RECALL_LEVELS.size))
    for j, level in enumerate(RECALL_LEVELS):
        # first rank reaching recall >= level
        reached = rec >= level - 1e-12
        any_ = reached.any(1)
        first = reached.argmax(1)
        out[:, j] = np.where(any_ & (total > 0), best[np.arange(rel.shape[0]), first], 0.0)
    return out


@dataclass
class EvaluationReport:
    """Collection-wide figures for one model/metric (or fusion)."""

    name: str
    metric: str
    n_queries: int
    map: float
    p_at_10: float
    p_at_20: float
    r_precision: float
    per_class_ap: dict[str, float]
    pr_11: list[float]
    ap: np.ndarray = field(repr=False)
    seconds: float = 0.0
    depth: int | None = None  # approximate index: figures over each query's top `depth` (mAP@depth)

    @property
    def map_label(self) -> str:
        return "mAP" if self.depth is None else f"mAP@{self.depth}"

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "metric": self.metric,
            "queries": self.n_queries,
            "mAP": round(self.map, 6),
            "P@10": round(self.p_at_10, 6),
            "P@20": round(self.p_at_20, 6),
            "R-precision": round(self.r_precision, 6),
            "per_class_AP": {k: round(v, 6) for k, v in self.per_class_ap.items()},
            "pr_11_point": [round(v, 6) for v in self.pr_11],
            "seconds": round(self.seconds, 3),
            "depth": self.depth,
            "map_label": self.map_label,
            "protocol": PROTOCOL,
        }


def evaluate_distances(
    distances: np.ndarray,
    labels: Sequence[str],
    query_rows: np.ndarray | None = None,
    name: str = "",
    metric: str = "",
) -> EvaluationReport:
    """Evaluate a (q, n) distance matrix whose rows are the collection items ``query_rows``.

    Each query's own column must already be +inf (excluded); it is dropped from the
    ranking here. NaN marks items an approximate index did not return: they earn nothing,
    while recall still counts every relevant item of the collection.
    """
    d = np.asarray(distances, dtype=np.float64)
    q, n = d.shape
    rows = np.arange(q) if query_rows is None else np.asarray(query_rows)
    lab = np.asarray(labels, dtype=object)
    qlab = lab[rows]
    order = np.argsort(d, axis=1, kind="stable")[:, : n - 1]  # the excluded query sorts last
    rel = relevance_matrix(order, lab, qlab)
    # NaN: not returned by an approximate index (sorted last): no credit, so AP is AP@depth
    rel &= ~np.isnan(np.take_along_axis(d, order, axis=1))
    counts = {c: int((lab == c).sum()) for c in set(lab.tolist())}
    n_rel = np.array([counts[c] - 1 for c in qlab])
    ap = average_precision(rel, n_rel)
    per_class = {c: float(ap[qlab == c].mean()) for c in sorted(counts) if (qlab == c).any()}
    return EvaluationReport(
        name=name,
        metric=metric,
        n_queries=q,
        map=float(ap.mean()),
        p_at_10=float(precision_at_k(rel, 10).mean()),
        p_at_20=float(precision_at_k(rel, 20).mean()),
        r_precision=float(r_precision(rel, n_rel).mean()),
        per_class_ap=per_class,
        pr_11=interpolated_pr(rel, n_rel).mean(0).tolist(),
        ap=ap,
    )


def merge_reports(chunks: list[EvaluationReport], labels: Sequence[str], name: str, metric: str) -> EvaluationReport:
    """One report from reports over consecutive chunks of queries (weighted by their size)."""
    ap = np.concatenate([c.ap for c in chunks])
    weights = np.array([c.n_queries for c in chunks], dtype=float)

    def wmean(attr: str) -> float:
        return float(np.average([getattr(c, attr) for c in chunks], weights=weights))

    lab = np.asarray(labels, dtype=object)
    per_class = {c: float(ap[lab == c].mean()) for c in sorted(set(lab.tolist()))}
    pr = np.average(np.array([c.pr_11 for c in chunks]), axis=0, weights=weights)
    return EvaluationReport(
        name=name, metric=metric, n_queries=int(ap.size), map=float(ap.mean()), p_at_10=wmean("p_at_10"),
        p_at_20=wmean("p_at_20"), r_precision=wmean("r_precision"), per_class_ap=per_class, pr_11=pr.tolist(), ap=ap,
    )
