"""The one object the CLI, the app and the API call: a collection, its feature stores,
the built extractors, search, combined search and evaluation."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from .collection import Collection, scan_collection
from .config import Settings, get_settings
from .distances import PreparedIndex, normalise_metric, pairwise_distances
from .errors import CBIRError, CollectionError, StoreError
from .evaluation import EvaluationReport, evaluate_distances
from .extractors import build_extractor, get_spec, model_status
from .fusion import FUSION_METHODS, check_weights, fuse
from .images import image_from_array, open_image, resize_rgb
from .rerank import FeedbackRound, Rerank, feedback_rounds, alpha_query_expansion, check_metric, l2_normalise, load_or_build_dba, rocchio
from .search import RankedList, check_top_k, rank_distances
from .store import FeatureStore, load_store, store_dir, store_exists

EVAL_CHUNK = 512
DBA_IN_MEMORY = 2  # DBA matrices kept per process (each is the size of its store: 512 MB at 100k x 1280)


@dataclass
class Query:
    """What was searched for: a collection id, or an uploaded image (and maybe its label)."""

    image_id: str | None = None
    image: bytes | np.ndarray | None = None  # encoded file bytes, or an (h, w[, c]) array
    label: str | None = None

    def cache_key(self) -> str:
        if self.image_id is not None:
            return f"id:{self.image_id}"
        import hashlib

        data = self.image.tobytes() + str(self.image.shape).encode() if isinstance(self.image, np.ndarray) else (self.image or b"")
        return "img:" + hashlib.blake2b(data, digest_size=16).hexdigest()


@dataclass
class SearchResponse:
    query: Query
    metric: str
    top_k: int
    per_model: dict[str, RankedList]
    fused: RankedList | None = None
    method: str | None = None
    weights: dict[str, float] | None = None
    rerank: Rerank | None = None
    feedback_rounds: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "query": {"id": self.query.image_id, "label": self.query.label, "upload": self.query.image is not None},
            "metric": self.metric,
            "top_k": self.top_k,
            "models": {m: r.to_dict() for m, r in self.per_model.items()},
            "combined": None if self.fused is None else self.fused.to_dict(),
            "method": self.method,
            "weights": self.weights,
            "rerank": None if self.rerank is None or not self.rerank.active else {"method": self.rerank.method, "n": self.rerank.n, "alpha": self.rerank.alpha},
            "feedback_rounds": self.feedback_rounds,
            "timings": {k: round(v, 5) for k, v in self.timings.items()},
        }


class Engine:
    """Thread-safe facade; stores and extractors are loaded once and reused."""

    def __init__(self, collection: str | Path | Collection | None = None, settings: Settings | None = None):
        self.settings = settings or get_settings()
        root = collection if collection is not None else self.settings.collection
        self.collection = root if isinstance(root, Collection) else scan_collection(root)
        self._stores: dict[tuple[str, str], tuple[float, FeatureStore]] = {}
        self._extractors: dict[tuple[str, str], object] = {}
        self._lock = threading.RLock()
        self._labels_memo: dict[tuple, np.ndarray] = {}
        self._dba: OrderedDict[tuple, PreparedIndex] = OrderedDict()
        self.last_dba_seconds: dict[str, float] = {}

    # -- loading --------------------------------------------------------------------
    def store_folder(self, model: str, weights: str = "imagenet") -> Path:
        return store_dir(self.settings.features_dir, self.collection.name, get_spec(model).name, weights)

    def has_store(self, model: str, weights: str = "imagenet") -> bool:
        return store_exists(self.store_folder(model, weights))

    def store(self, model: str, weights: str = "imagenet") -> FeatureStore:
        """The model's store, reloaded when the file on disk changed."""
        spec = get_spec(model)
        folder = self.store_folder(spec.name, weights)
        path = folder / "store.npz"
        if not path.exists():
            raise StoreError(
                f"{spec.label} has no features for collection {self.collection.name!r}; "
                f"run `cbir index --model {spec.name}` (or use the Collection page)"
            )
        mtime = path.stat().st_mtime_ns
        with self._lock:
            cached = self._stores.get((spec.name, weights))
            if cached and cached[0] == mtime:
                return cached[1]
            store = load_store(folder)
            self._stores[(spec.name, weights)] = (mtime, store)
            return store

    def extractor(self, model: str, weights: str = "imagenet"):
        spec = get_spec(model)
        with self._lock:
            key = (spec.name, weights)
            if key not in self._extractors:
                self._extractors[key] = build_extractor(spec.name, weights)
            return self._extractors[key]

    def model_info(self) -> list[dict]:
        """Every registered model: availability, why, and its store."""
        from .extractors import MODELS

        out = []
        for name, spec in MODELS.items():
            available, reason = model_status(name)
            info = {
                "name": name,
                "label": spec.label,
                "dim": spec.dim,
                "input_size": spec.input_size,
                "available": available,
                "reason": reason,
                "indexed": 0,
                "last_indexed": None,
                "searchable": False,
            }
            if self.has_store(name):
                try:
                    s = self.store(name)
                    info.update(indexed=len(s), last_indexed=s.manifest.get("updated"), searchable=True)
                except CBIRError as exc:
                    info["reason"] = str(exc)
            out.append(info)
        return out

    def searchable_models(self) -> list[str]:
        return [m["name"] for m in self.model_info() if m["searchable"]]

    # -- search ---------------------------------------------------------------------
    def _decode(self, query: Query, timings: dict):
        """The uploaded query as an RGB image, decoded once for every model."""
        t0 = time.perf_counter()
        if isinstance(query.image, np.ndarray):
            img = image_from_array(query.image)
        else:
            img = open_image(query.image, max_pixels=self.settings.max_image_pixels)
        timings["decode"] = time.perf_counter() - t0
        return img

    def _query_vector(self, model: str, query: Query, image, timings: dict) -> np.ndarray:
        if query.image_id is not None:
            return self.store(model).vector(query.image_id)
        t0 = time.perf_counter()
        extractor = self.extractor(model)
        arr = resize_rgb(image, extractor.input_size)[None]
        t1 = time.perf_counter()
        vec = extractor.features(arr)[0]
        timings["decode"] += t1 - t0  # the resize belongs to decoding
        timings[f"extract:{model}"] = time.perf_counter() - t1
        return vec

    def _check_query(self, query: Query) -> Query:
        if (query.image_id is None) == (query.image is None):
            raise CBIRError("give exactly one query: a collection image id or an image")
        if query.image_id is not None:
            query.image_id = str(query.image_id)
            self.collection.index_of(query.image_id)  # raises a clear error for an unknown id
            query.label = self.collection.label_of(query.image_id)
        return query

    def _check_feedback_ids(self, feedback: list[FeedbackRound]) -> None:
        unknown_ids = [i for r in feedback for i in (*r.relevant, *r.non_relevant) if str(i) not in self.collection]
        if unknown_ids:
            shown = ", ".join(repr(str(i)) for i in unknown_ids[:5]) + (" ..." if len(unknown_ids) > 5 else "")
            raise CBIRError(f"feedback names {len(unknown_ids)} id(s) not in collection {self.collection.name!r}: {shown}")

    def rerank_index(self, model: str, rerank: Rerank):
        """Cosine index over the store, or over its DBA vectors (built once per store version)."""
        store = self.store(model)
        if rerank.method != "dba_aqe":
            return store.index("cosine")
        key = (model, rerank.n, rerank.alpha, store.version)
        with self._lock:
            if key in self._dba:
                self._dba.move_to_end(key)
                return self._dba[key]
            matrix, seconds = load_or_build_dba(store, self.store_folder(model), rerank.n, rerank.alpha)
            self.last_dba_seconds[model] = seconds
            self._dba[key] = PreparedIndex(matrix, "cosine")
            while len(self._dba) > DBA_IN_MEMORY:  # least recently used first: memory stays bounded
                self._dba.popitem(last=False)
            return self._dba[key]

    def _reranked_distances(self, model: str, vec: np.ndarray, query: Query, rerank: Rerank, feedback: list[FeedbackRound]) -> np.ndarray:
        store = self.store(model)
        index = self.rerank_index(model, rerank)
        db = index.vectors
        own = store.row_of(query.image_id) if query.image_id is not None and query.image_id in store else -1
        q = (db[own] if own >= 0 and rerank.method == "dba_aqe" else l2_normalise(vec))[None, :]
        for rnd in feedback:
            rel = [store.row_of(i) for i in rnd.relevant if i in store]
            non = [store.row_of(i) for i in rnd.non_relevant if i in store]
            q = rocchio(q, db[rel], db[non])
        if rerank.active:
            q = alpha_query_expansion(q, db, rerank.n, rerank.alpha, exclude=np.array([own]))
        return index.distances(q)[0]

    def full_distances(
        self, models: Sequence[str], metric: str, query: Query, exclude_query: bool = True,
        rerank: Rerank | None = None, feedback: list[FeedbackRound] | None = None,
    ) -> tuple[list[str], dict[str, np.ndarray], dict[str, float]]:
        """Each model's distances to every image the models have in common (+inf = excluded)."""
        timings: dict[str, float] = {}
        rerank = rerank or Rerank()
        feedback = feedback or []
        if rerank.active or feedback:
            check_metric(metric)
        stores = {m: self.store(m) for m in models}
        ids = _common_ids([s.ids for s in stores.values()])
        if not ids:
            raise StoreError("the chosen models share no indexed image; index them on the same collection")
        position = {query.image_id: ids.index(query.image_id)} if query.image_id in ids else {}
        image = self._decode(query, timings) if query.image is not None else None
        out: dict[str, np.ndarray] = {}
        for m, s in stores.items():
            vec = self._query_vector(m, query, image, timings)
            t0 = time.perf_counter()
            if rerank.active or feedback:
                d = self._reranked_distances(m, vec, query, rerank, feedback)
            else:
                d = s.index(metric).distances(vec[None, :])[0]
            d = d.astype(np.float64)
            rows = _rows_for(s, ids)
            if rows is not None:
                d = d[rows]  # models indexed over different images: the common ones
            if exclude_query and query.image_id in position:
                d[position[query.image_id]] = np.inf
            timings[f"search:{m}"] = time.perf_counter() - t0
            out[m] = d
        return ids, out, timings

    def search(
        self,
        models: Sequence[str] | str,
        metric: str = "cosine",
        top_k: int = 10,
        query: Query | None = None,
        *,
        image_id: str | None = None,
        image: bytes | None = None,
        exclude_query: bool = True,
        method: str | None = None,
        weights: Mapping[str, float] | None = None,
        rerank: Rerank | None = None,
        feedback: Sequence[FeedbackRound] | None = None,
    ) -> SearchResponse:
        """Search one or several models; with two or more and a ``method``, fuse them.

        ``rerank`` (αQE or DBA+αQE) and ``feedback`` (Rocchio rounds) apply per model
        before fusion and need the cosine metric.
        """
        start = time.perf_counter()
        models = [get_spec(m).name for m in ([models] if isinstance(models, str) else list(models))]
        if not models:
            raise CBIRError("choose at least one model")
        models = list(dict.fromkeys(models))
        metric = normalise_metric(metric)
        top_k = check_top_k(top_k)
        query = self._check_query(query or Query(image_id=image_id, image=image))
        if method is not None and method not in FUSION_METHODS:
            from .errors import unknown

            raise unknown("fusion method", method, FUSION_METHODS)
        if weights is not None:
            check_weights(models, weights)  # whatever the method: NaN or -1 is a mistake to report
        feedback = feedback_rounds(feedback)
        self._check_feedback_ids(feedback)
        ids, dists, timings = self.full_distances(models, metric, query, exclude_query, rerank, feedback)
        labels = self._labels_for(ids)
        per_model = {
            m: rank_distances(m, d, ids, labels, query.label, top_k, seconds=timings.get(f"search:{m}", 0.0) + timings.get(f"extract:{m}", 0.0))
            for m, d in dists.items()
        }
        fused = None
        if method and len(models) > 1:
            t0 = time.perf_counter()
            fd = fuse({m: d[None, :] for m, d in dists.items()}, method=method, weights=weights)[0]
            timings["fusion"] = time.perf_counter() - t0
            fused = rank_distances("combined", fd, ids, labels, query.label, top_k, seconds=timings["fusion"])
        timings["total"] = time.perf_counter() - start
        return SearchResponse(
            query=query,
            metric=metric,
            top_k=top_k,
            per_model=per_model,
            fused=fused,
            method=method if fused is not None else None,
            weights=dict(weights) if (weights and fused is not None and method == "weighted") else None,
            rerank=rerank,
            feedback_rounds=len(feedback),
            timings=timings,
        )

    def _labels_for(self, ids: Sequence[str]) -> np.ndarray | None:
        """Labels aligned with ``ids`` (None for images no longer in the collection), memoised."""
        if not self.collection.has_labels:
            return None
        key = (len(ids), ids[0], ids[-1], hash(tuple(ids)))
        cached = self._labels_memo.get(key)
        if cached is None:
            cached = np.array([self.collection.label_of(i) if i in self.collection else None for i in ids], dtype=object)
            with self._lock:
                if len(self._labels_memo) > 16:
                    self._labels_memo.clear()
                self._labels_memo[key] = cached
        return cached

    # -- evaluation -----------------------------------------------------------------
    def evaluate(
        self,
        models: Sequence[str] | str,
        metric: str = "cosine",
        method: str | None = None,
        weights: Mapping[str, float] | None = None,
        progress: Callable[[int, int], None] | None = None,
        rerank: Rerank | None = None,
    ) -> EvaluationReport:
        """Every labelled image as a query against the rest, for one model or a fusion."""
        t_start = time.perf_counter()
        models = [get_spec(m).name for m in ([models] if isinstance(models, str) else list(models))]
        metric = normalise_metric(metric)
        if not self.collection.has_labels:
            raise CollectionError(
                f"collection {self.collection.name!r} has no labels; add a labels.csv (id,label) "
                "or sort the images into one sub-folder per class"
            )
        if len(models) > 1 and method is None:
            method = "average"
        stores = {m: self.store(m) for m in models}
        ids = [i for i in _common_ids([s.ids for s in stores.values()]) if i in self.collection]
        if len(ids) < 2:
            raise CollectionError("need at least two indexed, labelled images to evaluate")
        labels = [self.collection.label_of(i) for i in ids]
        rerank = rerank or Rerank()
        if rerank.active:
            check_metric(metric)
        mats, queries = {}, {}
        for m, s in stores.items():
            if not rerank.active:
                mats[m] = queries[m] = s.aligned(ids)
                continue
            db = self.rerank_index(m, rerank).vectors
            rows = _rows_for(s, ids)
            db = db if rows is None else db[rows]
            mats[m] = db
            queries[m] = alpha_query_expansion(db, db, rerank.n, rerank.alpha, exclude=np.arange(len(ids)))
        prepared = {m: PreparedIndex(x, metric) for m, x in mats.items()}
        n = len(ids)
        chunks = []
        for start in range(0, n, EVAL_CHUNK):
            rows = np.arange(start, min(start + EVAL_CHUNK, n))
            per = {}
            for m, x in mats.items():
                d = prepared[m].distances(queries[m][rows]).astype(np.float64)
                d[np.arange(rows.size), rows] = np.inf
                per[m] = d
            d = per[models[0]] if len(models) == 1 else fuse(per, method=method, weights=weights)
            chunks.append(evaluate_distances(d, labels, rows))
            if progress:
                progress(int(rows[-1]) + 1, n)
        name = models[0] if len(models) == 1 else f"{method}({'+'.join(models)})"
        if rerank.active:
            name += f" + {rerank.label}"
        report = _merge_reports(chunks, labels, name, metric)
        report.seconds = time.perf_counter() - t_start
        return report

    def evaluate_feedback(self, model: str, rounds: int = 1, k: int = 20, rerank: Rerank | None = None) -> list[EvaluationReport]:
        """Simulated relevance feedback: each round, the true labels of the top k of every
        query are given as Rocchio feedback. Returns the report before and after each round."""
        rerank = rerank or Rerank()
        store = self.store(model)
        ids = [i for i in store.ids.tolist() if i in self.collection]
        if not self.collection.has_labels:
            raise CollectionError(f"collection {self.collection.name!r} has no labels to simulate feedback with")
        labels = np.array([self.collection.label_of(i) for i in ids], dtype=object)
        db = self.rerank_index(model, rerank).vectors
        rows = _rows_for(store, ids)
        db = db if rows is None else db[rows]
        n = len(ids)
        queries = db if not rerank.active else alpha_query_expansion(db, db, rerank.n, rerank.alpha, exclude=np.arange(n))
        reports = []
        for r in range(rounds + 1):
            d = 1.0 - queries @ db.T
            np.fill_diagonal(d, np.inf)
            rep = evaluate_distances(d, labels.tolist(), name=f"{model} feedback round {r}", metric="cosine")
            reports.append(rep)
            if r == rounds:
                break
            top = np.argsort(d, axis=1, kind="stable")[:, :k]
            rel = labels[top] == labels[:, None]
            new = np.empty_like(queries)
            for i in range(n):
                new[i] = rocchio(queries[i][None], db[top[i][rel[i]]], db[top[i][~rel[i]]])[0]
            queries = new
        return reports


