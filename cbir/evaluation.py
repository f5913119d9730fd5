"""Retrieval quality under the protocol of the project.

Protocol: relevant = same label as the query; the query is excluded from its own
ranking; recall is over all relevant images of the collection (not over k); AP is
computed over the full ranking, ``AP = (1/R) * sum_k P@k * rel_k`` with R the number
of relevant images; ``P@k = (relevant among the first k) / k`` (k in the denominator
even when fewer than k images are ranked, as trec_eval); a query with no other image
of its class (R = 0, a singleton class) is left out of every mean and counted; mAP is the
mean AP over the other queries. Equal distances keep a stable order (by position in the
collection); the ties that mix relevant and non-relevant items are counted, and
``ties="average"`` gives the tie-aware figures of McSherry & Najork (ECIR 2008) instead:
the expectation over every order of each tied group. PR curves are given raw per
query and as 11-point interpolated means, ``p_interp(r) = max_{r' >= r} p(r')``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .errors import unknown

PROTOCOL = (
    "Relevant = same label as the query; the query is excluded from its own results; "
    "recall is over all relevant images in the collection; AP over the full ranking; "
    "P@k = relevant in the first k / k; queries with no other image of their class (singleton "
    "classes) are left out and counted; mAP = mean AP over the other queries; equal distances "
    "keep the collection's order (ties counted; tie-aware figures on request); "
    "PR curves are 11-point interpolated means; cosine and Euclidean on vectors centred on the "
    "collection's mean unless the report says centred: false."
)
TIE_RULES = ("stable", "average")
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


def tie_groups(sorted_d: np.ndarray) -> np.ndarray:
    """(q, m) group number of each rank: consecutive equal distances share one (NaN, not
    returned by an approximate index, is never tied)."""
    d = np.atleast_2d(sorted_d)
    new = np.ones(d.shape, dtype=bool)
    new[:, 1:] = ~(d[:, 1:] == d[:, :-1])
    return np.cumsum(new, axis=1) - 1


def _group_stats(relevant: np.ndarray, groups: np.ndarray):
    """Per rank: its group's size, relevant count, first rank (0-based) and the relevant
    items ranked before the group."""
    rel = np.atleast_2d(relevant)
    q, m = rel.shape
    if m == 0:
        z = np.zeros((q, 0))
        return z, z, z, z
    gid = (groups + np.arange(q)[:, None] * m).ravel()
    size = np.bincount(gid, minlength=q * m)
    nrel = np.bincount(gid, weights=rel.ravel().astype(float), minlength=q * m)
    first = np.full(q * m, m * q, dtype=np.int64)
    np.minimum.at(first, gid, np.tile(np.arange(m), q))
    start = first[gid]
    hits_before = np.cumsum(np.concatenate([np.zeros((q, 1)), rel.astype(float)], axis=1), axis=1)[:, :-1]
    before_group = np.take_along_axis(hits_before, start.reshape(q, m), axis=1)
    return size[gid].reshape(q, m), nrel[gid].reshape(q, m), start.reshape(q, m), before_group


def mixed_ties(relevant: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Per query: the tied groups (two or more equal distances) that hold both relevant and
    non-relevant items, whose order the tie rule decides."""
    rel = np.atleast_2d(relevant)
    q, m = rel.shape
    if m == 0:
        return np.zeros(q, dtype=int)
    gid = (groups + np.arange(q)[:, None] * m).ravel()
    size = np.bincount(gid, minlength=q * m)
    nrel = np.bincount(gid, weights=rel.ravel().astype(float), minlength=q * m)
    mixed = (size > 1) & (nrel > 0) & (nrel < size)
    return mixed.reshape(q, m).sum(1)


