"""A collection's feature stores, opened once per version, and what is derived from them.

The seam between the facade (:class:`cbir.engine.Engine`, which *is* a catalogue plus
search) and the helpers that work on stores (:mod:`cbir.experiments`, :mod:`cbir.distance_rows`,
:mod:`cbir.index_cache`, :mod:`cbir.tuning`, :mod:`cbir.maps`): the helpers take a catalogue,
never the engine, so none of them imports the module that calls them.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Sequence

from .collection import Collection, scan_collection
from .config import Settings, get_settings
from .errors import StoreError
from .extractors import get_spec
from .index_cache import IndexCache
from .store import FeatureStore
from .store_format import load_store, store_dir, store_exists, store_stamp


class StoreCatalogue:
    """The feature stores of one collection (one per model and weights), each reloaded when
    its file on disk changes, and the derived objects built from them (``indexes``).

    Thread-safe. Model names may be aliases (``lite0``); the stores are keyed by the
    registry's canonical name. Raises :class:`cbir.errors.StoreError` for a model with no
    store, :class:`cbir.errors.UnknownNameError` for a model nobody registered."""

    def __init__(self, collection: str | Path | Collection | None = None, settings: Settings | None = None):
        self.settings = settings or get_settings()
        root = collection if collection is not None else self.settings.collection
        self.collection = root if isinstance(root, Collection) else scan_collection(root)
        self._stores: dict[tuple[str, str], tuple[float, FeatureStore]] = {}
        self._lock = threading.RLock()
        self.indexes = IndexCache(self)

    def store_folder(self, model: str, weights: str = "imagenet") -> Path:
        """The folder of the model's store for this collection (it may not exist)."""
        return store_dir(self.settings.features_dir, self.collection.name, get_spec(model).name, weights)

    def has_store(self, model: str, weights: str = "imagenet") -> bool:
        return store_exists(self.store_folder(model, weights))

    def store(self, model: str, weights: str = "imagenet") -> FeatureStore:
        """The model's store, reloaded when the file on disk changed (one ``stat`` per call)."""
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

    def stores(self, models: Sequence[str]) -> dict[str, FeatureStore]:
        """Each model's store, looked up once: what one request works on from start to end
        (a store rewritten meanwhile is seen by the next request)."""
        return {m: self.store(m) for m in models}
