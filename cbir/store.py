"""Feature store: one float32 (n, d) matrix and its ids per collection and model, and the
arrays derived from it (DBA vectors; later ANN indexes and maps), keyed by its version.

A store is a single ``.npz`` file (embeddings, ids, content signatures and a JSON
manifest) plus a human-readable ``manifest.json`` beside it. Every write, the store's and
a derived array's, goes through :func:`write_atomic`: a temporary file in the same folder
renamed into place, so an interrupted writer always leaves the previous file readable.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable

import numpy as np

from .errors import StoreError

#: Bump when preprocessing or pooling changes, so stale features are not mixed in.
PREPROCESSING_VERSION = 1
STORE_FILE = "store.npz"
DERIVED_FILES = 3  # derived files of one kind (e.g. "dba") kept beside a store, newest first


@dataclass
class FeatureStore:
    model: str
    weights: str
    embeddings: np.ndarray  # (n, d) float32
    ids: np.ndarray  # (n,) str
    signatures: np.ndarray  # (n,) str, content hash of each image
    manifest: dict = field(default_factory=dict)
    _rows: dict[str, int] = field(default_factory=dict, repr=False)
    _indexes: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.embeddings = np.ascontiguousarray(self.embeddings, dtype=np.float32)
        self.ids = np.asarray(self.ids, dtype=str)
        self.signatures = np.asarray(self.signatures, dtype=str)
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != self.ids.shape[0]:
            raise StoreError(f"store shapes disagree: {self.embeddings.shape} vs {self.ids.shape} ids")
        self._rows = {image_id: i for i, image_id in enumerate(self.ids.tolist())}

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def version(self) -> str:
        """Changes whenever the content changes; keys the result cache."""
        return str(self.manifest.get("version", ""))

    def row_of(self, image_id: str) -> int:
        try:
            return self._rows[str(image_id)]
        except KeyError:
            raise StoreError(
                f"image {image_id!r} is not in the {self.model} feature store; run `cbir index --model {self.model}`"
            ) from None

    def __contains__(self, image_id: object) -> bool:
        return str(image_id) in self._rows

    def vector(self, image_id: str) -> np.ndarray:
        return self.embeddings[self.row_of(image_id)]

    def index(self, metric: str):
        """The vectors prepared for ``metric`` (built on first use, then reused)."""
        from .distances import PreparedIndex, normalise_metric

        key = normalise_metric(metric)
        if key not in self._indexes:
            self._indexes[key] = PreparedIndex(self.embeddings, key)
        return self._indexes[key]

    def rows_for(self, ids: list[str]) -> list[int] | None:
        """Rows of ``ids`` in that order, or None when the store already is in that order."""
        if len(self) == len(ids) and (len(ids) == 0 or (self.ids[0] == ids[0] and self.ids[-1] == ids[-1])):
            return None
        return [self.row_of(i) for i in ids]

    def aligned(self, ids: list[str], matrix: np.ndarray | None = None) -> np.ndarray:
        """``matrix`` (default: the embeddings; or any array with one row per stored
        vector, such as DBA vectors or a distance row) restricted to ``ids``, in that order."""
        matrix = self.embeddings if matrix is None else matrix
        rows = self.rows_for(ids)
        return matrix if rows is None else matrix[rows]


def common_ids(id_arrays: list[np.ndarray]) -> list[str]:
    """Ids present in every store, in the order of the first."""
    first = id_arrays[0].tolist()
    if all(len(a) == len(first) and (a == id_arrays[0]).all() for a in id_arrays[1:]):
        return first
    common = set(first)
    for a in id_arrays[1:]:
        common &= set(a.tolist())
    return [i for i in first if i in common]


def store_dir(features_dir: Path, collection_name: str, model: str, weights: str = "imagenet") -> Path:
    suffix = "" if weights == "imagenet" else f"@{_weights_tag(weights)}"
    return Path(features_dir) / collection_name / f"{model}{suffix}"


def _weights_tag(weights: str) -> str:
    if weights in ("imagenet", "none"):
        return weights
    return "file-" + Path(weights).stem


def save_store(store: FeatureStore, folder: Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(folder)
    manifest = dict(store.manifest)
    manifest.update(
        model=store.model,
        weights=store.weights,
        preprocessing_version=PREPROCESSING_VERSION,
        dim=store.dim,
        images=len(store),
        created=manifest.get("created") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        updated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    manifest["version"] = _content_version(store)
    store.manifest = manifest
    target = folder / STORE_FILE
    arrays = dict(embeddings=store.embeddings, ids=store.ids, signatures=store.signatures, manifest=np.array(json.dumps(manifest)))
    write_atomic(target, lambda fh: np.savez(fh, **arrays), prefix=".store-")
    text = json.dumps(manifest, indent=2) + "\n"
    write_atomic(folder / "manifest.json", lambda fh: fh.write(text.encode()), prefix=".tmp-", fsync=False)
    return target


def write_atomic(path: Path, write: Callable[[IO[bytes]], object], prefix: str = ".tmp-", fsync: bool = True) -> None:
    """The one way files are written here: ``write(fh)`` into a temporary file beside
    ``path`` (flushed to disk), made readable by others (stores are shared with other
    users and containers), then renamed over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=Path(path).parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def derived_array(store: FeatureStore, folder: Path, name: str, build: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
    """An array computed from ``store`` and cached beside it as ``<name>.npz``, valid for
    the store version it was built from; (array, seconds spent building, 0 when loaded).

    ``name`` starts with its kind (``dba-n10-a3``: kind ``dba``). Files of older store
    versions are deleted, and of the current version only the ``DERIVED_FILES`` newest of
    a kind are kept, so distinct parameters cannot fill the disk. A read-only folder
    keeps the array in memory only."""
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
    meta = np.array(json.dumps({"store_version": store.version, "name": name, "seconds": seconds}))
    try:
        write_atomic(path, lambda fh: np.savez(fh, array=array, meta=meta), prefix=f".{name}-", fsync=False)
        _prune_derived(Path(folder), name.split("-", 1)[0], store.version, keep=path)
    except OSError:
        pass
    return array, seconds


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


def _remove_stale_temporaries(folder: Path, older_than: float = 600.0) -> None:
    """Temporary files left by a killed writer (a live writer's file is younger)."""
    now = time.time()
    for tmp in folder.glob(".*.tmp"):
        try:
            if now - tmp.stat().st_mtime > older_than:
                tmp.unlink()
        except OSError:
            pass


def _content_version(store: FeatureStore) -> str:
    import hashlib

    h = hashlib.blake2b(digest_size=8)
    h.update(store.embeddings.tobytes())
    h.update("\n".join(store.ids.tolist()).encode())
    return h.hexdigest()


def load_store(folder: Path) -> FeatureStore:
    path = Path(folder) / STORE_FILE
    if not path.exists():
        raise StoreError(f"no feature store at {path}; run `cbir index` first")
    try:
        with np.load(path, allow_pickle=False) as data:
            manifest = json.loads(str(data["manifest"]))
            return FeatureStore(
                model=manifest["model"],
                weights=manifest["weights"],
                embeddings=data["embeddings"],
                ids=data["ids"],
                signatures=data["signatures"],
                manifest=manifest,
            )
    except StoreError:
        raise
    except Exception as exc:  # a damaged file: say which and what to do
        raise StoreError(f"feature store {path} is unreadable ({exc}); delete it and run `cbir index`") from exc


def store_exists(folder: Path) -> bool:
    return (Path(folder) / STORE_FILE).exists()


def merge_update(
    old: FeatureStore | None,
    ids: list[str],
    signatures: list[str],
) -> tuple[list[int], np.ndarray | None]:
    """Which of ``ids`` need extraction; rows to keep from ``old`` aligned to ``ids``.

    Returns (indices into ``ids`` to extract, kept (len(ids), d) matrix with the
    rows already known filled in, or None when nothing can be reused).
    """
    if old is None or len(old) == 0:
        return list(range(len(ids))), None
    kept = np.zeros((len(ids), old.dim), dtype=np.float32)
    todo: list[int] = []
    old_sig = dict(zip(old.ids.tolist(), old.signatures.tolist()))
    for i, (image_id, sig) in enumerate(zip(ids, signatures)):
        if old_sig.get(image_id) == sig:
            kept[i] = old.embeddings[old.row_of(image_id)]
        else:
            todo.append(i)
    return todo, kept