def expected_relevance(relevant: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """(q, m) expected relevance of each rank when every tied group is in random order:
    the group's share of relevant items (McSherry & Najork 2008); P@k and R-precision of
    it are the tie-aware figures."""
    size, nrel, _, _ = _group_stats(relevant, groups)
    return np.divide(nrel, size, out=np.zeros(np.shape(size)), where=size > 0)


def tie_aware_average_precision(relevant: np.ndarray, groups: np.ndarray, n_relevant: np.ndarray | int) -> np.ndarray:
    """AP averaged over every order of each tied group (McSherry & Najork, ECIR 2008). A rank
    ``a + i`` (the i-th of a group of n starting after rank a, with r relevant and h relevant
    before it) adds ``(r/n) * (h + 1 + (i-1)(r-1)/(n-1)) / (a + i)``; without ties it is AP."""
    rel = np.atleast_2d(relevant)
    q, m = rel.shape
    total = np.broadcast_to(np.asarray(n_relevant, float), (q,))
    if m == 0:
        return np.zeros(q)
    size, nrel, start, before = _group_stats(rel, groups)
    pos = np.arange(m)[None, :]
    i = pos - start + 1
    inner = np.divide((i - 1) * (nrel - 1), size - 1, out=np.zeros((q, m)), where=size > 1)
    contrib = np.divide(nrel, size, out=np.zeros((q, m)), where=size > 0) * (before + 1 + inner) / (pos + 1)
    return np.divide(contrib.sum(1), total, out=np.zeros(q), where=total > 0)


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
    """Collection-wide figures for one model/metric (or fusion).

    ``n_queries`` counts every query; the figures are means over the ``n_scored`` of them
    that have another image of their class (``n_singleton`` left out: AP is undefined with
    no relevant item). ``ties``: tied groups that mixed relevant and non-relevant items (in
    ``tied_queries`` queries), ordered by ``tie_rule``."""

    name: str
    metric: str
    n_queries: int
    map: float
    p_at_10: float
    p_at_20: float
    r_precision: float
    per_class_ap: dict[str, float]
    pr_11: list[float]
    ap: np.ndarray = field(repr=False)  # per query, NaN for a left-out (singleton) query
    seconds: float = 0.0
    depth: int | None = None  # approximate index: figures over each query's top `depth` (mAP@depth)
    n_singleton: int = 0
    ties: int = 0
    tied_queries: int = 0
    tie_rule: str = "stable"
    collection: str | None = None  # the name of the collection evaluated
    query_ids: list[str] | None = field(default=None, repr=False)  # the id of each query, in the order of ``ap``
    centred: bool = False  # vectors centred on the collection's mean (cbir.centring)

    @property
    def n_scored(self) -> int:
        return self.n_queries - self.n_singleton

    @property
    def map_label(self) -> str:
        return "mAP" if self.depth is None else f"mAP@{self.depth}"

    @property
    def notes(self) -> list[str]:
        """What a reader must know about these figures (left-out queries, ties)."""
        out = []
        if self.n_singleton:
            out.append(f"{self.n_singleton} of {self.n_queries} queries left out: no other image of their class "
                       f"(singleton classes); the figures are over the other {self.n_scored}")
        if self.ties:
            rule = ("averaged over every order of the tied items (McSherry & Najork 2008)" if self.tie_rule == "average"
                    else "ordered by position in the collection")
            out.append(f"{self.ties} tie(s) of equal distances mixed relevant and non-relevant images "
                       f"in {self.tied_queries} queries: {rule}")
        return out

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "collection": self.collection,
            "metric": self.metric,
            "centred": self.centred,
            "queries": self.n_queries,
            "queries_scored": self.n_scored,
            "singleton_queries_left_out": self.n_singleton,
            "mAP": round(self.map, 6),
            "P@10": round(self.p_at_10, 6),
            "P@20": round(self.p_at_20, 6),
            "R-precision": round(self.r_precision, 6),
            "per_class_AP": {k: round(v, 6) for k, v in self.per_class_ap.items()},
            "pr_11_point": [round(v, 6) for v in self.pr_11],
            "seconds": round(self.seconds, 3),
            "depth": self.depth,
            "map_label": self.map_label,
            "ties": self.ties,
            "tied_queries": self.tied_queries,
            "tie_rule": self.tie_rule,
            "notes": self.notes,
            "protocol": PROTOCOL,
        }


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else 0.0


