"""Centring: the collection's mean descriptor subtracted before cosine or Euclidean search, the
default for both.

Every stored vector is L2-normalised, the mean ``m`` of those unit vectors is subtracted and
the result L2-normalised again; a query (collection image or upload) is transformed with the
same ``m``. Deep descriptors of one collection share a large common component (ReLU features
are non-negative, so every pair has a high cosine); removing it spreads them over the sphere.
Measured on Wang-1000 (all 1000 queries, query excluded, full ranking): EfficientNet-Lite0 mAP
0.8556 -> 0.8771, Lite1 0.8792 -> 0.8973, Lite2 0.8745 -> 0.8969, the three fused 0.8963 ->
0.9137 (``python bench/centring.py``). Centring on the mean of unit vectors is the first step of
the PCA-whitening of Jégou & Chum (ECCV 2012) without the whitening, which hurts category
search here (see :mod:`cbir.recipes`).

Because the second L2 puts every vector on the unit sphere, Euclidean distance then ranks as
cosine does (``|a - b|^2 = 2 - 2 cos``); without it centring would not change a Euclidean
ranking at all. Chi-square and Bhattacharyya keep the raw non-negative histograms.

The mean belongs to one version of a store: it is derived from the store and cached beside it
(:mod:`cbir.derived`, ``mean.npz``), so an incremental ``cbir index`` or an import, which write
a new version, update it. :func:`centred_view` is a :class:`~cbir.store.FeatureStore` of the
centred vectors: every index (exact, FAISS, Milvus), DBA, αQE and Rocchio runs on it unchanged.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .derived import derived_array
from .distances import l2_normalise
from .store import FeatureStore

#: The metrics a search centres for (unless asked not to): those of L2-normalised directions.
CENTRED_METRICS = ("cosine", "euclidean")
#: A centred matrix larger than this (float32 bytes) is written beside the store and
#: memory-mapped, in the store's dtype, rather than held in memory.
CENTRED_IN_MEMORY_BYTES = 2 << 30
_BLOCK = 8192  # rows per block when computing the mean or writing a centred file


#: Fewer stored vectors than this are not centred: their mean is most of each vector (one image
#: centred on itself is the zero vector, two are pushed to opposite poles).
CENTRE_MIN_IMAGES = 10
_TRUE, _FALSE = ("true", "on", "yes", "1"), ("false", "off", "no", "0")
#: Every word :func:`check_flag` reads, and the value it reads as.
FLAG_WORDS = {**{w: True for w in _TRUE}, **{w: False for w in _FALSE}}


def check_flag(name: str, value: object) -> bool:
    """A yes/no field: a bool, 0/1, or true/false, on/off, yes/no in any case; else RequestError."""
    from .errors import RequestError

    if isinstance(value, (bool, np.bool_)) or (isinstance(value, int) and value in (0, 1)):
        return bool(value)
    text = str(value).strip().lower()
    if text in FLAG_WORDS:
        return FLAG_WORDS[text]
    raise RequestError(f"{name} must be true or false (on/off), got {str(value)[:40]!r}")


def centres(metric: str, centre: object = True) -> bool:
    """Whether a run under ``metric`` (a canonical name) is centred when ``centre`` is asked (a yes/no
    value, :func:`check_flag`: the one reading of it for searches, evaluations, sweeps and explanations)."""
    return check_flag("centre", centre) and metric in CENTRED_METRICS


def all_centred(stores) -> bool:
    """Whether every store of ``stores`` (a model -> :class:`FeatureStore` mapping) is a centred
    view: what a run reports as ``centred`` (a raw store, or one too small to centre, is not)."""
    return all(s.centre is not None for s in stores.values())


def unit_mean(matrix: np.ndarray) -> np.ndarray:
    """The (d,) float32 mean of the L2-normalised rows of an (n, d) matrix (any float dtype, a
    memory map read block by block, summed in float64). Raises ValueError for an empty matrix."""
    if len(matrix) == 0:
        raise ValueError("the mean of an empty store is undefined")
    total = np.zeros(matrix.shape[1], dtype=np.float64)
    for start in range(0, len(matrix), _BLOCK):
        total += l2_normalise(np.asarray(matrix[start:start + _BLOCK], dtype=np.float32)).sum(0, dtype=np.float64)
    return (total / len(matrix)).astype(np.float32)


def centre(vectors: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """(q, d) or (d,) vectors -> float32 of the same shape: L2-normalised, ``mean`` (d,)
    subtracted, L2-normalised again (a vector equal to the mean becomes zero)."""
    return l2_normalise(l2_normalise(vectors) - mean)


def store_mean(store: FeatureStore, folder: Path) -> np.ndarray:
    """The (d,) float32 mean of ``store``'s unit vectors, cached beside it (``mean.npz``) for the
    store's version: computed once per version (a million x 1280 rows: a few seconds)."""
    return derived_array(store, folder, "mean", lambda: unit_mean(store.embeddings))[0]


