"""One model's distance row for one query: the exact index over the whole store,
re-ranked when asked (αQE, DBA + αQE, Rocchio feedback, all in cosine space), or the
candidates of an approximate index (FAISS, Milvus) with NaN for the rows it did not return."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .distances import l2_normalise
from .index import candidate_row, expanded_query
from .rerank import FeedbackRound, Rerank, alpha_query_expansion, rocchio
from .search import Query

if TYPE_CHECKING:
    from .engine import Engine


def _own_row(store, query: Query) -> int:
    """The query's own store row (a collection query), or -1."""
    return store.row_of(query.image_id) if query.image_id is not None and query.image_id in store else -1


def _marked(store, feedback_round: FeedbackRound) -> tuple[list[int], list[int]]:
    """Store rows marked relevant and not relevant in one feedback round."""
    return ([store.row_of(i) for i in feedback_round.relevant if i in store],
            [store.row_of(i) for i in feedback_round.non_relevant if i in store])


def candidates(engine: Engine, model: str, metric: str, vec: np.ndarray, query: Query, rerank: Rerank,
               feedback: list[FeedbackRound], backend: str, depth: int) -> np.ndarray:
    """An approximate index's ``depth`` candidates over the store rows (NaN elsewhere);
    feedback moves the query first, αQE issues a second index query, DBA searches an
    index over the augmented vectors (whose k-NN graph came from the store's index)."""
    store = engine.store(model)
    own = _own_row(store, query)
    if rerank.method == "dba_aqe":
        db, index = engine.indexes.dba_index(model, rerank, backend)
        q = db[own] if own >= 0 else l2_normalise(vec)
    else:
        db, index, q = store.embeddings, engine.indexes.vector_index(model, metric, backend), vec
    for rnd in feedback:
        rel, non = _marked(store, rnd)
        q = rocchio(q[None, :], db[rel], db[non])[0]
    if rerank.active:
        q = expanded_query(index, db, q, rerank.n, rerank.alpha, own)
    return candidate_row(index, q, depth, len(store))


def distance_row(engine: Engine, model: str, metric: str, vec: np.ndarray, query: Query, rerank: Rerank,
                 feedback: list[FeedbackRound], backend: str = "exact", depth: int = 0) -> np.ndarray:
    """One model's distances to every vector of its store (NaN: not a candidate of an
    approximate index), re-ranked when asked."""
    store = engine.store(model)
    if backend != "exact":
        return candidates(engine, model, metric, vec, query, rerank, feedback, backend, depth)
    if not (rerank.active or feedback):
        return store.index(metric).distances(vec[None, :])[0]
    index = engine.indexes.rerank_index(model, rerank)
    db, own = index.vectors, _own_row(store, query)
    q = (db[own] if own >= 0 and rerank.method == "dba_aqe" else l2_normalise(vec))[None, :]
    for rnd in feedback:
        rel, non = _marked(store, rnd)
        q = rocchio(q, db[rel], db[non])
    if rerank.active:
        q = alpha_query_expansion(q, db, rerank.n, rerank.alpha, exclude=np.array([own]))
    return index.distances(q)[0]