def evaluate_distances(
    distances: np.ndarray,
    labels: Sequence[str],
    query_rows: np.ndarray | None = None,
    name: str = "",
    metric: str = "",
    ties: str = "stable",
) -> EvaluationReport:
    """Evaluate a (q, n) distance matrix whose rows are the collection items ``query_rows``.

    Each query's own column must already be +inf (excluded); it is dropped from the
    ranking here. NaN marks items an approximate index did not return: they earn nothing,
    while recall still counts every relevant item of the collection. A query with no other
    item of its label is left out of the figures (counted in ``n_singleton``). ``ties``:
    "stable" (equal distances in column order) or "average" (tie-aware, McSherry & Najork).
    """
    if ties not in TIE_RULES:
        raise unknown("tie rule", ties, TIE_RULES)
    d = np.asarray(distances, dtype=np.float64)
    q, n = d.shape
    rows = np.arange(q) if query_rows is None else np.asarray(query_rows)
    lab = np.asarray(labels, dtype=object)
    qlab = lab[rows]
    order = np.argsort(d, axis=1, kind="stable")[:, : n - 1]  # the excluded query sorts last
    sorted_d = np.take_along_axis(d, order, axis=1)
    rel = relevance_matrix(order, lab, qlab)
    # NaN: not returned by an approximate index (sorted last): no credit, so AP is AP@depth;
    # +inf: excluded (the query itself, which an approximate row sorts before its NaNs)
    rel &= np.isfinite(sorted_d)
    counts = {c: int((lab == c).sum()) for c in set(lab.tolist())}
    n_rel = np.array([counts[c] - 1 for c in qlab], dtype=int)
    scored = n_rel > 0
    groups = tie_groups(sorted_d)
    mixed = mixed_ties(rel, groups)
    if ties == "average":
        ap = tie_aware_average_precision(rel, groups, n_rel)
        erel = expected_relevance(rel, groups)
    else:
        ap = average_precision(rel, n_rel)
        erel = rel
    ap[~scored] = np.nan
    s = scored
    per_class = {c: float(ap[qlab == c].mean()) for c in sorted(counts) if (qlab == c).any() and counts[c] > 1}
    pr = interpolated_pr(rel[s], n_rel[s]).mean(0) if s.any() else np.zeros(RECALL_LEVELS.size)
    return EvaluationReport(
        name=name,
        metric=metric,
        n_queries=q,
        map=_mean(ap[s]),
        p_at_10=_mean(precision_at_k(erel[s], 10)),
        p_at_20=_mean(precision_at_k(erel[s], 20)),
        r_precision=_mean(r_precision(erel[s], n_rel[s])),
        per_class_ap=per_class,
        pr_11=pr.tolist(),
        ap=ap,
        n_singleton=int((~s).sum()),
        ties=int(mixed[s].sum()),
        tied_queries=int((mixed[s] > 0).sum()),
        tie_rule=ties,
    )


def merge_reports(chunks: list[EvaluationReport], labels: Sequence[str], name: str, metric: str) -> EvaluationReport:
    """One report from reports over consecutive chunks of queries (weighted by the queries
    each scored)."""
    ap = np.concatenate([c.ap for c in chunks])
    weights = np.array([c.n_scored for c in chunks], dtype=float)
    scored = weights.sum() > 0

    def wmean(attr: str) -> float:
        return float(np.average([getattr(c, attr) for c in chunks], weights=weights)) if scored else 0.0

    lab = np.asarray(labels, dtype=object)
    ok = ~np.isnan(ap)
    per_class = {c: float(ap[(lab == c) & ok].mean()) for c in sorted(set(lab.tolist())) if ((lab == c) & ok).any()}
    pr = np.average(np.array([c.pr_11 for c in chunks]), axis=0, weights=weights) if scored else np.zeros(RECALL_LEVELS.size)
    return EvaluationReport(
        name=name, metric=metric, n_queries=int(ap.size), map=_mean(ap[ok]), p_at_10=wmean("p_at_10"),
        p_at_20=wmean("p_at_20"), r_precision=wmean("r_precision"), per_class_ap=per_class, pr_11=pr.tolist(), ap=ap,
        n_singleton=sum(c.n_singleton for c in chunks), ties=sum(c.ties for c in chunks),
        tied_queries=sum(c.tied_queries for c in chunks), tie_rule=chunks[0].tie_rule if chunks else "stable",
    )
