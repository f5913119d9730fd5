"""The feature store on disk: one (n, d) matrix (float32, or float16 to halve disk and
memory), its ids and signatures per collection and model (the object:
:class:`cbir.store.FeatureStore`; arrays derived from it: :mod:`cbir.derived`).

A store is a folder: ``manifest.json`` names the current version and its three ``.npy``
files (``vectors-<version>.npy``, ``ids-<version>.npy``, ``signatures-<version>.npy``).
The vectors are opened memory-mapped (``mmap_mode="r"``), so a store of a million images
opens in well under a second and pages in only what a search touches. Every write goes
through :func:`write_atomic`: the new version's files first, then the manifest renamed
over the old one, so an interrupted writer always leaves the previous version readable;
older versions' files are removed afterwards (a reader that has them mapped keeps them).
Writers take turns (:func:`store_lock`): two writers interleaved would each delete the
other's files, leaving a manifest that names files no longer there.
Stores written before this layout (one ``store.npz``) are still read, whole into memory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Callable

import numpy as np

from .errors import CBIRError, StoreError
from .store import DTYPES, FeatureStore

#: Bump when preprocessing or pooling changes, so stale features are not mixed in.
PREPROCESSING_VERSION = 1
MANIFEST = "manifest.json"
LEGACY_FILE = "store.npz"  # the single-file layout of earlier versions (read only)
STORE_FORMAT = 2
_HASH_ROWS = 65536  # rows hashed at a time: the version of a memory-mapped store needs no full copy


def store_dir(features_dir: Path, collection_name: str, model: str, weights: str = "imagenet") -> Path:
    suffix = "" if weights == "imagenet" else f"@{_weights_tag(weights)}"
    return Path(features_dir) / collection_name / f"{model}{suffix}"


def _weights_tag(weights: str) -> str:
    if weights in ("imagenet", "none"):
        return weights
    return "file-" + Path(weights).stem


_LOCKS_HELD = threading.local()


@contextlib.contextmanager
def store_lock(folder: Path):
    """One writer at a time per store, across threads and processes (``cbir index``, imports,
    API workers): an exclusive ``flock`` on ``.<store>.lock`` beside the store's folder, held
    until the block ends and released by the kernel if the writer dies. A thread that holds
    it already (an import that checks, then saves) passes straight through."""
    folder = Path(folder).absolute()
    held = _LOCKS_HELD.__dict__.setdefault("folders", set())
    if folder in held:
        yield
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder.parent / f".{folder.name}.lock", os.O_RDONLY | os.O_CREAT, 0o644)  # flock needs no write access
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        held.add(folder)
        try:
            yield
        finally:
            held.discard(folder)
    finally:
        os.close(fd)  # releases the lock


def save_store(store: FeatureStore, folder: Path, dtype: str | None = None) -> Path:
    """Write ``store`` (as ``dtype``, default its own) as a new version of ``folder``, under
    the store's writer lock; returns the manifest's path."""
    with store_lock(folder):
        return _save_store(store, Path(folder), dtype)


def _save_store(store: FeatureStore, folder: Path, dtype: str | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(folder)
    vectors = _as_dtype(store.embeddings, dtype or store.dtype)
    version = _content_version(vectors, store.ids)
    manifest = dict(store.manifest)
    manifest.update(
        model=store.model,
        weights=store.weights,
        preprocessing_version=PREPROCESSING_VERSION,
        format=STORE_FORMAT,
        dim=store.dim,
        dtype=vectors.dtype.name,
        images=len(store),
        created=manifest.get("created") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        updated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        version=version,
        files={part: f"{part}-{version}.npy" for part in ("vectors", "ids", "signatures")},
    )
    for part, array in (("vectors", vectors), ("ids", store.ids), ("signatures", store.signatures)):
        write_atomic(folder / manifest["files"][part], lambda fh, a=array: np.save(fh, a, allow_pickle=False), prefix=".store-")
    text = json.dumps(manifest, indent=2) + "\n"
    write_atomic(folder / MANIFEST, lambda fh: fh.write(text.encode()), prefix=".tmp-")  # the switch
    store.manifest, store.embeddings = manifest, vectors
    for old in [*folder.glob("vectors-*.npy"), *folder.glob("ids-*.npy"), *folder.glob("signatures-*.npy"), folder / LEGACY_FILE]:
        if old.name not in manifest["files"].values():
            old.unlink(missing_ok=True)
    return folder / MANIFEST


def _as_dtype(vectors: np.ndarray, dtype: str) -> np.ndarray:
    if dtype not in DTYPES:
        raise CBIRError(f"unknown store dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    with np.errstate(over="ignore"):  # overflow becomes inf, refused just below
        out = np.ascontiguousarray(vectors, dtype=dtype)
    if dtype == "float16" and not all(np.isfinite(out[i : i + _HASH_ROWS]).all() for i in range(0, len(out), _HASH_ROWS)):
        raise CBIRError("these features exceed the float16 range (|x| > 65504): keep --dtype float32")
    return out


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


def _remove_stale_temporaries(folder: Path, older_than: float = 600.0) -> None:
    """Temporary files left by a killed writer (a live writer's file is younger)."""
    now = time.time()
    for tmp in folder.glob(".*.tmp"):
        try:
            if now - tmp.stat().st_mtime > older_than:
                tmp.unlink()
        except OSError:
            pass


def _content_version(vectors: np.ndarray, ids: np.ndarray) -> str:
    import hashlib

    h = hashlib.blake2b(digest_size=8)
    for i in range(0, len(vectors), _HASH_ROWS):
        h.update(np.ascontiguousarray(vectors[i : i + _HASH_ROWS]).tobytes())
    h.update("\n".join(ids.tolist()).encode())
    return h.hexdigest()


#: (manifest path, mtime, size, inode) -> is it a current-format manifest; bounded
_MANIFESTS_SEEN: dict[tuple, bool] = {}
_MANIFESTS_SEEN_MAX = 256


def store_stamp(folder: Path) -> int | None:
    """Changes when a new version of the store is written (None: no store). Called several
    times per search: a manifest is parsed once per version, then only stat-ed."""
    for name in (MANIFEST, LEGACY_FILE):
        path = Path(folder) / name
        try:
            st = path.stat()
            if name == LEGACY_FILE:
                return st.st_mtime_ns
            key = (str(path), st.st_mtime_ns, st.st_size, st.st_ino)
            current = _MANIFESTS_SEEN.get(key)
            if current is None:
                current = json.loads(path.read_text()).get("format") == STORE_FORMAT
                if len(_MANIFESTS_SEEN) >= _MANIFESTS_SEEN_MAX:
                    _MANIFESTS_SEEN.clear()
                _MANIFESTS_SEEN[key] = current
            if current:
                return st.st_mtime_ns
        except (OSError, ValueError):
            continue
    return None


def load_store(folder: Path) -> FeatureStore:
    """The current version of the store in ``folder``, its vectors memory-mapped."""
    folder = Path(folder)
    for attempt in range(3):
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except (OSError, ValueError):
            manifest = {}
        if manifest.get("format") != STORE_FORMAT:
            return _load_legacy(folder)
        try:
            return _load_version(folder, manifest)
        except FileNotFoundError:  # a writer replaced this version between the two reads
            if attempt == 2:
                raise StoreError(f"feature store {folder} lacks the files its manifest names; run `cbir index` again") from None
    raise AssertionError("unreachable")


def _load_version(folder: Path, manifest: dict) -> FeatureStore:
    try:
        files = manifest["files"]
        return FeatureStore(
            model=manifest["model"],
            weights=manifest["weights"],
            embeddings=np.load(folder / files["vectors"], mmap_mode="r", allow_pickle=False),
            ids=np.load(folder / files["ids"], allow_pickle=False),
            signatures=np.load(folder / files["signatures"], mmap_mode="r", allow_pickle=False),
            manifest=manifest,
        )
    except (StoreError, FileNotFoundError):
        raise
    except Exception as exc:  # a damaged or half-deleted store: say which and what to do
        raise StoreError(f"feature store {folder} is unreadable ({exc}); delete the folder and run `cbir index`") from exc


def _load_legacy(folder: Path) -> FeatureStore:
    path = folder / LEGACY_FILE
    if not path.exists():
        raise StoreError(f"no feature store at {folder}; run `cbir index` first")
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
    return store_stamp(folder) is not None
