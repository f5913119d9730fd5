"""One small bounded least-recently-used map, shared by every in-process cache of derived
objects: opened vector indexes and DBA vectors (:mod:`cbir.index_cache`), uploaded query
vectors (:mod:`cbir.engine`) and fitted UMAP / t-SNE models (:mod:`cbir.maps`).

Thread-safe: every operation holds one lock (an ``RLock`` by default, or the caller's, so
that several caches of one owner can share its lock). :meth:`LRU.get_or_build` builds a
missing value while holding that lock, so two threads never build the same (large) object
twice; a build may itself use another cache sharing the same re-entrant lock.
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
        """``self[key]``, built by ``build()`` (under the lock) when missing."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            return self.put(key, build())

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
