"""The feature store in memory: :class:`FeatureStore` (one (n, d) matrix, float32 or
float16, and its ids per collection and model), row alignment across stores
(:func:`common_ids`) and the incremental update (:func:`merge_update`). Written and read
by :mod:`cbir.store_format`; arrays derived from it are cached by :mod:`cbir.derived`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import StoreError, import_again, index_model

DTYPES = ("float32", "float16")


@dataclass
class FeatureStore:
    """The features of one collection for one model: row ``i`` of ``embeddings`` is the
    vector of image ``ids[i]``, whose file had content hash ``signatures[i]``.

    ``embeddings``: (n, d) float32 or float16 (kept as given, a read-only memory map
    included; any other dtype is converted to float32); ``ids``, ``signatures``: (n,) str;
    ``manifest``: what the store's ``manifest.json`` says (model, weights, version, dim,
    dtype, dates). ``centre``: None for a store as written; the (d,) mean its rows were centred on
    for a centred view (:func:`cbir.centring.centred_view`). Raises StoreError when the shapes disagree. On disk:
    :mod:`cbir.store_format`; arrays derived from it: :mod:`cbir.derived`."""

    model: str
    weights: str
    embeddings: np.ndarray  # (n, d) float32
    ids: np.ndarray  # (n,) str
    signatures: np.ndarray  # (n,) str, content hash of each image
    manifest: dict = field(default_factory=dict)
    centre: np.ndarray | None = field(default=None, repr=False)  # (d,) the mean a centred view subtracted
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
    def variant(self) -> str:
        """``""`` for the vectors as written, ``"centred"`` for a centred view: names what is
        derived from it (``centred_faiss-...npz``, a Milvus collection) apart from the raw store's."""
        return "" if self.centre is None else "centred"

    @property
    def version(self) -> str:
        """Changes whenever the content changes; keys the result cache."""
        return str(self.manifest.get("version", ""))

    def row_of(self, image_id: str) -> int:
        try:
            return self.rows[str(image_id)]
        except KeyError:
            fix = import_again(self.model[len("imported:"):]) if self.model.startswith("imported:") else index_model(self.model)
            raise StoreError(f"image {image_id!r} is not in the {self.model} feature store", remedy=fix) from None

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
        """Rows of ``ids`` in that order, or None when the store already is in that order (every
        id compared: O(n), so a search takes the rows its cached id space computed once)."""
        if len(self) == len(ids) and np.array_equal(self.ids, np.asarray(ids, dtype=self.ids.dtype)):
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
