"""The facade the CLI, the app and the API call: a :class:`~cbir.catalogue.StoreCatalogue`
(the collection's feature stores) that also extracts query vectors and runs searches (one
:class:`~cbir.request.SearchRequest` at a time: per-model rows, fusion, re-ranking,
feedback), and hands collection-wide experiments to :mod:`cbir.experiments`."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np
from PIL import Image

from . import distance_rows, experiments
from .catalogue import StoreCatalogue
from .centring import all_centred, centre, centres
from .errors import CBIRError
from .evaluation import EvaluationReport
from .explain import TOP_PAIRS, Explanation, explain_query
from .extractors import FAMILIES, MODELS, build_extractor, get_spec, model_status
from .fusion import fusion_method
from .images import image_from_array, open_image, resize_rgb
from .importing import imported_models
from .index import get_backend, resolve_backend
from .index_cache import IdSpace
from .lru import LRU
from .ranking import FusionInputs, rank_distances
from .request import Query, SearchRequest, SearchResponse, parse_search
from .rerank import Rerank
from .store import FeatureStore

#: vectors of the most recent uploaded queries kept per engine, so a page that searches with
#: an upload and then needs its vector (the Map), or searches it again with other settings,
#: does not decode or extract it again (a 1280-d vector is 5 KB)
QUERY_VECTORS_MAX = 32


class Plan(NamedTuple):
    """A request resolved on this server: ``stores`` by model, the ``backend``, ``depth``
    (candidates per model; None for an exact backend)."""

    stores: dict[str, FeatureStore]
    backend: str
    depth: int | None


class Engine(StoreCatalogue):
    """Thread-safe facade; stores and extractors are loaded once and reused.

    ``Engine(collection=None, settings=None)``: the collection folder (or a scanned
    :class:`~cbir.collection.Collection`; default CBIR_COLLECTION) and the settings."""

    def __init__(self, collection=None, settings=None):
        super().__init__(collection, settings)
        self._extractors: dict[tuple[str, str], object] = {}
        self._query_vectors: LRU[tuple[str, str], np.ndarray] = LRU(QUERY_VECTORS_MAX)  # (model, upload key)
        self._extractor_lock = threading.Lock()

    # -- models ---------------------------------------------------------------------
    def extractor(self, model: str, weights: str = "imagenet"):
        """The model's feature extractor, built once per process (a Keras model: seconds)."""
        spec = get_spec(model)
        with self._extractor_lock:
            key = (spec.name, weights)
            if key not in self._extractors:
                self._extractors[key] = build_extractor(spec.name, weights)
            return self._extractors[key]

    def model_info(self) -> list[dict]:
        """Every registered model and every imported one: availability, why, and its store."""
        out = []
        for name in [*MODELS, *self.recipe_models(), *imported_models(self.settings.features_dir, self.collection.name)]:
            spec, (available, reason) = get_spec(name), model_status(name)
            info = dict(name=name, label=spec.label, dim=spec.dim, input_size=spec.input_size, available=available,
                        extracts=FAMILIES[spec.family].extracts, reason=reason, indexed=0, last_indexed=None, searchable=False,
                        description=spec.description)
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

    def resolve_backend(self, backend: str | None, models: Sequence[str] | Mapping[str, FeatureStore],
                        metric: str | None = None, rerank: str | None = None) -> str:
        """The backend a request uses (``auto``: by the size of the largest store, among the
        backends serving ``metric`` and the ``rerank`` method)."""
        stores = models if isinstance(models, Mapping) else self.stores(models)
        return resolve_backend(backend or self.settings.index_backend, max(len(s) for s in stores.values()), self.settings,
                               metric, rerank)

    def search_depth(self, request: SearchRequest, backend: str) -> int | None:
        """Candidates per model for ``backend``: None for an exact one, else
        max(top k, the request's depth or CBIR_SEARCH_DEPTH)."""
        return None if get_backend(backend).exact else max(request.top_k, int(request.depth or self.settings.search_depth))

    # -- query vectors ----------------------------------------------------------------
    def _with_label(self, query: Query) -> Query:
        """A collection query with its label; an unknown id raises :class:`UnknownImageError`."""
        if query.image_id is None:
            return query
        self.collection.index_of(query.image_id)
        return replace(query, label=self.collection.label_of(query.image_id))

    def _upload_vectors(self, models: Sequence[str], query: Query, timings: dict) -> dict[str, np.ndarray]:
        """Each model's vector of an uploaded query: from the recent ones when it was searched
        a moment ago, else extracted; the upload is decoded once, and only if some model needs it.
        Timings: ``decode`` (decode + resize), ``load:<model>`` (building a model), ``extract:<model>``."""
        vectors, image = {}, None
        for model in models:
            recent = self._query_vectors.get((model, query.key))
            if recent is not None:
                timings[f"extract:{model}"] = 0.0  # extracted for an earlier search of the same upload
                vectors[model] = recent
                continue
            if image is None:
                t0 = time.perf_counter()
                image = image_from_array(query.image) if isinstance(query.image, np.ndarray) else \
                    open_image(query.image, max_pixels=self.settings.max_image_pixels)
                timings["decode"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            extractor, t1 = self.extractor(model), time.perf_counter()
            if t1 - t0 > 1e-3:
                timings[f"load:{model}"] = t1 - t0
            arr, t2 = resize_rgb(image, extractor.input_size)[None], time.perf_counter()
            vec = extractor.features(arr)[0]
            timings["decode"] += t2 - t1  # the resize belongs to decoding
            timings[f"extract:{model}"] = time.perf_counter() - t2
            vec.setflags(write=False)  # shared by the searches that reuse it
            vectors[model] = self._query_vectors.put((model, query.key), vec)
        return vectors

    def query_vector(self, model: str, image_id: str | None = None, image: bytes | np.ndarray | None = None) -> np.ndarray:
        """The model's (dim,) float32 vector of a collection image or of an uploaded one (an
        upload searched a moment ago is neither decoded nor extracted again)."""
        query, model = self._with_label(Query(image_id=image_id, image=image)), get_spec(model).name
        if query.image_id is not None:
            return self.store(model).vector(query.image_id)
        return self._upload_vectors([model], query, {})[model]

    def explain(self, model: str, result_id: str, image_id: str | None = None, image: bytes | np.ndarray | None = None,
                top: int = TOP_PAIRS, centre: bool = True) -> tuple[Explanation, Image.Image, Image.Image]:
        """Why ``result_id`` matched the query (a collection id, or an upload's bytes or array):
        :func:`cbir.explain.explain_query` under ``model`` (built once, as for a search), of the
        centred similarity when ``centre`` and the model has a store (:meth:`centring_mean`)."""
        spec, query = get_spec(model), self._with_label(Query(image_id=image_id, image=image))
        return explain_query(self.collection, spec, lambda: self.extractor(spec.name), query, str(result_id),
                             self.settings.max_image_pixels, top, self.centring_mean(spec.name) if centres("cosine", centre) else None)

    # -- search ---------------------------------------------------------------------
    def _distance_rows(self, request: SearchRequest, stores: Mapping[str, FeatureStore], backend: str, depth: int,
                       space: IdSpace) -> tuple[list[str], dict[str, np.ndarray], dict[str, float]]:
        """Each model's (n,) float64 distances to every image the models have in common
        (+inf: the query itself when excluded; NaN: not a candidate of an approximate index)."""
        timings: dict[str, float] = {}
        query = request.query
        position = space.position.get(query.image_id) if request.exclude_query and query.image_id is not None else None
        if query.is_upload:  # a centred store's query is centred on the same mean
            vectors = {m: v if stores[m].centre is None else centre(v, stores[m].centre)
                       for m, v in self._upload_vectors(list(stores), query, timings).items()}
        else:
            vectors = {m: s.vector(query.image_id) for m, s in stores.items()}
        out: dict[str, np.ndarray] = {}
        for m, s in stores.items():
            t0 = time.perf_counter()
            # an excluded collection query is one of its own candidates: ask one more
            row = distance_rows.distance_row(self, m, s, request, vectors[m], backend, depth + (position is not None))
            d = np.asarray(space.align(m, row), dtype=np.float64)  # a fresh row: no copy when already float64
            if position is not None:
                d[position] = np.inf
            timings[f"search:{m}"] = time.perf_counter() - t0
            out[m] = d
        return space.ids, out, timings

    def plan(self, request: SearchRequest) -> Plan:
        """What ``request`` resolves to on this server now: each model's store (looked up once),
        the backend (``auto`` and None resolved) and the candidates per model. Computed once per
        request, shared by the API's dispatch, the result cache's key and the search."""
        stores = self.stores(request.models, centred=request.centred)
        backend = self.resolve_backend(request.backend, stores, request.metric, request.rerank.method if request.rerank else None)
        return Plan(stores, backend, self.search_depth(request, backend))

    def search(self, request: SearchRequest | Sequence[str] | str, *args, plan: Plan | None = None, **kwargs) -> SearchResponse:
        """Run a :class:`SearchRequest`; called with anything else, the arguments of
        :func:`cbir.request.parse_search` (models, metric, top_k, image_id= or image=, ...).

        With two or more models and a ``method``, fuse them. ``rerank`` (αQE or DBA+αQE) and
        ``feedback`` (Rocchio rounds) apply per model before fusion (cosine). ``backend``
        (default CBIR_INDEX_BACKEND): exact ranks the whole collection; faiss and milvus fetch
        ``depth`` candidates per model (default max(k, CBIR_SEARCH_DEPTH)), fuse their union,
        and report AP@depth. Each store is looked up once (``plan``: already, by the caller).
        Raises :class:`CBIRError` subclasses for an unknown image id, a model with no store, or
        a bad argument."""
        if not isinstance(request, SearchRequest):
            request = parse_search(request, *args, **kwargs)
        start = time.perf_counter()
        request = replace(request, query=self._with_label(request.query))
        self.collection.check_ids([i for r in request.feedback for i in (*r.relevant, *r.non_relevant)], "feedback")
        stores, backend, depth = plan or self.plan(request)
        space = self.indexes.id_space(stores)
        ids, dists, timings = self._distance_rows(request, stores, backend, depth or 0, space)
        query, top_k = request.query, request.top_k
        inputs = FusionInputs(ids, dists, space.labels, space.label_counts, query.label, top_k, depth)
        per_model = {m: rank_distances(m, d, ids, space.labels, query.label, top_k, depth=depth, label_counts=space.label_counts,
                                       seconds=timings.get(f"search:{m}", 0.0) + timings.get(f"extract:{m}", 0.0))
                     for m, d in dists.items()}
        fused = inputs.fuse(request.method, request.weight_map, request.normalisation) if request.method else None
        if fused is not None:
            timings["fusion"] = fused.seconds
        timings["total"] = time.perf_counter() - start
        return SearchResponse(
            query=query, metric=request.metric, top_k=top_k, per_model=per_model, fused=fused,
            method=request.method if fused is not None else None,
            weights=request.weight_map if (request.weights and fused is not None and fusion_method(request.method).weighted) else None,
            rerank=request.rerank, feedback_rounds=len(request.feedback), timings=timings, backend=backend, depth=depth,
            inputs=inputs, collection=self.collection.name,
            normalisation=request.normalisation if fused is not None and fusion_method(request.method).normalised else None,
            centred=all_centred(stores),
        )

    # -- experiments (cbir.experiments) ------------------------------------------------
    def evaluate(self, models: Sequence[str] | str, metric: str = "cosine", method: str | None = None,
                 weights: Mapping[str, float] | None = None, progress: Callable[[int, int], None] | None = None,
                 rerank: Rerank | None = None, backend: str | None = None, depth: int | None = None,
                 queries: int | None = None, seed: int = 0, ties: str = "stable",
                 normalisation: str | None = None, centre: bool = True) -> EvaluationReport:
        """Every labelled image (or a seeded sample of ``queries``) as a query against the
        rest, for one model or a fusion (approximate backend: mAP at ``depth``); ``ties``:
        "stable" or "average" (tie-aware figures); ``normalisation``: the fusion's score
        normalisation (:data:`cbir.fusion.NORMALISATIONS`, default min-max); ``centre``: centred
        vectors under cosine and Euclidean (:mod:`cbir.centring`)."""
        models = list(dict.fromkeys(get_spec(m).name for m in ([models] if isinstance(models, str) else list(models))))
        report = experiments.evaluate(self, models, metric, method, weights, progress, rerank, self.resolve_backend(backend, models, metric, rerank.method if rerank else None),
                                      int(depth or self.settings.search_depth), queries, seed, ties, normalisation, centre)
        report.collection = self.collection.name
        return report

    def evaluate_feedback(self, model: str, rounds: int = 1, k: int = 20, rerank: Rerank | None = None,
                          centre: bool = True) -> list[EvaluationReport]:
        """Simulated Rocchio feedback with the true labels (centred unless ``centre`` is False);
        the report before and after each round."""
        return experiments.evaluate_feedback(self, get_spec(model).name, rounds, k, rerank, centre)
