"""Features computed elsewhere, imported as a searchable model ``imported:NAME``.

Accepted files:

* ``.npz`` with an array of ids (``ids``, ``paths`` or ``files``) and an (n, d) array of
  vectors (``vectors``, ``features`` or ``embeddings``);
* ``.npy``: a structured array with fields ``id`` and ``vector``, or a plain (n, d) array
  in the collection's order (n must equal the collection's size);
* Parquet or CSV: an ``id`` (or ``path`` / ``file``) column, and either one ``vector``
  column of lists (Parquet) or one numeric column per dimension;
* the legacy course-project pickle: a list of ``(image_path, numpy_vector)`` tuples, read
  by a restricted unpickler that admits builtin containers, strings, numbers and numpy
  array reconstruction only: a pickle naming anything else (``os.system``...) is refused
  before it can run.

Keys are matched to the collection by id, then by path relative to the collection, then
by file name (when unique); unmatched keys and images without a vector are reported. The
vectors become a feature store like an extractor's (so fusion, re-ranking and evaluation
treat them alike) that ``cbir index`` never re-extracts.
"""

from __future__ import annotations

import io
import pickle
import re
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from .collection import Collection
from .errors import CBIRError
from .store import FeatureStore, save_store, store_dir

PREFIX = "imported:"
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_]{0,39}")
MAX_FILE_BYTES = 4 << 30
#: the file types read_features reads (an upload form offers these)
IMPORT_SUFFIXES = (".npz", ".npy", ".parquet", ".csv", ".pkl", ".pickle")
_KEY_NAMES = ("ids", "id", "paths", "path", "files", "file")
_VECTOR_NAMES = ("vectors", "vector", "features", "embeddings")
_PICKLE_ALLOWED = {
    ("builtins", n) for n in ("list", "tuple", "dict", "set", "frozenset", "complex", "bytearray", "int", "float", "str", "bytes", "bool")
} | {(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")} | {
    (m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")} | {("numpy", "ndarray"), ("numpy", "dtype")}


class FeatureImportError(CBIRError):
    """A features file that cannot become a store: unreadable, wrong shape, NaN, no match."""


@dataclass
class ImportReport:
    model: str
    vectors: int
    dim: int
    unmatched: list[str] = field(default_factory=list)  # keys of the file with no image
    missing: list[str] = field(default_factory=list)  # collection ids without a vector
    path: Path | None = None

    def summary(self) -> str:
        def some(items: list[str]) -> str:
            return f" (e.g. {', '.join(items[:3])})" if items else ""

        return (f"imported {self.vectors} vectors of d={self.dim} as {self.model}; {len(self.unmatched)} key(s) of the file "
                f"matched no image{some(self.unmatched)}; {len(self.missing)} image(s) have no vector{some(self.missing)}")


def check_name(name: str) -> str:
    key = str(name).strip().lower().removeprefix(PREFIX)
    if not NAME_RE.fullmatch(key):
        raise FeatureImportError(f"an imported model's name is 1-40 lower-case letters, digits or _, starting with a letter or digit; got {name!r}")
    return PREFIX + key


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise FeatureImportError(f"refused: the pickle asks for {module}.{name}; only lists of (image path, numpy vector) "
                           "with builtin containers, strings, numbers and numpy arrays are read")


def _from_pickle(data: bytes) -> tuple[list[str], np.ndarray]:
    try:
        items = _RestrictedUnpickler(io.BytesIO(data)).load()
    except FeatureImportError:
        raise
    except Exception as exc:
        raise FeatureImportError(f"not a readable pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(items, (list, tuple)) or not all(isinstance(t, (list, tuple)) and len(t) == 2 for t in items):
        raise FeatureImportError("the pickle must hold a list of (image_path, vector) pairs")
    return [str(k) for k, _ in items], _stack([v for _, v in items])


def _stack(rows) -> np.ndarray:
    try:
        out = np.asarray([np.asarray(r, dtype=np.float64).ravel() for r in rows], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise FeatureImportError(f"the vectors are not numeric or not all the same length ({exc})") from None
    return out


def _named(names, wanted: tuple[str, ...], what: str) -> str:
    for w in wanted:
        if w in names:
            return w
    raise FeatureImportError(f"no {what} found: expected one of {', '.join(wanted)}; the file has {', '.join(map(str, names)) or 'nothing'}")


def _from_table(frame) -> tuple[list[str], np.ndarray]:
    cols = [str(c) for c in frame.columns]
    key = _named([c.lower() for c in cols], _KEY_NAMES, "id column")
    key_col = cols[[c.lower() for c in cols].index(key)]
    rest = [c for c in cols if c != key_col]
    if len(rest) == 1 and frame[rest[0]].dtype == object:  # one column of lists (Parquet)
        vectors = _stack(frame[rest[0]].tolist())
    else:
        try:
            vectors = frame[rest].to_numpy(dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise FeatureImportError(f"every column but {key_col!r} must be numeric ({exc})") from None
    return frame[key_col].astype(str).tolist(), vectors


def read_features(path: Path, collection: Collection) -> tuple[list[str], np.ndarray]:
    """(keys, (n, d) vectors) from any accepted file."""
    path = Path(path)
    if not path.is_file():
        raise FeatureImportError(f"no file {path}")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise FeatureImportError(f"{path} is larger than {MAX_FILE_BYTES >> 30} GiB; split it or use a .npz")
    suffix = path.suffix.lower()
    if suffix in (".pkl", ".pickle"):
        return _from_pickle(path.read_bytes())
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return [str(k) for k in data[_named(data.files, _KEY_NAMES, "ids array")].tolist()], \
                np.asarray(data[_named(data.files, _VECTOR_NAMES, "vectors array")], dtype=np.float64)
    if suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
        if arr.dtype.names and {"id", "vector"} <= set(arr.dtype.names):
            return [str(k) for k in arr["id"].tolist()], np.asarray(arr["vector"], dtype=np.float64)
        if arr.ndim == 2 and len(arr) == len(collection):
            return list(collection.ids), np.asarray(arr, dtype=np.float64)
        raise FeatureImportError(f"a .npy holds fields id and vector, or an (n, d) array in collection order with n = {len(collection)}; "
                           f"got shape {arr.shape}")
    import pandas as pd

    if suffix == ".parquet":
        return _from_table(pd.read_parquet(path))
    if suffix == ".csv":
        return _from_table(pd.read_csv(path))
    raise FeatureImportError(f"unknown features file type {suffix or '(none)'}: use .npz, .npy, .parquet, .csv or a .pkl list of (path, vector)")


def match_keys(keys: list[str], collection: Collection) -> tuple[list[int], list[str]]:
    """Collection row of each key (-1: unmatched) by id, relative path, then unique file name."""
    root = str(collection.root.resolve())
    rel = {str(PurePosixPath(p.relative_to(collection.root))).lower(): i for i, p in enumerate(collection.paths)}
    names: dict[str, int] = {}
    for i, p in enumerate(collection.paths):
        names[p.name.lower()] = -2 if p.name.lower() in names else i  # -2: ambiguous
    rows, unmatched = [], []
    for key in keys:
        k = key.strip().replace("\\", "/")
        if k in collection:
            rows.append(collection.index_of(k))
            continue
        k = k.removeprefix(root + "/").removeprefix("./").lower()
        row = rel.get(k, names.get(PurePosixPath(k).name, -1))
        rows.append(row if row >= 0 else -1)
        if row < 0:
            unmatched.append(key)
    return rows, unmatched


def import_features(path: Path, name: str, collection: Collection, features_dir: Path) -> ImportReport:
    """Read, check, match and store the features of ``path`` as the model ``imported:name``."""
    model = check_name(name)
    keys, vectors = read_features(path, collection)
    if vectors.ndim != 2 or len(vectors) != len(keys) or vectors.shape[1] == 0:
        raise FeatureImportError(f"expected one vector per key, (n, d) with d > 0; got {len(keys)} keys and vectors of shape {vectors.shape}")
    bad = np.flatnonzero(~np.isfinite(vectors).all(1))
    if bad.size:
        raise FeatureImportError(f"{bad.size} vector(s) contain NaN or infinity, e.g. for {keys[bad[0]]!r}")
    rows, unmatched = match_keys(keys, collection)
    matched = [(r, i) for i, r in enumerate(rows) if r >= 0]
    if not matched:
        raise FeatureImportError(f"no key of {Path(path).name} matches an image of {collection.name!r} (by id, relative path or "
                           f"file name), e.g. {keys[0]!r} vs {collection.ids[0]!r}")
    seen: dict[int, str] = {}
    for r, i in matched:
        if r in seen:
            raise FeatureImportError(f"two keys name the same image {collection.ids[r]!r}: {seen[r]!r} and {keys[i]!r}")
        seen[r] = keys[i]
    matched.sort()
    ids = [collection.ids[r] for r, _ in matched]
    from .collection import file_signature

    store = FeatureStore(model, "imported", vectors[[i for _, i in matched]].astype(np.float32), ids,
                         [file_signature(collection.paths[r]) for r, _ in matched],
                         manifest={"collection": collection.name, "source": Path(path).name,
                                   "imported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    folder = store_dir(features_dir, collection.name, model)
    save_store(store, folder)
    have = set(ids)
    missing = [i for i in collection.ids if i not in have]
    return ImportReport(model, len(ids), store.dim, unmatched, missing, folder)


def import_upload(data: bytes, filename: str, name: str, collection: Collection, features_dir: Path) -> ImportReport:
    """:func:`import_features` of an uploaded file's bytes (the app's form, the API): read
    from a temporary file that keeps the upload's suffix, which says how to read it."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="cbir-import-") as d:
        path = Path(d) / f"upload{Path(filename or '').suffix.lower()}"
        path.write_bytes(data)
        return import_features(path, name, collection, features_dir)


def imported_models(features_dir: Path, collection_name: str) -> list[str]:
    """The ``imported:NAME`` models with a store for this collection."""
    from .store import store_exists

    base = Path(features_dir) / collection_name
    return sorted(p.name for p in base.glob(f"{PREFIX}*") if NAME_RE.fullmatch(p.name[len(PREFIX):]) and store_exists(p)) \
        if base.is_dir() else []
