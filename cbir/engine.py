"""The facade the CLI, the app and the API call: load a collection's feature stores and
extractors, search one or several models (fusion, re-ranking, feedback), and delegate
collection-wide experiments to :mod:`cbir.experiments`."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from . import experiments, model_search
from .collection import Collection, scan_collection
from .config import Settings, get_settings
from .distances import normalise_metric
from .errors import CBIRError, StoreError, unknown
from .evaluation import EvaluationReport
from .extractors import FAMILIES, MODELS, build_extractor, get_spec, model_status
from .fusion import FUSION_METHODS, check_weights
from .importing import imported_models
from .index import get_backend, resolve_backend
from .index_cache import IndexCache
from .lru import LRU
from .images import image_from_array, open_image, resize_rgb
from .rerank import FeedbackRound, Rerank, check_metric, feedback_rounds
from .search import FusionInputs, Query, SearchResponse, check_top_k, rank_distances
from .store import FeatureStore, load_store, store_dir, store_exists, store_stamp

#: vectors of the most recent uploaded queries kept per engine, so a page that searches with
#: an upload and then needs its vector (the Map), or searches it again with other settings,
#: does not extract it again (a 1280-d vector is 5 KB)
QUERY_VECTORS_MAX = 32


class Engine:
    """Thread-safe facade; stores and extractors are loaded once and reused."""

    def __init__(self, collection: str | Path | Collection | None = None, settings: Settings | None = None):
        self.settings = settings or get_settings()
        root = collection if collection is not None else self.settings.collection
        self.collection = root if isinstance(root, Collection) else scan_collection(root)
        self._stores: dict[tuple[str, str], tuple[float, FeatureStore]] = {}
        self._extractors: dict[tuple[str, str], object] = {}
        self._query_vectors: LRU[tuple[str, str], np.ndarray] = LRU(QUERY_VECTORS_MAX)  # (model, upload hash)
        self._lock = threading.RLock()
        self.indexes = IndexCache(self)

    # -- loading --------------------------------------------------------------------
    def store_folder(self, model: str, weights: str = "imagenet") -> Path:
        return store_dir(self.settings.features_dir, self.collection.name, get_spec(model).name, weights)

    def has_store(self, model: str, weights: str = "imagenet") -> bool:
        return store_exists(self.store_folder(model, weights))

    def store(self, model: str, weights: str = "imagenet") -> FeatureStore:
        """The model's store, reloaded when the file on disk changed."""
        spec = get_spec(model)
        folder = self.store_folder(spec.name, weights)
        stamp = store_stamp(folder)
        if stamp is None:
            raise StoreError(
                f"{spec.label} has no features for collection {self.collection.name!r}; "
                f"run `cbir index --model {spec.name}` (or use the Collection page)"
            )
        with self._lock:
            cached = self._stores.get((spec.name, weights))
            if cached and cached[0] == stamp:
                return cached[1]
            store = load_store(folder)
            self._stores[(spec.name, weights)] = (stamp, store)
            return store

    def extractor(self, model: str, weights: str = "imagenet"):
        spec = get_spec(model)
        with self._lock:
            key = (spec.name, weights)
            if key not in self._extractors:
                self._extractors[key] = build_extractor(spec.name, weights)
            return self._extractors[key]

    def model_info(self) -> list[dict]:
        """Every registered model and every imported one: availability, why, and its store."""
        out = []
        for name in [*MODELS, *imported_models(self.settings.features_dir, self.collection.name)]:
            spec = get_spec(name)
            available, reason = model_status(name)
            info = dict(name=name, label=spec.label, dim=spec.dim, input_size=spec.input_size, available=available,
                        extracts=FAMILIES[spec.family].extracts, reason=reason, indexed=0, last_indexed=None, searchable=False)
            if self.has_store(name):
                try:
                    s = self.store(name)
                    info.update(indexed=len(s), last_indexed=s.manifest.get("updated"), searchable=True, dim=s.dim)
                except CBIRError as exc:
                    info["reason"] = str(exc)
            out.append(info)
        return out

    def searchable_models(self) -> list[str]:
        return [m["name"] for m in self.model_info() if m["searchable"]]

    def resolve_backend(self, backend: str | None, models: Sequence[str]) -> str:
        """The backend a request uses (``auto``: by the size of the largest store)."""
        return resolve_backend(backend or self.settings.index_backend, max(len(self.store(m)) for m in models), self.settings)

    # -- search ---------------------------------------------------------------------
    def _check_query(self, query: Query) -> Query:
        if (query.image_id is None) == (query.image is None):
            raise CBIRError("give exactly one query: a collection image id or an image")
        if query.image_id is not None:
            query.image_id = str(query.image_id)
            self.collection.index_of(query.image_id)  # raises a clear error for an unknown id
            query.label = self.collection.label_of(query.image_id)
        return query

    def _decode(self, query: Query, timings: dict):
        """The uploaded query as an RGB image, decoded once for every model."""
        t0 = time.perf_counter()
        image = image_from_array(query.image) if isinstance(query.image, np.ndarray) else \
            open_image(query.image, max_pixels=self.settings.max_image_pixels)
        timings["decode"] = time.perf_counter() - t0
        return image

    def _recent_vector(self, key: tuple[str, str]) -> np.ndarray | None:
        return self._query_vectors.get(key)

    def _query_vector(self, model: str, query: Query, image, timings: dict) -> np.ndarray:
        if query.image_id is not None:
            return self.store(model).vector(query.image_id)
        key = (model, query.cache_key())
        recent = self._recent_vector(key)
        if recent is not None:
            timings[f"extract:{model}"] = 0.0  # extracted for an earlier search of the same upload
            return recent
        t0 = time.perf_counter()
        extractor = self.extractor(model)
        arr = resize_rgb(image, extractor.input_size)[None]
        t1 = time.perf_counter()
        vec = extractor.features(arr)[0]
        timings["decode"] += t1 - t0  # the resize belongs to decoding
        timings[f"extract:{model}"] = time.perf_counter() - t1
        vec.setflags(write=False)  # shared by the searches that reuse it
        return self._query_vectors.put(key, vec)

    def query_vector(self, model: str, image_id: str | None = None, image: bytes | None = None) -> np.ndarray:
        """The model's feature vector of a collection image or of an uploaded one (an upload
        searched a moment ago is neither decoded nor extracted again)."""
        query = self._check_query(Query(image_id=image_id, image=image))
        model = get_spec(model).name
        if image is not None and (recent := self._recent_vector((model, query.cache_key()))) is not None:
            return recent
        timings: dict[str, float] = {}
        return self._query_vector(model, query, self._decode(query, timings) if image is not None else None, timings)

    def full_distances(
        self, models: Sequence[str], metric: str, query: Query, exclude_query: bool = True,
        rerank: Rerank | None = None, feedback: list[FeedbackRound] | None = None, backend: str = "exact", depth: int = 0,
    ) -> tuple[list[str], dict[str, np.ndarray], dict[str, float]]:
        """Each model's distances to every image the models have in common (+inf = excluded)."""
        timings: dict[str, float] = {}
        rerank, feedback = rerank or Rerank(), feedback or []
        if rerank.active or feedback:
            check_metric(metric)
        stores = {m: self.store(m) for m in models}
        space = self.indexes.id_space(models)
        ids = space.ids
        position = space.position.get(query.image_id) if exclude_query and query.image_id is not None else None
        image = self._decode(query, timings) if query.image is not None else None
        out: dict[str, np.ndarray] = {}
        for m, s in stores.items():
            vec = self._query_vector(m, query, image, timings)
            t0 = time.perf_counter()
            row = model_search.distance_row(self, m, metric, vec, query, rerank, feedback, backend, depth)
            d = np.asarray(s.aligned(ids, row), dtype=np.float64)  # a fresh row: no copy when already float64
            if position is not None:
                d[position] = np.inf
            timings[f"search:{m}"] = time.perf_counter() - t0
            out[m] = d
        return ids, out, timings

    def search(
        self, models: Sequence[str] | str, metric: str = "cosine", top_k: int = 10, query: Query | None = None, *,
        image_id: str | None = None, image: bytes | None = None, exclude_query: bool = True, method: str | None = None,
        weights: Mapping[str, float] | None = None, rerank: Rerank | None = None, feedback: Sequence[FeedbackRound] | None = None,
        backend: str | None = None, depth: int | None = None,
    ) -> SearchResponse:
        """Search one or several models; with two or more and a ``method``, fuse them.

        ``rerank`` (αQE or DBA+αQE) and ``feedback`` (Rocchio rounds) apply per model
        before fusion and need the cosine metric. ``backend`` (default CBIR_INDEX_BACKEND):
        exact ranks the whole collection; faiss and milvus fetch ``depth`` candidates per
        model (default max(k, CBIR_SEARCH_DEPTH)), fuse their union, and report AP@depth.
        """
        start = time.perf_counter()
        models = list(dict.fromkeys(get_spec(m).name for m in ([models] if isinstance(models, str) else models)))
        if not models:
            raise CBIRError("choose at least one model")
        metric, top_k = normalise_metric(metric), check_top_k(top_k)
        backend = self.resolve_backend(backend, models)
        depth = None if get_backend(backend).exact else max(top_k, int(depth or self.settings.search_depth))
        query = self._check_query(query or Query(image_id=image_id, image=image))
        if method is not None and method not in FUSION_METHODS:
            raise unknown("fusion method", method, FUSION_METHODS)
        if weights is not None:
            check_weights(models, weights)  # whatever the method: NaN or -1 is a mistake to report
        feedback = feedback_rounds(feedback)
        self.collection.check_ids([i for r in feedback for i in (*r.relevant, *r.non_relevant)], "feedback")
        ids, dists, timings = self.full_distances(models, metric, query, exclude_query, rerank, feedback, backend, depth or 0)
        space = self.indexes.id_space(models)
        inputs = FusionInputs(ids, dists, space.labels, space.label_counts, query.label, top_k, depth)
        per_model = {m: rank_distances(m, d, ids, space.labels, query.label, top_k, depth=depth, label_counts=space.label_counts,
                                       seconds=timings.get(f"search:{m}", 0.0) + timings.get(f"extract:{m}", 0.0))
                     for m, d in dists.items()}
        fused = None
        if method and len(models) > 1:
            fused = inputs.fuse(method, weights)
            timings["fusion"] = fused.seconds
        timings["total"] = time.perf_counter() - start
        return SearchResponse(
            query=query, metric=metric, top_k=top_k, per_model=per_model, fused=fused,
            method=method if fused is not None else None,
            weights=dict(weights) if (weights and fused is not None and method == "weighted") else None,
            rerank=rerank, feedback_rounds=len(feedback), timings=timings, backend=backend, depth=depth, inputs=inputs,
        )

    # -- experiments (cbir.experiments) ------------------------------------------------
    def evaluate(self, models: Sequence[str] | str, metric: str = "cosine", method: str | None = None,
                 weights: Mapping[str, float] | None = None, progress: Callable[[int, int], None] | None = None,
                 rerank: Rerank | None = None, backend: str | None = None, depth: int | None = None,
                 queries: int | None = None, seed: int = 0) -> EvaluationReport:
        """Every labelled image (or a seeded sample of ``queries``) as a query against the
        rest, for one model or a fusion (approximate backend: mAP at ``depth``)."""
        models = [get_spec(m).name for m in ([models] if isinstance(models, str) else list(models))]
        return experiments.evaluate(self, models, metric, method, weights, progress, rerank, self.resolve_backend(backend, models),
                                    int(depth or self.settings.search_depth), queries, seed)

    def evaluate_feedback(self, model: str, rounds: int = 1, k: int = 20, rerank: Rerank | None = None) -> list[EvaluationReport]:
        """Simulated Rocchio feedback with the true labels; the report before and after each round."""
        return experiments.evaluate_feedback(self, get_spec(model).name, rounds, k, rerank)
