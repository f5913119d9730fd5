"""Arrays derived from a feature store (DBA vectors, FAISS indexes, maps), cached beside it
as ``<name>.npz`` and keyed by the store's version, so a new version invalidates them."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .store import FeatureStore
from .store_format import write_atomic

DERIVED_FILES = 3  # derived files of one kind (e.g. "dba") kept beside a store, newest first


def derived_array(store: FeatureStore, folder: Path, name: str, build: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
    """An array computed from ``store`` and cached beside it as ``<name>.npz``, valid for
    the store version it was built from; (array, seconds spent building, 0 when loaded).

    ``name`` starts with its kind (``dba-n10-a3``: kind ``dba``). Files of older store
    versions are deleted, and of the current version only the ``DERIVED_FILES`` newest of
    a kind are kept, so distinct parameters cannot fill the disk. A read-only folder
    keeps the array in memory only. A centred view's arrays are named ``centred_<name>``."""
    name = derived_name(store, name)
    path = Path(folder) / f"{name}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as data:
                if json.loads(str(data["meta"])).get("store_version") == store.version:
                    return data["array"], 0.0
        except Exception:
            pass  # damaged or stale: rebuild
    t = time.perf_counter()
    array = build()
    seconds = time.perf_counter() - t
    save_derived(folder, name, store.version, array, seconds)
    return array, seconds


def has_derived(store: FeatureStore, folder: Path, name: str) -> bool:
    """Whether :func:`derived_array` would read ``name`` from the disk (no build)."""
    path = Path(folder) / f"{derived_name(store, name)}.npz"
    try:
        with np.load(path, allow_pickle=False) as data:
            return json.loads(str(data["meta"])).get("store_version") == store.version
    except Exception:
        return False


def derived_name(store: FeatureStore, name: str) -> str:
    """The file name (without ``.npz``) of ``store``'s derived array ``name``: a view's
    (a centred store's) arrays are named ``<variant>_<name>``, apart from the raw store's."""
    return f"{store.variant}_{name}" if store.variant else name


def save_derived(folder: Path, name: str, version: str, array: np.ndarray, seconds: float = 0.0) -> None:
    """Write (or replace) the derived array ``name`` of store ``version`` (see derived_array)."""
    path = Path(folder) / f"{name}.npz"
    meta = np.array(json.dumps({"store_version": version, "name": name, "seconds": seconds}))
    try:
        write_atomic(path, lambda fh: np.savez(fh, array=array, meta=meta), prefix=f".{name}-", fsync=False)
        _prune_derived(Path(folder), name.split("-", 1)[0], version, keep=path)
    except OSError:
        pass


def _prune_derived(folder: Path, kind: str, version: str, keep: Path) -> None:
    files = sorted(folder.glob(f"{kind}-*.npz"), key=lambda p: p.stat().st_mtime, reverse=True)
    kept = 1
    for old in (f for f in files if f != keep):
        try:
            with np.load(old, allow_pickle=False) as data:
                current = json.loads(str(data["meta"])).get("store_version") == version
        except Exception:
            current = False
        if current and kept < DERIVED_FILES:
            kept += 1
        else:
            old.unlink(missing_ok=True)
