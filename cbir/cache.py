"""Search results cached in Redis and the counters shared by the app and the API.

The key covers the full request and the version of every feature store involved, so
re-indexing invalidates old entries by itself. Redis being away never breaks a
search: the cache is bypassed, counters are skipped and a warning is logged; after a
failure the cache leaves Redis alone for ``DOWN_SECONDS`` (a search makes three round trips:
with a server that does not answer, each would wait for the socket timeout).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time

import redis

from .redisdb import KEY_PREFIX as P, REDIS_DOWN

log = logging.getLogger("cbir.cache")
CACHE_TTL = 24 * 3600
FLUSH_SECONDS = 0.5
DOWN_SECONDS = 5.0


class ResultCache:
    def __init__(self, client: redis.Redis | None, enabled: bool = True, ttl: int = CACHE_TTL):
        self.r = client
        self.enabled = enabled and client is not None
        self.ttl = ttl
        self._warned_at = 0.0
        self._pending = 0
        self._flushed_at = 0.0
        self._down_until = 0.0
        self._lock = threading.Lock()

    def _down(self, exc: Exception) -> None:
        now = time.time()
        self._down_until = time.monotonic() + DOWN_SECONDS
        if now - self._warned_at > 30:  # one warning per outage, not one per request
            log.warning("Redis unavailable, cache and counters bypassed for %g s at a time: %s", DOWN_SECONDS, exc)
            self._warned_at = now

    def _up(self) -> bool:
        """Is Redis worth a try (not failed within the last DOWN_SECONDS)?"""
        return self.r is not None and time.monotonic() >= self._down_until

    @staticmethod
    def key(request: dict, store_versions: dict[str, str]) -> str:
        blob = json.dumps({"request": request, "stores": store_versions}, sort_keys=True, default=str)
        return f"{P}cache:" + hashlib.sha256(blob.encode()).hexdigest()

    def get(self, key: str) -> dict | None:
        if not self.enabled or not self._up():
            return None
        try:
            raw = self.r.get(key)
            self.r.incr(f"{P}stats:cache_hits" if raw else f"{P}stats:cache_misses")
        except REDIS_DOWN as exc:
            self._down(exc)
            return None
        return json.loads(raw) if raw else None

    def set(self, key: str, value: dict) -> None:
        if not self.enabled or not self._up():
            return
        try:
            self.r.set(key, json.dumps(value), ex=self.ttl)
        except REDIS_DOWN as exc:
            self._down(exc)

    def count_search(self) -> None:
        """Counted locally and flushed to Redis at most twice a second (one round trip less
        per search); ``stats`` flushes first, so figures are never more than 0.5 s behind."""
        with self._lock:
            self._pending += 1
            due = time.monotonic() - self._flushed_at >= FLUSH_SECONDS
        if due:
            self.flush()

    def flush(self) -> None:
        if not self._up():
            return
        with self._lock:
            pending, self._pending = self._pending, 0
            self._flushed_at = time.monotonic()
        if not pending:
            return
        try:
            self.r.incrby(f"{P}stats:searches", pending)
        except REDIS_DOWN as exc:
            self._down(exc)
            with self._lock:  # kept for the next flush, when Redis is back
                self._pending += pending

    def stats(self) -> dict:
        self.flush()
        if not self._up():
            return {"searches_performed": None, "cache_hit_rate": None, "redis": False}
        try:
            searches, hits, misses = self.r.mget(f"{P}stats:searches", f"{P}stats:cache_hits", f"{P}stats:cache_misses")
        except REDIS_DOWN as exc:
            self._down(exc)
            return {"searches_performed": None, "cache_hit_rate": None, "redis": False}
        hits, misses = int(hits or 0), int(misses or 0)
        return {
            "searches_performed": int(searches or 0),
            "cache_hits": hits,
            "cache_misses": misses,
            "cache_hit_rate": round(hits / (hits + misses), 4) if hits + misses else 0.0,
            "redis": True,
        }