def mean_digest(mean: np.ndarray) -> str:
    """8 hex characters naming ``mean``: part of each centred row's signature, so a server that
    syncs by signature (Milvus) rewrites every row when the mean moves."""
    return hashlib.blake2b(np.ascontiguousarray(mean, dtype=np.float32).tobytes(), digest_size=4).hexdigest()


def centred_view(store: FeatureStore, folder: Path) -> FeatureStore:
    """``store`` centred on its mean: a :class:`FeatureStore` with the same ids, variant
    ``"centred"``, ``centre`` the (d,) mean, a version and signatures of its own (derived files
    and server collections keep the raw and centred vectors apart). Its (n, d) vectors are
    float32 in memory up to :data:`CENTRED_IN_MEMORY_BYTES`; beyond, a ``centred-*.npy`` file
    beside the store in the store's dtype, memory-mapped. A store of fewer than
    :data:`CENTRE_MIN_IMAGES` vectors is returned as it is (``centre`` None: not centred)."""
    if len(store) < CENTRE_MIN_IMAGES:
        return store
    mean = store_mean(store, folder)
    digest = mean_digest(mean)
    if len(store) * store.dim * 4 <= CENTRED_IN_MEMORY_BYTES:
        matrix = _centre_into(store, mean, np.empty((len(store), store.dim), dtype=np.float32))
    else:
        matrix = _centred_file(store, Path(folder), mean, digest)
    manifest = {**store.manifest, "version": f"{store.version}+centred-{digest}", "centred": True}
    signatures = np.char.add(store.signatures.astype(str), f":{digest}")
    return FeatureStore(store.model, store.weights, matrix, store.ids, signatures, manifest, centre=mean)


def _centre_into(store: FeatureStore, mean: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out`` (n, d), filled block by block with the store's rows centred on ``mean``."""
    for start in range(0, len(store), _BLOCK):
        out[start:start + _BLOCK] = centre(np.asarray(store.embeddings[start:start + _BLOCK], dtype=np.float32), mean)
    return out


def _centred_file(store: FeatureStore, folder: Path, mean: np.ndarray, digest: str) -> np.ndarray:
    """The centred matrix of a large store as a read-only memory map of ``centred-<digest>.npy``
    (written block by block on first use; files of older means are deleted)."""
    path = folder / f"centred-{hashlib.blake2b(store.version.encode(), digest_size=6).hexdigest()}-{digest}.npy"
    if path.exists():
        return np.load(path, mmap_mode="r")
    try:
        tmp = path.with_name(f".{path.name}.tmp")
        out = _centre_into(store, mean, np.lib.format.open_memmap(tmp, mode="w+", dtype=store.embeddings.dtype,
                                                                   shape=(len(store), store.dim)))
        out.flush()
        del out
        tmp.replace(path)
    except OSError:  # a read-only folder: in memory after all
        return _centre_into(store, mean, np.empty((len(store), store.dim), dtype=np.float32))
    for old in folder.glob("centred-*.npy"):
        if old != path:
            old.unlink(missing_ok=True)
    return np.load(path, mmap_mode="r")
