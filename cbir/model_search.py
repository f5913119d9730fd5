"""One model's distance row for one query: the exact index over the whole store,
re-ranked when asked (αQE, DBA + αQE, Rocchio feedback, all in cosine space), or the
candidates of an approximate index (FAISS, Milvus) with NaN for the rows it did not return."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .distances import l2_normalise
from .index import candidate_row, expanded_query
from .rerank import FeedbackRound, alpha_query_expansion, rocchio

if TYPE_CHECKING:
    from .catalogue import StoreCatalogue
    from .request import Query, SearchRequest
    from .store import FeatureStore


def _own_row(store, query: Query) -> int:
    """The query's own store row (a collection query), or -1."""
    return store.row_of(query.image_id) if query.image_id is not None and query.image_id in store else -1


def _marked(store, feedback_round: FeedbackRound) -> tuple[list[int], list[int]]:
    """Store rows marked relevant and not relevant in one feedback round."""
    return ([store.row_of(i) for i in feedback_round.relevant if i in store],
            [store.row_of(i) for i in feedback_round.non_relevant if i in store])


def candidates(catalogue: StoreCatalogue, model: str, store: FeatureStore, request: SearchRequest, vec: np.ndarray,
               backend: str, depth: int) -> np.ndarray:
    """An approximate index's ``depth`` candidates over the store rows (NaN elsewhere);
    feedback moves the query first, αQE issues a second index query, DBA searches an
    index over the augmented vectors (whose k-NN graph came from the store's index)."""
    rerank, own = request.rerank, _own_row(store, request.query)
    if rerank.method == "dba_aqe":
        db, index = catalogue.indexes.dba_index(model, store, rerank, backend)
        q = db[own] if own >= 0 else l2_normalise(vec)
    else:
        db, index, q = store.embeddings, catalogue.indexes.vector_index(model, store, request.metric, backend), vec
    for rnd in request.feedback:
        rel, non = _marked(store, rnd)
        q = rocchio(q[None, :], db[rel], db[non])[0]
    if rerank.active:
        q = expanded_query(index, db, q, rerank.n, rerank.alpha, own)
    return candidate_row(index, q, depth, len(store))


def distance_row(catalogue: StoreCatalogue, model: str, store: FeatureStore, request: SearchRequest, vec: np.ndarray,
                 backend: str = "exact", depth: int = 0) -> np.ndarray:
    """One model's (n,) distances to every vector of its store (NaN: not a candidate of an
    approximate index), re-ranked and moved by feedback as the request asks."""
    if backend != "exact":
        return candidates(catalogue, model, store, request, vec, backend, depth)
    rerank = request.rerank
    if not (rerank.active or request.feedback):
        return store.index(request.metric).distances(vec[None, :])[0]
    index = catalogue.indexes.rerank_index(model, store, rerank)
    db, own = index.vectors, _own_row(store, request.query)
    q = (db[own] if own >= 0 and rerank.method == "dba_aqe" else l2_normalise(vec))[None, :]
    for rnd in request.feedback:
        rel, non = _marked(store, rnd)
        q = rocchio(q, db[rel], db[non])
    if rerank.active:
        q = alpha_query_expansion(q, db, rerank.n, rerank.alpha, exclude=np.array([own]))
    return index.distances(q)[0]