def _merge_reports(chunks: list[EvaluationReport], labels: list[str], name: str, metric: str) -> EvaluationReport:
    ap = np.concatenate([c.ap for c in chunks])
    weights = np.array([c.n_queries for c in chunks], dtype=float)

    def wmean(attr):
        return float(np.average([getattr(c, attr) for c in chunks], weights=weights))

    lab = np.asarray(labels, dtype=object)
    per_class = {c: float(ap[lab == c].mean()) for c in sorted(set(labels))}
    pr = np.average(np.array([c.pr_11 for c in chunks]), axis=0, weights=weights)
    return EvaluationReport(
        name=name,
        metric=metric,
        n_queries=int(ap.size),
        map=float(ap.mean()),
        p_at_10=wmean("p_at_10"),
        p_at_20=wmean("p_at_20"),
        r_precision=wmean("r_precision"),
        per_class_ap=per_class,
        pr_11=pr.tolist(),
        ap=ap,
    )


def _rows_for(store: FeatureStore, ids: list[str]) -> list[int] | None:
    """Rows of ``store`` in the order of ``ids``, or None when the store is already in that order."""
    if len(store) == len(ids) and store.ids[0] == ids[0] and store.ids[-1] == ids[-1]:
        return None
    return [store.row_of(i) for i in ids]


def _common_ids(id_arrays: list[np.ndarray]) -> list[str]:
    first = id_arrays[0].tolist()
    if all(len(a) == len(first) and (a == id_arrays[0]).all() for a in id_arrays[1:]):
        return first
    common = set(first)
    for a in id_arrays[1:]:
        common &= set(a.tolist())
    return [i for i in first if i in common]
