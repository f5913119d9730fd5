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

import numpy as np

from .centring import centred_view
from .collection import Collection, scan_collection
from .config import Settings, get_settings
from .errors import CBIRError, StoreError, import_again, index_model
from .extractors import get_spec
from .extractors.registry import IMPORTED, RECIPE_SEP
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
        self._centred: dict[str, tuple[str, FeatureStore]] = {}  # model -> (store version, its centred view)
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
            imported = spec.name.startswith(IMPORTED)  # imported features are never extracted here: import them again
            raise StoreError(f"{spec.label} has no features for collection {self.collection.name!r}",
                             remedy=import_again(spec.name[len(IMPORTED):]) if imported else index_model(spec.name, spec.label))
        with self._lock:
            cached = self._stores.get((spec.name, weights))
            if cached and cached[0] == stamp:
                return cached[1]
            store = load_store(folder)
            self._stores[(spec.name, weights)] = (stamp, store)
            return store

    def stores(self, models: Sequence[str], centred: bool = False) -> dict[str, FeatureStore]:
        """Each model's store, looked up once: what one request works on from start to end
        (a store rewritten meanwhile is seen by the next request). ``centred``: each store's
        centred view instead (:func:`cbir.centring.centred_view`, built once per version)."""
        return {m: self.centred(m) if centred else self.store(m) for m in models}

    def centred(self, model: str) -> FeatureStore:
        """The centred view of the model's current store (one per model kept: the newest version); the
        store itself when it is too small to centre (:data:`cbir.centring.CENTRE_MIN_IMAGES`)."""
        name = get_spec(model).name
        store = self.store(name)
        with self._lock:
            version, view = self._centred.get(name, (None, None))
            if view is None or version != store.version:
                view = centred_view(store, self.store_folder(name))
                self._centred[name] = (store.version, view)
            return view

    def recipe_models(self) -> list[str]:
        """The ``MODEL~PRESET`` models with a store for this collection (``cbir index --recipe``),
        sorted; a folder naming no model or recipe here is not one."""
        base = Path(self.settings.features_dir) / self.collection.name
        out = []
        for folder in sorted(base.glob(f"*{RECIPE_SEP}*")) if base.is_dir() else []:
            try:
                name = get_spec(folder.name).name
            except CBIRError:
                continue
            if name == folder.name and store_exists(folder):
                out.append(name)
        return out

    def centring_mean(self, model: str) -> np.ndarray | None:
        """The (d,) mean a centred search of ``model`` subtracts (:func:`cbir.centring.store_mean`),
        or None when the model has no store (or an unreadable one) here."""
        try:
            return self.centred(model).centre if self.has_store(model) else None
        except CBIRError:
            return None

    def coverage(self, model: str) -> dict:
        """How much of the collection the model's store covers now: ``indexed`` (images of the
        folder with a vector), ``missing`` (in the folder, not extracted yet: new or changed
        since the last run), ``failed`` (the last run could not decode or extract them; the
        first ``cbir.extraction.FAILED_KEPT`` as (id, why) in ``failed_list``), ``stale`` (vectors of images
        no longer in the folder, never ranked), and ``skipped`` (left out by the scan rule,
        for every model). Counts are ints; an unreadable store counts as none (``model_info``
        gives the reason)."""
        ids = self.collection.ids
        out = {"model": model, "images": len(ids), "indexed": 0, "missing": len(ids), "failed": 0, "failed_list": [],
               "stale": 0, "skipped": len(self.collection.skipped)}
        try:
            store = self.store(model) if self.has_store(model) else None
        except CBIRError:  # unreadable: model_info says why; nothing of it is searchable
            store = None
        if store is None:
            return out
        stored = store.rows  # id -> row, built once per opened store
        indexed = sum(1 for i in ids if i in stored)
        kept = store.manifest.get("failed", [])
        failed = [(i, why) for i, why in kept if i in self.collection and i not in stored]
        total = int(store.manifest.get("failed_count", len(kept)))
        count = len(failed) if total <= len(kept) else min(total, len(ids) - indexed)  # beyond the list: the run's count
        out.update(indexed=indexed, failed=count, failed_list=failed, missing=len(ids) - indexed - count,
                   stale=len(stored) - indexed)
        return out
