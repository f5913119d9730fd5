"""Search as the app and the API both run it: the engine plus the Redis result cache
and the shared "searches performed" counter."""

from __future__ import annotations

import time
from dataclasses import dataclass

from . import telemetry  # Prometheus
from .cache import ResultCache
from .engine import Engine, Plan
from .errors import CBIRError
from .lru import LRU
from .ranking import FusionInputs
from .request import SearchRequest


@dataclass(frozen=True)
class Served:
    """A search as the service served it.

    ``body``: the JSON response (:meth:`cbir.request.SearchResponse.to_dict` plus
    ``"cached"``); ``cached``: read from the Redis result cache; ``inputs``: every model's
    distance row for live re-fusion (only when asked for, and only for a computed search)."""

    body: dict
    cached: bool
    inputs: FusionInputs | None = None


class SearchService:
    """The engine behind the Redis result cache, the "searches performed" counter and the
    Prometheus timings; what the API and the app call to search."""

    def __init__(self, engine: Engine, cache: ResultCache):
        self.engine = engine
        self.cache = cache
        self.started = time.time()

    def search(self, request: SearchRequest, *, with_inputs: bool = False, use_cache: bool = True,
               plan: Plan | None = None) -> Served:
        """Serve one request: from the result cache when it holds it (keyed by the request and
        the versions of the stores searched), else computed and cached. ``with_inputs`` (the
        app, for live re-fusion) keeps the distance rows, so such a search is always computed.
        ``plan``: :meth:`Engine.plan` of the request, when the caller has it already."""
        if use_cache and self.cache.enabled and not with_inputs and plan is None:
            try:
                plan = self.engine.plan(request)
            except CBIRError:
                plan = None  # a missing store: the search below says why
        key = self._cache_key(request, plan) if plan is not None and use_cache and self.cache.enabled and not with_inputs else None
        hit = None if key is None else self.cache.get(key)
        if key is not None:
            telemetry.CACHE.labels("miss" if hit is None else "hit").inc()
        if hit is not None:
            self.cache.count_search()
            return Served({**hit, "cached": True}, cached=True)
        resp = self.engine.search(request, plan=plan)
        telemetry.observe_timings(resp.timings)
        body = {**resp.to_dict(), "cached": False}
        if key is not None:
            self.cache.set(key, body)
        self.cache.count_search()
        return Served(body, cached=False, inputs=resp.inputs if with_inputs else None)

    def _cache_key(self, request: SearchRequest, plan: Plan | None = None) -> str | None:
        """The result-cache key of a request: the request with the backend and depth it resolves
        to (and the FAISS kind), the collection's name and labels, and the version of every
        store searched. None when a store is missing (the search says why)."""
        engine = self.engine
        try:
            stores, backend, depth = plan or engine.plan(request)
        except CBIRError:
            return None
        fields = {**request.cache_fields(backend, depth), "collection": engine.collection.labels_digest,
                  "faiss_kind": engine.settings.faiss_kind if backend == "faiss" else None}
        return self.cache.key(fields, {m: s.version for m, s in stores.items()})

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


class Services:
    """One :class:`SearchService` per collection of the registry, opened on first use: the
    default one always, at most ``bound`` others (least recently used closed first). All share
    the Redis result cache, whose keys hold the collection and its labels."""

    def __init__(self, default: SearchService, registry, bound: int = 4):
        self.default, self.registry = default, registry
        self._open: LRU[str, SearchService] = LRU(bound)
        self._opened_as: dict[str, tuple[str, float]] = {}  # name -> (folder, added_at) it was opened as
        self._stamp: tuple | None = None  # the registry file's (mtime_ns, size, inode) when last checked

    def _revalidate(self) -> None:
        """Close open services whose collection was removed or replaced (by another process:
        the CLI, the API, the app) since the registry file was last seen: one stat per call."""
        try:
            st = self.registry.path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            stamp = None
        if stamp == self._stamp:
            return
        self._stamp = stamp
        entries = self.registry.entries()
        for name in list(self._open):
            entry = entries.get(name)
            if entry is None or (entry.folder, entry.added_at) != self._opened_as.get(name):
                self.forget(name)

    def get(self, name: str | None) -> SearchService:
        """The service of collection ``name`` (None or the default's name: the default).
        Raises :class:`cbir.errors.UnknownNameError` for a name not registered."""
        if name is None or name == self.default.engine.collection.name:
            return self.default
        self._revalidate()
        opened = self._open.get(name)  # an open collection: no registry read per request
        if opened is not None:
            return opened
        entry = self.registry.get(name)  # the unknown-name error, before anything is opened

        def build() -> SearchService:
            engine = Engine(self.registry.open(entry.name), self.default.engine.settings)
            self._opened_as[entry.name] = (entry.folder, entry.added_at)
            return SearchService(engine, self.default.cache)

        return self._open.get_or_build(entry.name, build)

    def is_open(self, name: str | None) -> bool:
        """Whether ``name``'s service is open (a switch to it opens nothing)."""
        return name is None or name == self.default.engine.collection.name or name in self._open

    def forget(self, name: str) -> None:
        """Close a removed collection's service (its stores are gone)."""
        self._open.pop(name)
        self._opened_as.pop(name, None)

    def reload(self, name: str | None) -> SearchService:
        """Open ``name``'s collection again (images added, features imported): the folder
        rescanned, the stores looked up afresh. Returns the new service."""
        if name is None or name == self.default.engine.collection.name:
            engine = self.default.engine
            self.default = SearchService(Engine(self.registry.open(None), engine.settings), self.default.cache)
            return self.default
        self.forget(name)
        return self.get(name)
