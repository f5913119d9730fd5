"""Search as the app and the API both run it: the engine plus the Redis result cache
and the shared "searches performed" counter."""

from __future__ import annotations

import time
from typing import Mapping, Sequence

from . import telemetry as metrics  # Prometheus counters (cbir.telemetry)
from .cache import ResultCache
from .engine import Engine, Query


class SearchService:
    def __init__(self, engine: Engine, cache: ResultCache):
        self.engine = engine
        self.cache = cache
        self.started = time.time()

    def search(
        self,
        models: Sequence[str],
        metric: str = "cosine",
        top_k: int = 10,
        image_id: str | None = None,
        image: bytes | None = None,
        exclude_query: bool = True,
        method: str | None = None,
        weights: Mapping[str, float] | None = None,
        rerank=None,
        feedback: list[dict] | None = None,
        use_cache: bool = True,
        backend: str | None = None,
        depth: int | None = None,
        with_inputs: bool = False,
    ) -> dict:
        """The search response as a dict, with ``cached`` telling whether it came from Redis.
        ``with_inputs`` (the app, for live re-fusion) adds the per-model distance rows under
        ``"_inputs"`` (a :class:`cbir.search.FusionInputs`, not JSON); such a search is
        computed, never read from the cache."""
        from .extractors import get_spec

        models = [get_spec(m).name for m in models]
        query = Query(image_id=image_id, image=image)
        request = {
            "models": list(models),
            "metric": metric,
            "top_k": top_k,
            "query": query.cache_key(),
            "exclude_query": exclude_query,
            "method": method if len(models) > 1 else None,
            "weights": dict(weights) if weights else None,
            "rerank": None if rerank is None or not rerank.active else [rerank.method, rerank.n, rerank.alpha],
            "feedback": feedback or None,
            "backend": backend or self.engine.settings.index_backend,
            "depth": depth,
        }
        key = self._cache_key(models, request) if use_cache and self.cache.enabled and not with_inputs else None
        hit = None if key is None else self.cache.get(key)
        if key is not None:
            metrics.CACHE.labels("miss" if hit is None else "hit").inc()
        if hit is not None:
            self.cache.count_search()
            hit["cached"] = True
            return hit
        resp = self.engine.search(
            models, metric, top_k, query, exclude_query=exclude_query, method=method if len(models) > 1 else None,
            weights=weights, rerank=rerank, feedback=feedback, backend=backend, depth=depth,
        )
        metrics.observe_timings(resp.timings)
        out = resp.to_dict()
        out["cached"] = False
        if key is not None:
            self.cache.set(key, out)
        self.cache.count_search()
        if with_inputs:
            out["_inputs"] = resp.inputs
        return out

    def _cache_key(self, models: Sequence[str], request: dict) -> str | None:
        """The result-cache key of a request (None when a store is missing: the search says why)."""
        try:
            return self.cache.key(request, {m: self.engine.store(m).version for m in models})
        except Exception:
            return None

    def stats(self) -> dict:
        from .distances import DISTANCES

        info = self.engine.model_info()
        return {
            "collection": self.engine.collection.name,
            "images": len(self.engine.collection),
            "labelled": self.engine.collection.has_labels,
            "classes": len(self.engine.collection.class_counts()),
            "models_available": [m["name"] for m in info if m["available"]],
            "models_searchable": [m["name"] for m in info if m["searchable"]],
            "metrics": list(DISTANCES),
            **self.cache.stats(),
            "uptime_seconds": round(time.time() - self.started, 1),
        }
