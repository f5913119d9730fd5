"""What a process derives from the feature stores and keeps, each cache bounded: opened
vector indexes (per model, metric, backend and store version), DBA vectors and the FAISS
indexes over them, and the id spaces (ids, positions, labels, label counts) shared by a
set of models, so that a search at a million images does no per-request O(n) Python work."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Protocol

import numpy as np

from .errors import StoreError
from .index import VectorIndex, get_backend, neighbour_graph, open_index
from .index.exact import ExactIndex
from .lru import LRU
from .rerank import Rerank, database_augmentation
from .derived import derived_array
from .store import FeatureStore, common_ids

DBA_IN_MEMORY = 2  # DBA matrices kept per process (each is the size of its store: 512 MB at 100k x 1280)
INDEXES_IN_MEMORY = 8  # opened vector indexes (model, metric, backend) kept per process


@dataclass(frozen=True)
class IdSpace:
    """The images several stores share: ids in order, id -> position, labels, label counts."""

    ids: list[str]
    position: Mapping[str, int]
    labels: np.ndarray | None
    label_counts: dict[str, int]
    rows: dict[str, np.ndarray | None]  # per model: its store's rows of ``ids`` (None: already in that order)

    def align(self, model: str, row: np.ndarray) -> np.ndarray:
        """One of ``model``'s per-store-row arrays (n,) restricted to ``ids``, in that order."""
        rows = self.rows[model]
        return row if rows is None else row[rows]


class Stores(Protocol):
    """What the cache needs of its owner (a :class:`cbir.catalogue.StoreCatalogue`)."""

    settings: object
    collection: object

    def store_folder(self, model: str) -> Path: ...


class IndexCache:
    """A catalogue's derived objects, built on first use and kept least-recently-used. Every
    method takes the store the caller already holds, so a request sees one version of it."""

    def __init__(self, owner: Stores):
        self.owner = owner
        self._lock = threading.RLock()
        # one re-entrant lock for the three: a DBA build opens a vector index
        self._dba: LRU[tuple, ExactIndex] = LRU(DBA_IN_MEMORY, self._lock)
        self._indexes: LRU[tuple, VectorIndex] = LRU(INDEXES_IN_MEMORY, self._lock)
        self._spaces: LRU[tuple, IdSpace] = LRU(INDEXES_IN_MEMORY, self._lock)
        self.last_dba_seconds: dict[str, float] = {}

    def rerank_index(self, model: str, store: FeatureStore, rerank: Rerank, backend: str = "exact") -> ExactIndex:
        """Cosine index over the store, or over its DBA vectors (built once per store
        version, (n, alpha) and backend, cached beside the store; the newest few in memory).
        The exact backend finds each vector's neighbours by brute force (the reference);
        an approximate one reads them from its index's k-NN graph."""
        if rerank.method != "dba_aqe":
            return store.index("cosine")

        def build() -> ExactIndex:
            name, graph = f"dba-n{rerank.n}-a{rerank.alpha:g}", None
            if get_backend(backend).approximate:
                name, index = f"{name}-{backend}", self.vector_index(model, store, "cosine", backend)
                graph = lambda: neighbour_graph(index, store.embeddings, rerank.n)  # noqa: E731
            matrix, seconds = derived_array(store, self.owner.store_folder(model), name, lambda: database_augmentation(
                store.embeddings, rerank.n, rerank.alpha, graph() if graph else None))
            self.last_dba_seconds[model] = seconds
            return ExactIndex(matrix, "cosine")

        return self._dba.get_or_build((model, rerank.n, rerank.alpha, backend, store.version), build)

    def dba_index(self, model: str, store: FeatureStore, rerank: Rerank, backend: str) -> tuple[np.ndarray, VectorIndex]:
        """The (N, d) DBA vectors of the model's store and the backend's cosine index over
        them: the exact one is :meth:`rerank_index`'s, an approximate one is built by the
        backend record's ``open_derived``. Raises :class:`~cbir.index.IndexBackendError` for a
        backend without DBA (``not get_backend(backend).supports_rerank("dba_aqe")``)."""
        record = get_backend(backend)
        record.check_rerank(rerank.method)
        dba = self.rerank_index(model, store, rerank, backend)
        if record.exact:
            return dba.stored, dba
        index = self._indexes.get_or_build((model, "dba", rerank.n, rerank.alpha, backend, store.version), lambda: record.open_derived(
            store, self.owner.store_folder(model), f"dba-n{rerank.n}-a{rerank.alpha:g}", dba.stored, "cosine", self.owner.settings))
        return dba.stored, index

    def vector_index(self, model: str, store: FeatureStore, metric: str, backend: str) -> VectorIndex:
        """The backend's index of the model's store for ``metric``, per store version."""
        owner = self.owner

        def build() -> VectorIndex:
            labels = [owner.collection.label_of(i) if i in owner.collection else None for i in store.ids.tolist()]
            return open_index(backend, store, owner.store_folder(model), metric, owner.settings, labels, owner.collection.name)

        return self._indexes.get_or_build((model, metric, backend, store.version), build)

    def id_space(self, stores: Mapping[str, FeatureStore]) -> IdSpace:
        """The ids the models' stores have in common that are in the collection's folder now,
        with positions, labels and label counts, once per set of store versions (a search at 10^6 images rebuilds no million-entry list)."""
        models, stores = list(stores), list(stores.values())

        def build() -> IdSpace:
            ids = common_ids([s.ids for s in stores])
            collection = self.owner.collection
            if not all(i in collection for i in ids):  # images removed from the folder since indexing
                ids = [i for i in ids if i in collection]
            if not ids:
                raise StoreError("the chosen models share no indexed image of this collection's folder; index them on it "
                                 "(Collection page, or `cbir index`)")
            rows = {m: s.rows_for(ids) for m, s in zip(models, stores)}
            rows = {m: None if r is None else np.asarray(r) for m, r in rows.items()}
            position = stores[0].rows if rows[models[0]] is None else {image_id: i for i, image_id in enumerate(ids)}
            labels = self.owner.collection.labels_for(ids)
            counts = {} if labels is None else Counter(label for label in labels.tolist() if label is not None)
            return IdSpace(ids, position, labels, dict(counts), rows)

        return self._spaces.get_or_build(tuple((m, s.version, len(s)) for m, s in zip(models, stores)), build)
