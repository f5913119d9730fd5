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

Every file is bounded before anything is decompressed or allocated (:class:`ImportLimits`,
the settings ``CBIR_IMPORT_MAX_DIM``, ``CBIR_IMPORT_MAX_ROWS``, ``CBIR_IMPORT_MAX_BYTES``):
from ``.npy`` headers (inside a ``.npz`` too, with the zip's declared member sizes), from
Parquet's footer, from a CSV's header line, and while unpickling (element counts, memoised
references counted each time they are used). Over a limit is a 413 naming the setting;
anything unreadable is one 400 line. Values that are not finite, exceed float32 or are
complex are refused.

Keys are matched to the collection by id, then by path relative to the collection, then
by file name (when unique); unmatched keys and images without a vector are reported. The
vectors become a feature store like an extractor's (so fusion, re-ranking and evaluation
treat them alike) that ``cbir index`` never re-extracts.
"""

from __future__ import annotations

import getpass
import io
import math
import os
import pickle
import re
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from .collection import Collection
from .errors import FeatureImportError, ImportConflictError, ImportForbiddenError, ImportLimitError  # noqa: F401 (re-exported)
from .store import FeatureStore
from .store_format import save_store, store_dir, store_exists, store_lock

PREFIX = "imported:"
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_]{0,39}")
MAX_FILE_BYTES = 4 << 30
#: the file types read_features reads (an upload form offers these)
IMPORT_SUFFIXES = (".npz", ".npy", ".parquet", ".csv", ".pkl", ".pickle")
_KEY_NAMES = ("ids", "id", "paths", "path", "files", "file")
_VECTOR_NAMES = ("vectors", "vector", "features", "embeddings")
#: What a legacy pickle may name: numpy's array and scalar reconstruction, and complex (so
#: that complex values get their own refusal). No container or bytes type: the opcodes build
#: lists, tuples and dicts, and ``bytearray(2**31)`` is a 44-byte allocation request.
_PICKLE_ALLOWED = {("builtins", "complex")} | {
    (m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")} | {
    (m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")} | {("numpy", "ndarray"), ("numpy", "dtype")}
_FLOAT32_MAX = float(np.finfo(np.float32).max)
#: The longest key (an image id or path) read, in characters: PATH_MAX on Linux. A longer one
#: is refused from the header (.npy/.npz), the dictionary (Parquet) or when read, so that 200
#: ids of 250,000 characters (a 1000:1 zip of repeated text) never become 200 MB of strings.
MAX_KEY_CHARS = 4096


@dataclass(frozen=True)
class ImportLimits:
    """Bounds checked before anything is decompressed or allocated. ``max_bytes`` counts the
    vectors as float64 (how they are checked before becoming float32)."""

    max_dim: int = 8192
    max_rows: int = 1000
    max_bytes: int = 1 << 30

    @classmethod
    def from_settings(cls, settings, collection_size: int) -> "ImportLimits":
        return cls(settings.import_max_dim, settings.import_max_rows or collection_size, settings.import_max_bytes)

    def check(self, what: str, rows: int | None = None, dim: int | None = None, nbytes: int | None = None) -> None:
        """Raise ImportLimitError naming the limit and its setting when a declared size is over it."""
        if rows is not None and rows > self.max_rows:
            raise ImportLimitError(f"{what} declares {rows} rows; the limit is CBIR_IMPORT_MAX_ROWS = {self.max_rows} "
                                   "(0 = the collection's size)")
        if dim is not None and dim > self.max_dim:
            raise ImportLimitError(f"{what} declares vectors of d = {dim}; the limit is CBIR_IMPORT_MAX_DIM = {self.max_dim}")
        if rows is not None and dim is not None:
            nbytes = max(nbytes or 0, rows * dim * 8)
        if nbytes is not None and nbytes > self.max_bytes:
            raise ImportLimitError(f"{what} would decode to {nbytes} bytes (vectors as float64); the limit is "
                                   f"CBIR_IMPORT_MAX_BYTES = {self.max_bytes}")


@dataclass(frozen=True)
class Importer:
    """Who imports: recorded in the manifest; only they or an admin may replace the model."""

    name: str
    admin: bool = False

    @classmethod
    def local(cls) -> "Importer":
        """The command line's user: it can write the features folder anyway, so it may replace."""
        try:
            user = getpass.getuser()
        except Exception:  # no login name (a container without a passwd entry)
            user = f"uid {os.getuid()}"
        return cls(f"{user} (command line)", admin=True)


