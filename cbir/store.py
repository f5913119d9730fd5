"""Feature store: one (n, d) matrix (float32, or float16 to halve disk and memory) and its
ids per collection and model, and the arrays derived from it (DBA vectors, ANN indexes,
maps), keyed by its version.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable

import numpy as np

from .errors import CBIRError, StoreError

#: Bump when preprocessing or pooling changes, so stale features are not mixed in.
PREPROCESSING_VERSION = 1
MANIFEST = "manifest.json"
LEGACY_FILE = "store.npz"  # the single-file layout of earlier versions (read only)
STORE_FORMAT = 2
DTYPES = ("float32", "float16")
DERIVED_FILES = 3  # derived files of one kind (e.g. "dba") kept beside a store, newest first
_HASH_ROWS = 65536  # rows hashed at a time: the version of a memory-mapped store needs no full copy


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
        e = self.embeddings
        if not (isinstance(e, np.ndarray) and e.dtype.name in DTYPES):  # a memory map stays one
            self.embeddings = np.ascontiguousarray(e, dtype=np.float32)
        self.ids = np.asarray(self.ids, dtype=str)
        self.signatures = np.asarray(self.signatures, dtype=str)
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != self.ids.shape[0]:
            raise StoreError(f"store shapes disagree: {self.embeddings.shape} vs {self.ids.shape} ids")

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def dtype(self) -> str:
        return self.embeddings.dtype.name

    @property
    def rows(self) -> dict[str, int]:
        """id -> row, built on first use (a million ids take a few hundred ms)."""
        if not self._rows and len(self):
            self._rows = {image_id: i for i, image_id in enumerate(self.ids.tolist())}
        return self._rows

    @property
    def version(self) -> str:
        """Changes whenever the content changes; keys the result cache."""
        return str(self.manifest.get("version", ""))

    def row_of(self, image_id: str) -> int:
        try:
            return self.rows[str(image_id)]
        except KeyError:
            fix = (f"import its features again with it (`cbir import-features FILE --name {self.model[len('imported:'):]} --replace`)"
                   if self.model.startswith("imported:") else f"run `cbir index --model {self.model}`")
            raise StoreError(f"image {image_id!r} is not in the {self.model} feature store; {fix}") from None

    def __contains__(self, image_id: object) -> bool:
        return str(image_id) in self.rows

    def vector(self, image_id: str) -> np.ndarray:
        return np.asarray(self.embeddings[self.row_of(image_id)], dtype=np.float32)

    def index(self, metric: str):
        """The vectors prepared for ``metric`` (built on first use, then reused)."""
        from .distances import normalise_metric
        from .index.exact import ExactIndex

        key = normalise_metric(metric)
        if key not in self._indexes:
            self._indexes[key] = ExactIndex(self.embeddings, key)
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
    save_derived(folder, name, store.version, array, seconds)
    return array, seconds


def has_derived(store: FeatureStore, folder: Path, name: str) -> bool:
    """Whether :func:`derived_array` would read ``name`` from the disk (no build)."""
    path = Path(folder) / f"{name}.npz"
    try:
        with np.load(path, allow_pickle=False) as data:
            return json.loads(str(data["meta"])).get("store_version") == store.version
    except Exception:
        return False


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
            kept[i] = old.embeddings[old.row_of(image_id)]  # float16 rows widen exactly
        else:
            todo.append(i)
    return todo, kept
