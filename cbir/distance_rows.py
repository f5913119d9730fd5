"""One model's distance row for one query, asked of the backend's vector index the same way
for every backend (``index.candidates``): the exact index's distances over the whole store,
or an approximate index's (FAISS, Milvus) candidates with NaN for the rows it did not
return; re-ranked when asked (αQE, DBA + αQE, Rocchio feedback, all in cosine space)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .distances import l2_normalise
from .index import expanded_query
from .rerank import FeedbackRound, rocchio

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


def distance_row(catalogue: StoreCatalogue, model: str, store: FeatureStore, request: SearchRequest, vec: np.ndarray,
                 backend: str = "exact", depth: int = 0) -> np.ndarray:
    """One model's (n,) distances over its store's rows for the (d,) query vector ``vec``,
    asked of the backend's index the same way for every backend: the exact index gives
    every row's distance, an approximate one its ``depth`` candidates and NaN for the rest.
    Feedback (Rocchio) moves the query first; αQE (Radenović, Tolias & Chum, TPAMI 2018)
    expands it with a first search of the same index; DBA + αQE searches the backend's
    index over the augmented vectors (raises :class:`~cbir.index.IndexBackendError` for a
    backend without one, see ``get_backend(backend).supports_rerank``)."""
    n, rerank, indexes = len(store), request.rerank, catalogue.indexes
    if not (rerank.active or request.feedback):
        return indexes.vector_index(model, store, request.metric, backend).candidates(vec[None, :], depth, n)[0]
    own = _own_row(store, request.query)
    if rerank.method == "dba_aqe":
        db, index = indexes.dba_index(model, store, rerank, backend)
        q = db[own] if own >= 0 else l2_normalise(vec)
    else:
        db, index, q = store.embeddings, indexes.vector_index(model, store, request.metric, backend), l2_normalise(vec)
    for rnd in request.feedback:
        rel, non = _marked(store, rnd)
        q = rocchio(q[None, :], db[rel], db[non])[0]
    if rerank.active:
        q = expanded_query(index, db, q, rerank.n, rerank.alpha, own)
    return index.candidates(q[None, :], depth, n)[0]