@dataclass
class ImportReport:
    model: str
    vectors: int
    dim: int
    unmatched: list[str] = field(default_factory=list)  # keys of the file with no image
    missing: list[str] = field(default_factory=list)  # collection ids without a vector
    path: Path | None = None
    replaced: bool = False
    imported_by: str = ""

    def summary(self) -> str:
        def some(items: list[str]) -> str:
            return f" (e.g. {', '.join(items[:3])})" if items else ""

        return (f"{'replaced' if self.replaced else 'imported'} {self.vectors} vectors of d={self.dim} as {self.model}; "
                f"{len(self.unmatched)} key(s) of the file matched no image{some(self.unmatched)}; {len(self.missing)} image(s) "
                f"have no vector{some(self.missing)}")


def check_name(name: str) -> str:
    key = str(name).strip().lower().removeprefix(PREFIX)
    if not NAME_RE.fullmatch(key):
        raise FeatureImportError(f"an imported model's name is 1-40 lower-case letters, digits or _, starting with a letter or digit; got {name!r}")
    return PREFIX + key


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


# -- pickle ---------------------------------------------------------------------------
def _opcode(name: str) -> int:
    return getattr(pickle, name)[0]


class _BoundedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler with a restricted ``find_class`` and an element count per
    object: a container's count is the sum of its items' (an array's is its size), so a list
    referenced 1000 times through the memo counts 1000 times, and no object may count more
    than ``max_bytes / 8`` values. Set, object-building and out-of-band opcodes are refused."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, limits: ImportLimits):
        super().__init__(file)
        self.limits = limits
        self.budget = limits.max_bytes // 8
        self._counts: dict[int, int] = {}
        self._alive: list = []  # keeps counted objects alive, so their ids stay theirs

    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_ALLOWED:
            raise FeatureImportError(f"refused: the pickle asks for {module}.{name}; only lists of (image path, numpy vector) "
                                     "with builtin containers, strings, numbers and numpy arrays are read")
        found = super().find_class(module, name)
        return self._checked_reconstruct(found) if name == "_reconstruct" else found

    def _checked_reconstruct(self, reconstruct):
        def checked(cls, shape, dtype):
            # numpy allocates ``shape`` here, before __setstate__ fills it from the pickle's
            # bytes; numpy itself always asks for (0,), and one vector is at most max_dim
            n = math.prod(int(s) for s in np.atleast_1d(shape)) * max(np.dtype(dtype).itemsize // 8, 1)
            self.limits.check("an array of the pickle", dim=n)
            return reconstruct(cls, shape, dtype)

        return checked

    def count(self, x) -> int:
        if isinstance(x, np.ndarray):
            return int(x.size)
        got = self._counts.get(id(x))
        if got is not None:
            return got
        return len(x) if isinstance(x, (list, tuple, dict)) else 1

    def _set(self, obj, n: int) -> None:
        self._over(n)
        self._counts[id(obj)] = n
        self._alive.append(obj)

    def _over(self, n: int) -> None:
        if n > self.budget:
            raise ImportLimitError(f"the pickle holds more than {self.budget} values (memoised references count each time), "
                                   f"over {self.budget * 8} bytes as float64; the limit is CBIR_IMPORT_MAX_BYTES = "
                                   f"{self.limits.max_bytes}")

    def _refuse(what: str):
        def refuse(self):
            raise FeatureImportError(f"refused: the pickle uses {what}; only lists of (image path, numpy vector) are read")

        return refuse

    # containers made from the items on the stack (after MARK: self.stack holds them)
    def _made_from_marked(load):
        def run(self):
            n = sum(self.count(x) for x in self.stack)
            load(self)
            self._set(self.stack[-1], n)

        return run

    def _made_from_top(k: int, load):
        def run(self):
            n = sum(self.count(x) for x in self.stack[-k:])
            load(self)
            self._set(self.stack[-1], n)

        return run

    def _extended_from_marked(load):
        def run(self):
            target = self.metastack[-1][-1]
            n = self.count(target) + sum(self.count(x) for x in self.stack)
            load(self)
            self._set(target, n)

        return run

    def _extended_from_top(k: int, load):
        def run(self):
            target = self.stack[-k - 1]
            n = self.count(target) + sum(self.count(x) for x in self.stack[-k:])
            load(self)
            self._set(target, n)

        return run

    def _built(load):
        def run(self):
            load(self)
            obj = self.stack[-1]
            if isinstance(obj, np.ndarray):
                if obj.dtype.hasobject:
                    raise FeatureImportError("refused: the pickle holds a numpy array of Python objects; vectors must be numbers")
                self._over(obj.size)

        return run

    def _checked_reduce(load):
        def run(self):
            func, args = self.stack[-2], self.stack[-1]
            if func is np.ndarray:  # named only as _reconstruct's argument; called, it allocates any shape
                raise FeatureImportError("refused: the pickle calls numpy.ndarray itself; arrays come only through "
                                         "numpy's own reconstruction")
            if getattr(func, "__name__", "") == "scalar" and args and isinstance(args[0], np.dtype):
                if args[0].hasobject:
                    raise FeatureImportError("refused: the pickle holds a numpy scalar of Python objects; vectors must be numbers")
                self.limits.check("a scalar of the pickle", dim=max(args[0].itemsize // 8, 1))  # allocated before filled
            load(self)

        return run

    _d = pickle._Unpickler
    for _name, _load in (("LIST", _d.load_list), ("TUPLE", _d.load_tuple), ("DICT", _d.load_dict)):
        dispatch[_opcode(_name)] = _made_from_marked(_load)
    for _name, _k, _load in (("TUPLE1", 1, _d.load_tuple1), ("TUPLE2", 2, _d.load_tuple2), ("TUPLE3", 3, _d.load_tuple3)):
        dispatch[_opcode(_name)] = _made_from_top(_k, _load)
    for _name, _load in (("APPENDS", _d.load_appends), ("SETITEMS", _d.load_setitems)):
        dispatch[_opcode(_name)] = _extended_from_marked(_load)
    dispatch[_opcode("APPEND")] = _extended_from_top(1, _d.load_append)
    dispatch[_opcode("SETITEM")] = _extended_from_top(2, _d.load_setitem)
    dispatch[_opcode("BUILD")] = _built(_d.load_build)
    dispatch[_opcode("REDUCE")] = _built(_checked_reduce(_d.load_reduce))
    for _name in ("EMPTY_SET", "ADDITEMS", "FROZENSET"):
        dispatch[_opcode(_name)] = _refuse("a set")
    for _name in ("NEWOBJ", "NEWOBJ_EX", "OBJ", "INST", "NEXT_BUFFER", "READONLY_BUFFER"):
        dispatch[_opcode(_name)] = _refuse(f"the {_name} opcode")
    del _d, _name, _load, _k, _made_from_marked, _made_from_top, _extended_from_marked, _extended_from_top, _built, _refuse, _checked_reduce


def _from_pickle(data: bytes, limits: ImportLimits) -> tuple[list[str], np.ndarray]:
    unpickler = _BoundedUnpickler(io.BytesIO(data), limits)
    try:
        items = unpickler.load()
    except FeatureImportError:
        raise
    except RecursionError:
        raise FeatureImportError("not a readable pickle (nested too deeply)") from None
    except Exception as exc:
        raise FeatureImportError(f"not a readable pickle ({_one_line(exc)})") from None
    if not isinstance(items, (list, tuple)) or not all(isinstance(t, (list, tuple)) and len(t) == 2 for t in items):
        raise FeatureImportError("the pickle must hold a list of (image_path, vector) pairs")
    limits.check("the pickle", rows=len(items))
    for key, vector in items:
        if not isinstance(key, str):
            raise FeatureImportError(f"the pickle's keys must be strings (image paths); got a {type(key).__name__}")
        limits.check("the pickle", dim=unpickler.count(vector))
    return [k for k, _ in items], _stack([v for _, v in items])


def _stack(rows) -> np.ndarray:
    """(n, d) float64 from rows that are each a sequence or array of numbers (not strings,
    not complex); sizes were bounded by the caller."""
    out = []
    for r in rows:
        try:
            a = np.asarray(r)
        except (TypeError, ValueError, OverflowError) as exc:
            raise FeatureImportError(f"the vectors are not numbers or not all the same length ({_one_line(exc)})") from None
        _check_dtype(a.dtype, "the vectors")
        out.append(a.astype(np.float64).ravel())
    if len({len(a) for a in out}) > 1:
        raise FeatureImportError(f"the vectors are not all the same length ({sorted({len(a) for a in out})[:5]}...)")
    return np.stack(out) if out else np.zeros((0, 0))


def _check_dtype(dtype: np.dtype, what: str) -> None:
    """Numbers only: complex values would lose their imaginary part, strings are not vectors."""
    if dtype.kind == "c":
        raise FeatureImportError(f"{what} hold complex values ({dtype}); import real numbers (e.g. .real or abs())")
    if dtype.hasobject:
        raise FeatureImportError(f"{what} hold Python objects (object dtype); save numbers, and ids as strings")
    if dtype.kind not in "biuf" or dtype.subdtype is not None:
        raise FeatureImportError(f"{what} must be numbers; got {dtype}")


def _check_ids(dtype: np.dtype, what: str) -> None:
    if dtype.hasobject:
        raise FeatureImportError(f"{what} hold Python objects (object dtype); save the ids as strings, e.g. np.array(ids, dtype=str)")
    if dtype.kind not in "USiu":
        raise FeatureImportError(f"{what} must be strings or integers; got {dtype}")
    chars = dtype.itemsize // 4 if dtype.kind == "U" else dtype.itemsize
    if chars > MAX_KEY_CHARS:
        raise FeatureImportError(f"{what} are {chars} characters wide; an id or path has at most {MAX_KEY_CHARS}")


def _short(key) -> str:
    """A key as a message quotes it: at most 60 characters of it."""
    text = repr(key)
    return text if len(text) <= 60 else f"{text[:57]}…"


def _checked_keys(keys: list[str], what: str) -> list[str]:
    longest = max(map(len, keys), default=0)
    if longest > MAX_KEY_CHARS:
        raise FeatureImportError(f"{what} holds a key of {longest} characters; an id or path has at most {MAX_KEY_CHARS}")
    return keys


# -- numpy ----------------------------------------------------------------------------
def _npy_header(fh, what: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header length) from a .npy header, reading nothing else."""
    try:
        version = np.lib.format.read_magic(fh)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read is None:
            raise FeatureImportError(f"{what} is a .npy of format version {version[0]}.{version[1]}, not read here; "
                                     "save it with numpy's default format")
        shape, _fortran, dtype = read(fh)
    except FeatureImportError:
        raise
    except Exception as exc:
        raise FeatureImportError(f"{what} is not a .npy array ({_one_line(exc)})") from None
    return tuple(int(s) for s in shape), dtype, fh.tell()


def _check_array(shape, dtype: np.dtype, data_bytes: int, what: str, limits: ImportLimits, role: str) -> int:
    """Bounds and dtype of an array from its header, then that its data is all there; the
    bytes it decodes to (vectors counted as float64)."""
    if role == "ids":
        _check_ids(dtype, what)
        if len(shape) != 1:
            raise FeatureImportError(f"{what} must be 1-D, one id per vector; got shape {shape}")
        limits.check(what, rows=shape[0], nbytes=shape[0] * dtype.itemsize)
    elif role == "structured":
        limits.check(what, rows=shape[0] if shape else 0)
        if len(shape) != 1:
            raise FeatureImportError(f"{what} must be a 1-D structured array (fields id and vector); got shape {shape}")
        _check_ids(dtype["id"], f"{what}'s id field")
        vec = dtype["vector"]
        _check_dtype(vec.base, f"{what}'s vector field")
        limits.check(what, rows=shape[0], dim=math.prod(vec.shape), nbytes=shape[0] * dtype.itemsize)
    else:
        _check_dtype(dtype, what)
        if len(shape) != 2:
            raise FeatureImportError(f"{what} must be 2-D (n, d); got shape {shape}")
        limits.check(what, rows=shape[0], dim=shape[1])
    need = math.prod(shape) * dtype.itemsize
    if data_bytes < need:
        raise FeatureImportError(f"{what} is truncated: its header declares {shape} {dtype} ({need} bytes), the file holds {data_bytes}")
    return need if role == "ids" else max(need, math.prod(shape) * 8)


def _read_array(fh, what: str) -> np.ndarray:
    try:
        return np.lib.format.read_array(fh, allow_pickle=False)
    except Exception as exc:  # CRC errors, short reads, bad headers
        raise FeatureImportError(f"{what} cannot be read ({_one_line(exc)})") from None


def _from_npy(path: Path, collection: Collection, limits: ImportLimits) -> tuple[list[str], np.ndarray]:
    what = f"the .npy {path.name}"
    with open(path, "rb") as fh:
        shape, dtype, offset = _npy_header(fh, what)
        structured = bool(dtype.names) and {"id", "vector"} <= set(dtype.names)
        limits.check(what, rows=shape[0] if shape else None, dim=shape[1] if len(shape) == 2 else None)
        if not structured and not (len(shape) == 2 and shape[0] == len(collection)):
            raise FeatureImportError(f"a .npy holds fields id and vector, or an (n, d) array in collection order with n = "
                                     f"{len(collection)}; got shape {shape}")
        _check_array(shape, dtype, path.stat().st_size - offset, what, limits, "structured" if structured else "vectors")
        fh.seek(0)
        arr = _read_array(fh, what)
    if structured:
        return [str(k) for k in arr["id"].tolist()], arr["vector"].reshape(len(arr), -1).astype(np.float64)
    return list(collection.ids), arr.astype(np.float64)


def _from_npz(path: Path, limits: ImportLimits) -> tuple[list[str], np.ndarray]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise FeatureImportError(f"{path.name} is not a .npz (zip) archive ({_one_line(exc)}); save with np.savez") from None
    with archive:
        members = {Path(i.filename).stem: i for i in archive.infolist() if i.filename.endswith(".npy")}
        picked = {role: members[_named(list(members), names, what)]
                  for role, names, what in (("ids", _KEY_NAMES, "ids array"), ("vectors", _VECTOR_NAMES, "vectors array"))}
        arrays, decoded = {}, 0
        for role, info in picked.items():  # every header checked before any data is read
            what = f"{info.filename} of {path.name}"
            try:
                with archive.open(info) as fh:
                    shape, dtype, offset = _npy_header(fh, what)
            except FeatureImportError:
                raise
            except Exception as exc:
                raise FeatureImportError(f"{what} cannot be read ({_one_line(exc)})") from None
            decoded += _check_array(shape, dtype, info.file_size - offset, what, limits, role)
        limits.check(path.name, nbytes=decoded)
        for role, info in picked.items():
            what = f"{info.filename} of {path.name}"
            try:
                with archive.open(info) as fh:
                    arrays[role] = _read_array(fh, what)
            except FeatureImportError:
                raise
            except Exception as exc:
                raise FeatureImportError(f"{what} cannot be read ({_one_line(exc)})") from None
    return [str(k) for k in arrays["ids"].tolist()], arrays["vectors"].astype(np.float64)


# -- tables ---------------------------------------------------------------------------
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
    if not rest:
        raise FeatureImportError(f"no vector columns beside {key_col!r}")
    if len(rest) == 1 and frame[rest[0]].dtype == object:  # one column of lists (Parquet)
        vectors = _stack(frame[rest[0]].tolist())
    else:
        for c in rest:
            _check_dtype(np.dtype(frame[c].dtype) if isinstance(frame[c].dtype, np.dtype) else np.dtype(object), f"column {c!r}")
        vectors = frame[rest].to_numpy(dtype=np.float64)
    return frame[key_col].astype(str).tolist(), vectors


def _check_text_columns(table, names: list[str], what: str, limits: ImportLimits) -> None:
    """Text columns of one row group, still dictionary-encoded: no value over MAX_KEY_CHARS,
    so expanding them costs at most rows x MAX_KEY_CHARS."""
    import pyarrow.compute as pc

    for name in names:
        column = table.column(name)
        for chunk in column.chunks:
            values = chunk.dictionary if hasattr(chunk, "dictionary") else chunk
            if len(values) and (pc.max(pc.binary_length(values.cast("binary"))).as_py() or 0) > MAX_KEY_CHARS * 4:
                raise FeatureImportError(f"{what}: column {name!r} holds values over {MAX_KEY_CHARS} characters; "
                                         "an id or path has at most that")


def _from_parquet(path: Path, limits: ImportLimits) -> tuple[list[str], np.ndarray]:
    """Rows, columns, value counts and uncompressed sizes from the footer, then the table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    what = f"the Parquet file {path.name}"
    try:
        pf = pq.ParquetFile(path)
        meta, schema = pf.metadata, pf.schema_arrow
        strings = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
                   or pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
        if strings:  # dictionary-encoded text is read as its dictionary: the footer's sizes are encoded sizes
            pf = pq.ParquetFile(path, read_dictionary=strings)
    except Exception as exc:
        raise FeatureImportError(f"{path.name} is not a readable Parquet file ({_one_line(exc)})") from None
    rows = meta.num_rows
    groups = [meta.row_group(g) for g in range(meta.num_row_groups)]
    values: dict[str, int] = {}  # leaf values per top-level column (a list column's leaves are its elements)
    for g in groups:
        for c in range(g.num_columns):
            top = g.column(c).path_in_schema.split(".")[0]
            values[top] = values.get(top, 0) + g.column(c).num_values
    uncompressed = sum(g.total_byte_size for g in groups)
    vector_fields = [f for f in schema if f.name.lower() not in _KEY_NAMES and not f.name.startswith("__index_level_")]
    numeric = lambda t: pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)  # noqa: E731
    lists = [f for f in vector_fields if pa.types.is_list(f.type) or pa.types.is_large_list(f.type) or pa.types.is_fixed_size_list(f.type)]
    if len(vector_fields) == 1 and lists:
        if not numeric(lists[0].type.value_type):
            raise FeatureImportError(f"{what}: column {lists[0].name!r} must hold lists of numbers; got {lists[0].type}")
        dim = math.ceil(values.get(lists[0].name, 0) / rows) if rows else 0  # a mean: a row's own length is known only once read
    else:
        bad = [f for f in vector_fields if not numeric(f.type)]
        if bad:
            raise FeatureImportError(f"{what}: every column but the id must hold numbers; {bad[0].name!r} is {bad[0].type}")
        dim = len(vector_fields)
    limits.check(what, rows=rows, dim=dim, nbytes=max(sum(values.values()) * 8, uncompressed))
    tables, decoded = [], 0
    try:
        for g in range(pf.num_row_groups):  # a footer that understates its sizes is caught one row group late
            tables.append(pf.read_row_group(g))
            decoded += tables[-1].nbytes
            limits.check(what, nbytes=decoded)
            _check_text_columns(tables[-1], strings, what, limits)
        frame = (pa.concat_tables(tables) if tables else schema.empty_table()).to_pandas()
    except FeatureImportError:
        raise
    except Exception as exc:
        raise FeatureImportError(f"{what} cannot be read ({_one_line(exc)})") from None
    del tables
    return _from_table(frame)


def _from_csv(path: Path, limits: ImportLimits) -> tuple[list[str], np.ndarray]:
    """The header gives the dimension; no more rows than the limits allow are parsed."""
    import csv

    what = f"the CSV file {path.name}"
    most_chars = 64 * (limits.max_dim + 2)
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        head = io.StringIO(fh.read(most_chars + 1))
    try:  # the header as the csv module and pandas read it: one logical record (a quoted field may hold a newline)
        columns = len(next(csv.reader(head), []))
    except csv.Error as exc:
        raise FeatureImportError(f"{what} cannot be read ({_one_line(exc)})") from None
    if head.tell() > most_chars:
        raise FeatureImportError(f"{what}: its header is longer than {most_chars} characters")
    limits.check(what, dim=max(columns - 1, 0))
    most = min(limits.max_rows, limits.max_bytes // (8 * max(columns, 1)))
    import pandas as pd

    try:
        frame = pd.read_csv(path, nrows=most + 1)
    except Exception as exc:
        raise FeatureImportError(f"{what} cannot be read ({_one_line(exc)})") from None
    if len(frame) > most:  # one row more than allowed: say which limit
        limits.check(what, rows=len(frame), nbytes=len(frame) * columns * 8)
    if frame.shape[1] != columns:
        raise FeatureImportError(f"{what}: pandas read {frame.shape[1]} columns where the header has {columns}")
    return _from_table(frame)


def read_features(path: Path, collection: Collection, limits: ImportLimits | None = None) -> tuple[list[str], np.ndarray]:
    """(keys, (n, d) float64 vectors) from any accepted file, its declared sizes checked
    against ``limits`` (default: the settings) before its arrays are decoded."""
    path = Path(path)
    if limits is None:
        from .config import get_settings

        limits = ImportLimits.from_settings(get_settings(), len(collection))
    if not path.is_file():
        raise FeatureImportError(f"no file {path}")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise FeatureImportError(f"{path} is larger than {MAX_FILE_BYTES >> 30} GiB; split it or use a .npz")
    suffix = path.suffix.lower()
    readers = {".pkl": lambda: _from_pickle(path.read_bytes(), limits), ".pickle": lambda: _from_pickle(path.read_bytes(), limits),
               ".npz": lambda: _from_npz(path, limits), ".npy": lambda: _from_npy(path, collection, limits),
               ".parquet": lambda: _from_parquet(path, limits), ".csv": lambda: _from_csv(path, limits)}
    if suffix in readers:
        keys, vectors = readers[suffix]()
        # what was declared was checked before decoding; what was read is checked again
        limits.check(path.name, rows=len(keys), dim=vectors.shape[1] if vectors.ndim == 2 else None)
        return _checked_keys(keys, path.name), vectors
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


def _conflict(folder: Path, model: str, by: Importer, replace: bool) -> bool:
    """Whether an existing store is replaced; ImportConflictError when it may not be."""
    if not store_exists(folder):
        return False
    import json

    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        manifest = {}
    owner, when = manifest.get("imported_by"), manifest.get("imported_at") or manifest.get("imported") or "?"
    if not replace:
        raise ImportConflictError(f"{model} exists (imported by {owner or 'an unknown user'} at {when}); import with replace "
                                  "(--replace, replace=true) to overwrite it")
    if not by.admin and by.name != owner:
        raise ImportForbiddenError(f"{model} was imported by {owner or 'an unknown user'}: only {owner or 'its owner'} or an admin "
                                  "may replace it")
    return True


def import_features(path: Path, name: str, collection: Collection, features_dir: Path, *, limits: ImportLimits | None = None,
                    by: Importer | None = None, replace: bool = False) -> ImportReport:
    """Read, check, match and store the features of ``path`` as the model ``imported:name``.

    ``limits`` bound the file before it is decoded (default: the settings); ``by`` is
    recorded as the owner (default: the command line's user); an existing model is replaced
    only with ``replace`` and only by its owner or an admin. The check and the write happen
    under the store's writer lock, so concurrent imports of one name take turns."""
    model = check_name(name)
    by = by or Importer.local()
    folder = store_dir(features_dir, collection.name, model)
    _conflict(folder, model, by, replace)  # early: before reading a large file
    keys, vectors = read_features(path, collection, limits)
    if vectors.ndim != 2 or len(vectors) != len(keys) or vectors.shape[1] == 0:
        raise FeatureImportError(f"expected one vector per key, (n, d) with d > 0; got {len(keys)} keys and vectors of shape {vectors.shape}")
    bad = np.flatnonzero(~np.isfinite(vectors).all(1))
    if bad.size:
        raise FeatureImportError(f"{bad.size} vector(s) contain NaN or infinity, e.g. for {_short(keys[bad[0]])}")
    big = np.flatnonzero((np.abs(vectors) > _FLOAT32_MAX).any(1))
    if big.size:  # stored as float32 they would be infinite, and every search on the model would fail
        raise FeatureImportError(f"{big.size} vector(s) hold values beyond the float32 range (|x| > {_FLOAT32_MAX:.4g}), e.g. "
                                 f"{float(np.abs(vectors[big[0]]).max()):.4g} for {_short(keys[big[0]])}; scale them down")
    rows, unmatched = match_keys(keys, collection)
    matched = [(r, i) for i, r in enumerate(rows) if r >= 0]
    if not matched:
        raise FeatureImportError(f"no key of {Path(path).name} matches an image of {collection.name!r} (by id, relative path or "
                           f"file name), e.g. {_short(keys[0])} vs {collection.ids[0]!r}")
    seen: dict[int, str] = {}
    for r, i in matched:
        if r in seen:
            raise FeatureImportError(f"two keys name the same image {collection.ids[r]!r}: {_short(seen[r])} and {_short(keys[i])}")
        seen[r] = keys[i]
    matched.sort()
    ids = [collection.ids[r] for r, _ in matched]
    from .collection import file_signature

    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    store = FeatureStore(model, "imported", vectors[[i for _, i in matched]].astype(np.float32), ids,
                         [file_signature(collection.paths[r]) for r, _ in matched],
                         manifest={"collection": collection.name, "source": Path(path).name, "imported_by": by.name,
                                   "imported_at": now})
    with store_lock(folder):
        replaced = _conflict(folder, model, by, replace)  # again, now that no other writer can come between
        save_store(store, folder)
    have = set(ids)
    missing = [i for i in collection.ids if i not in have]
    return ImportReport(model, len(ids), store.dim, unmatched, missing, folder, replaced, by.name)


def delete_imported(name: str, collection: Collection, features_dir: Path, by: Importer | None = None) -> str:
    """Delete the imported model ``name`` of ``collection`` (its store and the indexes derived
    from it, which live in its folder); returns the model's name (``imported:NAME``). Only its
    owner or an admin may: :class:`ImportForbiddenError` otherwise; :class:`FeatureImportError`
    when there is no such model. Under the store's writer lock, like an import."""
    import json
    import shutil

    from .store_format import store_exists

    model = check_name(name)
    by = by or Importer.local()
    folder = store_dir(features_dir, collection.name, model)
    with store_lock(folder):
        if not store_exists(folder):
            raise FeatureImportError(f"{collection.name!r} has no imported model {model}")
        try:
            owner = json.loads((folder / "manifest.json").read_text()).get("imported_by")
        except (OSError, ValueError):
            owner = None
        if not by.admin and by.name != owner:
            raise ImportForbiddenError(f"{model} was imported by {owner or 'an unknown user'}: only {owner or 'its owner'} or an "
                                       "admin may delete it")
        shutil.rmtree(folder)
    return model


def import_upload(data: bytes, filename: str, name: str, collection: Collection, features_dir: Path, **options) -> ImportReport:
    """:func:`import_features` of an uploaded file's bytes (the app's form, the API): read
    from a temporary file that keeps the upload's suffix, which says how to read it."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="cbir-import-") as d:
        path = Path(d) / f"upload{Path(filename or '').suffix.lower()}"
        path.write_bytes(data)
        return import_features(path, name, collection, features_dir, **options)


def imported_models(features_dir: Path, collection_name: str) -> list[str]:
    """The ``imported:NAME`` models with a store for this collection."""
    from .store_format import store_exists

    base = Path(features_dir) / collection_name
    return sorted(p.name for p in base.glob(f"{PREFIX}*") if NAME_RE.fullmatch(p.name[len(PREFIX):]) and store_exists(p)) \
        if base.is_dir() else []
