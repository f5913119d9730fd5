"""The vector-index backends as records: one :class:`Backend` per backend, in
:data:`BACKENDS`, looked up by :func:`get_backend`.

A record pairs what a page, the API or the CLI needs to know about a backend (label, exact
or approximate, the metrics and re-rankings it serves, whether it can run here and why
not) with how to open its index (the pattern of FiftyOne Brain's similarity backends, a
config class paired with an index class). Code that behaves differently per backend asks
the record (``get_backend(name).exact``, ``.supports_rerank(method)``) instead of testing
the backend's name.

* ``exact``: numpy brute force over the prepared store (:class:`~cbir.index.exact.ExactIndex`),
  every metric, the reference;
* ``faiss``: FAISS HNSW or IVF-PQ in process (Johnson, Douze & Jégou, "Billion-scale
  similarity search with GPUs", IEEE Trans. Big Data 2019), cached beside the store;
* ``milvus``: a Milvus server or cluster, synced with the store when first searched.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..distances import METRICS
from ..errors import unknown, use_setting
from ..rerank import RERANK_LABELS, RERANK_METHODS
from .base import SPACES, IndexBackendError, VectorIndex, space_for

#: open(store, folder, metric, settings, labels, collection) -> the backend's index of the store
Opener = Callable[..., VectorIndex]
#: open_derived(store, folder, name, vectors, metric, settings) -> an index over vectors derived
#: from the store (DBA's), cached under ``name``
DerivedOpener = Callable[..., VectorIndex]


@dataclass(frozen=True)
class Backend:
    """One vector-index backend: what it is, what it serves, and how to open it."""

    name: str
    label: str
    exact: bool  # ranks the whole store (True) or returns ``depth`` candidates per query
    summary: str  # one line: how it searches
    metrics: tuple[str, ...]  # the metrics it serves (chi-square has no ANN form)
    keeps: str  # where its index lives (the Collection page)
    files: str | None  # glob of its cached files beside a store, if any
    status: Callable[[object], tuple[bool, str]]  # settings -> (can run here, why / why not)
    opener: Opener
    derived_opener: DerivedOpener | None = None  # None: no index over derived vectors (no DBA)

    @property
    def approximate(self) -> bool:
        return not self.exact

    @property
    def reranks(self) -> tuple[str, ...]:
        """The re-ranking methods (:data:`cbir.rerank.RERANK_METHODS`) it serves: DBA + αQE
        needs an index over the augmented vectors."""
        return tuple(m for m in RERANK_METHODS if m != "dba_aqe" or self.derived_opener is not None)

    def available(self, settings) -> tuple[bool, str]:
        """(whether it can run here, the reason: what it uses, or what is missing)."""
        return self.status(settings)

    def supports_metric(self, metric: str) -> bool:
        return metric in self.metrics

    def supports_rerank(self, method: str) -> bool:
        return method in self.reranks

    def check_rerank(self, method: str) -> None:
        """Raises :class:`IndexBackendError` when the backend cannot serve the re-ranking."""
        if not self.supports_rerank(method):
            able = sorted((b for b in BACKENDS.values() if b.supports_rerank(method)), key=lambda b: b.exact)  # approximate first
            raise IndexBackendError(f"{RERANK_LABELS[method]} needs an index over the augmented vectors (αQE works with "
                                    f"{self.label})", remedy=use_setting("backend", " or ".join(b.name for b in able),
                                                                           " or ".join(b.label for b in able)))

    def open(self, store, folder: Path, metric: str, settings, labels=None, collection: str = "collection") -> VectorIndex:
        """The backend's index of ``store`` for ``metric`` (built, loaded or synced).
        Raises :class:`~cbir.index.base.UnsupportedMetric` for a metric it does not serve
        and :class:`IndexBackendError` when it cannot run (missing package or server)."""
        return self.opener(store, folder, metric, settings, labels, collection)

    def open_derived(self, store, folder: Path, name: str, vectors: np.ndarray, metric: str, settings) -> VectorIndex:
        """An index over ``vectors`` (N, d) derived from ``store`` (DBA's), cached as ``name``."""
        if self.derived_opener is None:
            raise IndexBackendError(f"the {self.name} backend keeps no index over derived vectors")
        return self.derived_opener(store, folder, name, vectors, metric, settings)


# -- exact ------------------------------------------------------------------------------
def _open_exact(store, folder, metric, settings, labels, collection) -> VectorIndex:
    return store.index(metric)  # the store's own prepared index: one copy per process


def _exact_derived(store, folder, name, vectors, metric, settings) -> VectorIndex:
    from .exact import ExactIndex

    return ExactIndex(vectors, metric)


# -- faiss ------------------------------------------------------------------------------
def faiss_index(store, folder: Path, name: str, vectors: np.ndarray, metric: str, kind: str) -> VectorIndex:
    """A FAISS index over ``vectors`` (the store's, or vectors derived from it such as DBA's),
    built once per store version and cached beside the store as ``<name>.npz``."""
    from ..derived import derived_array
    from .faiss_backend import FaissIndex, build_faiss

    space_for(metric, "faiss")  # chi-square: a clear error before any work
    data, _ = derived_array(store, folder, name, lambda: FaissIndex(build_faiss(vectors, metric, kind), metric, kind).to_bytes())
    return FaissIndex.from_bytes(data, metric, kind)


def _open_faiss(store, folder, metric, settings, labels, collection) -> VectorIndex:
    return faiss_index(store, folder, f"faiss-{settings.faiss_kind}-{metric}", store.embeddings, metric, settings.faiss_kind)


def _faiss_derived(store, folder, name, vectors, metric, settings) -> VectorIndex:
    kind = settings.faiss_kind  # "dba-n10-a3" is cached as "faissdba-hnsw-n10-a3"
    return faiss_index(store, folder, "faiss" + name.replace("-", f"-{kind}-", 1), vectors, metric, kind)


def _faiss_status(settings) -> tuple[bool, str]:
    if importlib.util.find_spec("faiss") is None:
        return False, "`pip install faiss-cpu`"
    return True, f"faiss-cpu, {settings.faiss_kind.upper()}"


# -- milvus -----------------------------------------------------------------------------
def _open_milvus(store, folder, metric, settings, labels, collection) -> VectorIndex:
    if not settings.milvus_uri:
        raise IndexBackendError("the milvus backend needs a server: set CBIR_MILVUS_URI (e.g. http://localhost:19530)")
    from .milvus_backend import MilvusIndex

    labels = labels if labels is not None else [None] * len(store)
    return MilvusIndex(store, labels, metric, settings.milvus_uri, settings.milvus_token, collection)


def _milvus_status(settings) -> tuple[bool, str]:
    if importlib.util.find_spec("pymilvus") is None:
        return False, "`pip install pymilvus`"
    if not settings.milvus_uri:
        return False, "set CBIR_MILVUS_URI to a Milvus server"
    return True, f"server at {settings.milvus_uri}"


BACKENDS: dict[str, Backend] = {
    "exact": Backend("exact", "Exact (numpy)", True, "brute force over the prepared store: every image ranked",
                     tuple(METRICS), "every indexed model (in memory)", None,
                     lambda settings: (True, "numpy, always available"), _open_exact, _exact_derived),
    "faiss": Backend("faiss", "FAISS (HNSW / IVF-PQ)", False, "in-process approximate search (Johnson, Douze & Jégou 2019)",
                     tuple(SPACES), "cached beside each store", "faiss-*.npz", _faiss_status, _open_faiss, _faiss_derived),
    "milvus": Backend("milvus", "Milvus server", False, "a Milvus server or cluster (HNSW), label filters on the server",
                      tuple(SPACES), "synced when first searched", None, _milvus_status, _open_milvus),
}


def get_backend(name: str) -> Backend:
    """The record of backend ``name`` (case and spaces ignored); raises the project's
    unknown-name error (:func:`cbir.errors.unknown`) for any other name, ``auto`` included
    (resolve it first with :func:`cbir.index.resolve_backend`)."""
    key = str(name).strip().lower()
    if key not in BACKENDS:
        raise unknown("index backend", name, BACKENDS)
    return BACKENDS[key]
