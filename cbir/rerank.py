"""Re-ranking without training: alpha query expansion, database-side augmentation and
Rocchio relevance feedback, all in the cosine space of L2-normalised features.

* αQE (Radenović, Tolias & Chum, "Fine-tuning CNN image retrieval with no human
  annotation", TPAMI 2018): the query becomes the normalised sum of
  itself and its top-n neighbours weighted by ``sim ** alpha`` (negative similarities
  count 0), then the search runs again.
* DBA, database-side augmentation (Arandjelović & Zisserman, "Three things everyone
  should know to improve object retrieval", CVPR 2012): every stored vector is replaced
  the same way by its own neighbourhood mean (the engine caches it beside the store with
  ``cbir.derived.derived_array``). αQE runs on top.
* Rocchio (1971): ``q' = a q + b mean(relevant) - c mean(non-relevant)``, repeatable.

These need the cosine metric: they average directions on the unit sphere, which the
histogram metrics (chi-square, Bhattacharyya) and raw Euclidean distances do not share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .distances import l2_normalise
from .errors import CBIRError, unknown

RERANK_LABELS = {"none": "Off", "aqe": "αQE", "dba_aqe": "DBA + αQE"}
RERANK_METHODS = tuple(RERANK_LABELS)
DEFAULT_N = 10
DEFAULT_ALPHA = 3.0
N_RANGE = (1, 100)  # neighbours used by an expansion
ALPHA_RANGE = (0.0, 20.0)  # similarity exponent
ROCCHIO = (1.0, 0.75, 0.15)  # a, b, c of q' = a q + b mean(relevant) - c mean(non-relevant)
ROCCHIO_TEXT = f"q' = q + {ROCCHIO[1]:g}·mean(relevant) − {ROCCHIO[2]:g}·mean(not relevant)"
MAX_FEEDBACK_ROUNDS = 20
MAX_FEEDBACK_IDS = 1000  # per list of a round
_CHUNK = 2048


@dataclass(frozen=True)
class Rerank:
    method: str = "none"
    n: int = DEFAULT_N
    alpha: float = DEFAULT_ALPHA

    def __post_init__(self):
        if self.method not in RERANK_METHODS:
            raise unknown("re-ranking method", self.method, RERANK_METHODS)
        if not N_RANGE[0] <= int(self.n) <= N_RANGE[1]:
            raise CBIRError(f"re-ranking n must be between {N_RANGE[0]} and {N_RANGE[1]}, got {self.n}")
        if not ALPHA_RANGE[0] <= float(self.alpha) <= ALPHA_RANGE[1]:
            raise CBIRError(f"re-ranking alpha must be between {ALPHA_RANGE[0]:g} and {ALPHA_RANGE[1]:g}, got {self.alpha}")

    @property
    def active(self) -> bool:
        return self.method != "none"

    @property
    def label(self) -> str:
        return "" if not self.active else f"{RERANK_LABELS[self.method]} (n={self.n}, α={self.alpha:g})"


@dataclass
class FeedbackRound:
    """One Rocchio round: ids marked relevant and not relevant (rounds apply in order)."""

    relevant: list[str] = field(default_factory=list)
    non_relevant: list[str] = field(default_factory=list)

    __pydantic_config__ = {"extra": "forbid"}  # read by the API's validation; plain data here


def check_metric(metric: str) -> None:
    if metric != "cosine":
        raise CBIRError(
            f"re-ranking and relevance feedback work in the cosine space of normalised features; "
            f"the {metric} metric does not admit them: choose cosine"
        )


def alpha_query_expansion(
    queries: np.ndarray, database: np.ndarray, n: int, alpha: float, exclude: np.ndarray | None = None
) -> np.ndarray:
    """(q, d) float32 expanded queries: normalise(q + sum_{top-n} max(sim, 0)^alpha * x),
    αQE of Radenović, Tolias & Chum, "Fine-tuning CNN image retrieval with no human
    annotation", TPAMI 2018. The one implementation: the exact evaluation and DBA call it
    over the whole database, :func:`cbir.index.expanded_query` (every backend's search) over
    the top-n neighbours an index returned.

    ``queries`` (q, d) or (d,) and ``database`` (N, d) are L2-normalised; ``exclude[i]`` is a
    database row that query i may not use (itself, for a collection query), or -1. n is
    capped at the rows available.
    """
    q = np.atleast_2d(queries).astype(np.float32)
    out = np.empty_like(q)
    n = min(n, database.shape[0] - (1 if exclude is not None else 0))
    for start in range(0, q.shape[0], _CHUNK):
        block = q[start : start + _CHUNK]
        sims = block @ database.T
        if exclude is not None:
            ex = np.asarray(exclude[start : start + _CHUNK])
            rows = np.flatnonzero(ex >= 0)
            sims[rows, ex[rows]] = -np.inf
        top = np.argpartition(-sims, n - 1, axis=1)[:, :n]
        s = np.take_along_axis(sims, top, axis=1)
        w = np.clip(s, 0.0, None) ** alpha
        out[start : start + _CHUNK] = block + np.einsum("qk,qkd->qd", w, database[top])
    return l2_normalise(out)


def database_augmentation(database: np.ndarray, n: int, alpha: float, graph: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Every vector replaced by normalise(x + sum of its top-n other neighbours ^ alpha):
    (N, d) float32 from ``database`` (N, d), float32 or float16, normalised here.

    DBA: Arandjelović & Zisserman, "Three things everyone should know to improve object
    retrieval", CVPR 2012 (here with αQE's weights, as Radenović et al., TPAMI 2018).

    Without ``graph`` the top-n are found by brute force (N^2 d: minutes at 100,000
    vectors). With a k-NN graph from an index, ``(rows, similarities)`` of shape (N, >= n)
    (nearest first, row -1 = none), the sum is one sparse-dense product (N n d)."""
    if graph is None:
        db = l2_normalise(database)
        return alpha_query_expansion(db, db, n, alpha, exclude=np.arange(db.shape[0]))
    from scipy.sparse import csr_matrix

    rows, sims = (np.asarray(a)[:, :n] for a in graph)
    weights = np.clip(sims, 0.0, None).astype(np.float32) ** alpha
    weights[rows < 0] = 0.0
    total = len(database)
    adjacency = csr_matrix((weights.ravel(), np.maximum(rows, 0).ravel(), np.arange(0, total * rows.shape[1] + 1, rows.shape[1])),
                           shape=(total, total))
    db = np.empty((total, database.shape[1]), dtype=np.float32)
    for start in range(0, total, _CHUNK * 16):  # normalised block by block: a memory-mapped store is read once
        db[start : start + _CHUNK * 16] = l2_normalise(database[start : start + _CHUNK * 16])
    db += adjacency @ db
    return l2_normalise(db)


def rocchio(query: np.ndarray, relevant: np.ndarray, non_relevant: np.ndarray, a: float = ROCCHIO[0], b: float = ROCCHIO[1], c: float = ROCCHIO[2]) -> np.ndarray:
    """a q + b mean(relevant) - c mean(non-relevant), normalised; empty sets contribute 0.

    Rocchio, "Relevance feedback in information retrieval", in The SMART Retrieval System
    (1971). ``query`` (d,), ``relevant`` / ``non_relevant`` (m, d); returns (d,) float32."""
    q = a * l2_normalise(query)
    if len(relevant):
        q = q + b * l2_normalise(relevant).mean(0)
    if len(non_relevant):
        q = q - c * l2_normalise(non_relevant).mean(0)
    return l2_normalise(q)


def feedback_rounds(raw: Sequence) -> list[FeedbackRound]:
    """Rounds from FeedbackRound objects or dicts, within the bounds (20 rounds of 1000 ids)."""
    rounds = [r if isinstance(r, FeedbackRound) else FeedbackRound(list(r.get("relevant", [])), list(r.get("non_relevant", [])))
              for r in raw or []]
    if len(rounds) > MAX_FEEDBACK_ROUNDS:
        raise CBIRError(f"at most {MAX_FEEDBACK_ROUNDS} feedback rounds, got {len(rounds)}")
    if any(len(r.relevant) > MAX_FEEDBACK_IDS or len(r.non_relevant) > MAX_FEEDBACK_IDS for r in rounds):
        raise CBIRError(f"a feedback round marks at most {MAX_FEEDBACK_IDS} ids relevant and {MAX_FEEDBACK_IDS} not relevant")
    return rounds
