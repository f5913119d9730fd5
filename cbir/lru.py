"""One small bounded least-recently-used map, shared by every in-process cache of derived
objects: opened vector indexes and DBA vectors (:mod:`cbir.index_cache`), uploaded query
vectors (:mod:`cbir.engine`) and fitted UMAP / t-SNE models (:mod:`cbir.maps`).

Thread-safe: every operation holds one lock (an ``RLock`` by default, or the caller's, so
that several caches of one owner can share its lock) only to look up and insert.
:meth:`LRU.get_or_build` builds a missing value outside it, under a lock of that key alone:
two threads never build the same (large) object twice, and a build of minutes (DBA, a FAISS
index, a Milvus sync) holds up no lookup of another key.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Generic, Hashable, Iterator, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """At most ``bound`` entries (``bound`` >= 1); inserting one more evicts the least
    recently used. Reads (``get``, ``get_or_build``) count as use; ``in``, ``len`` and
    ``[]`` do not. Raises ``ValueError`` for a bound below 1."""

    def __init__(self, bound: int, lock: threading.RLock | threading.Lock | None = None):
        if int(bound) < 1:
            raise ValueError(f"an LRU cache needs a bound of at least 1, got {bound}")
        self.bound = int(bound)
        self._lock = lock if lock is not None else threading.RLock()
        self._items: OrderedDict[K, V] = OrderedDict()
        self._building: dict[K, threading.Lock] = {}  # one per key being built

    def get(self, key: K, default: V | None = None) -> V | None:
        """The value of ``key`` (now the most recent), or ``default``."""
        with self._lock:
            if key not in self._items:
                return default
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: K, value: V) -> V:
        """Store ``value`` as the most recent entry, evicting beyond the bound; returns it."""
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.bound:
                self._items.popitem(last=False)
            return value

    def get_or_build(self, key: K, build: Callable[[], V]) -> V:
        """``self[key]``, built by ``build()`` when missing: once, by the first thread that
        asks; the others asking for that key wait for it, nobody else does."""
        missing = object()
        with self._lock:
            found = self.get(key, missing)
            if found is not missing:
                return found
            gate = self._building.setdefault(key, threading.Lock())
        with gate:
            found = self.get(key, missing)
            if found is not missing:  # built while this thread waited
                return found
            try:
                return self.put(key, build())
            finally:
                with self._lock:
                    if self._building.get(key) is gate:
                        del self._building[key]

    def pop(self, key: K) -> V | None:
        """Remove ``key``; its value, or None."""
        with self._lock:
            return self._items.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __getitem__(self, key: K) -> V:
        with self._lock:
            return self._items[key]

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __iter__(self) -> Iterator[K]:
        with self._lock:
            return iter(list(self._items))
