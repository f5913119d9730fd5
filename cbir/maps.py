"""2-D maps of one model's features over a whole collection, for looking at what a model
sees: PCA (instant, the default), UMAP (``umap-learn``) and t-SNE (``openTSNE``), one
record each in :data:`MAPS` (label, description, package, parameters, fit).

Features are L2-normalised first (the cosine geometry every search uses) and, by default,
centred on the collection's mean as a centred search sees them (:mod:`cbir.centring`; a store
too small to centre is mapped as stored). A map is cached beside the store as a derived array
keyed by the store version (the centred view has its own), the method and its parameters,
so a second view only reads it. A new point (an uploaded query) is placed,
not recomputed: PCA projects it on the map's own axes; UMAP and t-SNE use their fitted
model's ``transform`` (umap-learn's, and openTSNE's optimisation of the new point against
the fixed map). Fitted models are kept in memory, the FITTED_MAX most recent; a map read
from the disk cache is fitted again on its first placement, and since every fit is seeded
and single-threaded that reproduces the map shown. A store of more than MAP_MAX_POINTS
images is mapped through a seeded random sample of that many (said wherever the map is
shown).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from .distances import l2_normalise
from .errors import CBIRError, TooFewImagesError, unknown
from .lru import LRU

if TYPE_CHECKING:
    from .catalogue import StoreCatalogue
    from .store import FeatureStore

#: fitted UMAP / t-SNE models kept in memory for placing new points (the newest ones; about
#: 5 MB and 15 MB for 1,000 images, and 20 times that for a 20,000-image sample)
FITTED_MAX = 2
_FITTED: LRU[tuple, object] = LRU(FITTED_MAX)
#: a PCA map's mean and axes, for placing points: 3 x d float32 each (15 KB at d = 1280); they
#: were computed again from the whole (n, d) sample at every placement (3-4 ms at 1000 x 1280)
PCA_AXES_MAX = 16
_PCA_AXES: LRU[tuple, tuple] = LRU(PCA_AXES_MAX)
_FITTED_LOCK = threading.Lock()  # serialises UMAP's and openTSNE's transform (openTSNE moves its map)
#: a larger store is mapped through a seeded random sample of this many images (a scatter of
#: more points is unreadable and unresponsive in a browser; UMAP and t-SNE would take hours)
MAP_MAX_POINTS = 20_000
#: above this many images a map's hover shows id and label without the thumbnail (about 2 KB each)
MAP_THUMBNAILS_MAX = 5_000
SEED = 0

Progress = Callable[[int, int], None]


def map_status() -> dict[str, tuple[bool, str]]:
    """method -> (can run here, why not), from each record's :meth:`MapMethod.available`."""
    return {name: m.available() for name, m in MAPS.items()}


def check_params(method: str, params: dict | None) -> dict:
    """The method's parameters, defaults filled in, each within its bounds."""
    record = map_method(method)
    ok, why = record.available()
    if not ok:
        raise CBIRError(f"{record.label} is not installed here: {why}")
    out = {}
    for name, (default, low, high) in record.params.items():
        value = float((params or {}).get(name, default))
        if not low <= value <= high:
            raise CBIRError(f"{record.label} {name} must be between {low:g} and {high:g}, got {value:g}")
        out[name] = int(value) if isinstance(default, int) else value
    extra = set(params or {}) - set(out)
    if extra:
        raise CBIRError(f"{record.label} takes {', '.join(out) or 'no parameters'}; not {', '.join(sorted(extra))}")
    return out


def _pca(x: np.ndarray) -> np.ndarray:
    centred = x - x.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


class _EpochSink(io.TextIOBase):
    """A file for umap-learn's tqdm bar (``bar_format`` "{desc}|{n}/{total}") that turns each
    refresh of the "Epochs completed" bar into a progress call."""

    def __init__(self, progress: Progress | None):
        self.progress = progress

    def write(self, text: str) -> int:
        found = re.findall(r"Epochs completed\|(\d+)/(\d+)", text)
        if found and self.progress:
            done, total = map(int, found[-1])
            self.progress(done, max(total, 1))
        return len(text)


def _umap(x: np.ndarray, n_neighbors: int, min_dist: float, progress: Progress | None = None):
    import umap

    # a refresh every 5 epochs, not every 0.2 s: a fast fit (300 points in 0.3 s) reported 0, 0.002 and 1 only
    bar = {"disable": False, "file": _EpochSink(progress), "desc": "Epochs completed", "bar_format": "{desc}|{n}/{total}",
           "mininterval": 0, "miniters": 5}
    reducer = umap.UMAP(n_neighbors=min(n_neighbors, len(x) - 1), min_dist=min_dist, metric="cosine", random_state=SEED,
                        n_jobs=1, tqdm_kwds=bar).fit(x)
    return reducer.embedding_, reducer


def _tsne(x: np.ndarray, perplexity: float, progress: Progress | None):
    from openTSNE import TSNE

    total = 750  # openTSNE's early exaggeration (250) + optimisation (500) iterations
    done = [0]

    def tick(iteration, error, embedding):
        done[0] += 50
        if progress:
            progress(min(done[0], total), total)

    embedding = TSNE(perplexity=min(perplexity, (len(x) - 1) / 3), metric="cosine", random_state=SEED, n_jobs=1,
                     callbacks=tick, callbacks_every_iters=50).fit(x)
    return np.array(embedding), embedding  # a TSNEEmbedding: the map and what transform needs


#: fit(x, params, progress) -> ((n, 2) coordinates, the fitted model or None): ``x`` (n, d)
#: float32 L2-normalised, ``params`` checked by :func:`check_params`
Fit = Callable[[np.ndarray, dict, "Progress | None"], tuple[np.ndarray, object]]


@dataclass(frozen=True)
class MapMethod:
    """One map method: label, one-line description, the package it needs (None: numpy),
    its parameters (name -> (default, low, high)), how a new point is placed, and its fit."""

    name: str
    label: str
    description: str
    module: str | None  # the import name of the package it needs
    pip: str | None  # what to install for it
    params: dict[str, tuple[float, float, float]]
    placement: str  # how a new point (an upload) is placed on the map
    fit: Fit
    min_points: int = 3  # fewer points: TooFewImagesError before any work (the method would fail or mean nothing)

    def check_points(self, n: int) -> None:
        """:class:`TooFewImagesError` (422) when ``n`` points are fewer than this method needs."""
        if n < self.min_points:
            raise TooFewImagesError(
                f"a {self.label} map needs at least {self.min_points} indexed images; this store has {n}"
            )

    def available(self) -> tuple[bool, str]:
        """(whether it can run here, the package it uses or how to install it)."""
        if self.module is None:
            return True, "numpy"
        ok = importlib.util.find_spec(self.module) is not None
        return ok, self.module if ok else f"`pip install {self.pip}`"


#: The map methods, one record each: the API, the Map page and the benchmarks read this.
MAPS: dict[str, MapMethod] = {
    "pca": MapMethod("pca", "PCA", "the two principal axes of the normalised features (an SVD): instant, linear", None, None, {},
                     "projected on the map's PCA axes", lambda x, params, progress: (_pca(x), None), min_points=3),
    "umap": MapMethod("umap", "UMAP", "uniform manifold approximation (McInnes, Healy & Melville 2018), cosine k-NN graph",
                      "umap", "umap-learn", {"n_neighbors": (15, 2, 200), "min_dist": (0.1, 0.0, 1.0)},
                      "placed by UMAP's transform", lambda x, params, progress: _umap(x, **params, progress=progress),
                      min_points=4),  # its spectral layout takes 3 eigenvectors of the n x n graph (scipy: 3 < n)
    "tsne": MapMethod("tsne", "t-SNE", "t-distributed stochastic neighbour embedding (van der Maaten & Hinton 2008), openTSNE",
                      "openTSNE", "openTSNE", {"perplexity": (30, 2, 100)},
                      "placed by t-SNE's transform",
                      lambda x, params, progress: _tsne(x, params["perplexity"], progress), min_points=3),
}
MAP_METHODS = tuple(MAPS)


def map_method(name: str) -> MapMethod:
    """The record of map method ``name``; the project's unknown-name error otherwise."""
    if name not in MAPS:
        raise unknown("map method", name, MAPS)
    return MAPS[name]


def fit_map(vectors: np.ndarray, method: str, params: dict, progress: Progress | None = None) -> tuple[np.ndarray, object]:
    """(n, 2) float32 coordinates of the L2-normalised ``vectors``, and the fitted model that
    places new points (None for PCA, which needs none)."""
    map_method(method).check_points(len(vectors))
    x = l2_normalise(np.asarray(vectors, dtype=np.float32))
    out, fitted = map_method(method).fit(x, params, progress)
    if progress:
        progress(1, 1)
    return np.asarray(out, dtype=np.float32), fitted


def _keep_fitted(key: tuple, fitted: object) -> None:
    _FITTED.put(key, fitted)


@dataclass
class EmbeddingMap:
    model: str
    method: str
    params: dict
    ids: list[str]
    coords: np.ndarray  # (n, 2)
    seconds: float  # to compute; 0 when read from the cache
    load_seconds: float = 0.0
    rows: np.ndarray | None = None  # the store rows mapped, when a sample; None: all of them
    total: int = 0  # images in the store
    key: tuple = ()  # (store folder, store version, map name): its fitted model in memory
    store: FeatureStore | None = field(default=None, repr=False)  # the vectors mapped (a centred view, or as stored)

    @property
    def centred(self) -> bool:
        """Whether the map shows the vectors centred on the collection's mean."""
        return self.store is not None and self.store.centre is not None

    def point_of(self, image_id: str) -> tuple[float, float] | None:
        """Where a mapped image is (None if a sampled map left it out)."""
        try:
            i = self.ids.index(image_id)
        except ValueError:
            return None
        return float(self.coords[i, 0]), float(self.coords[i, 1])

    def place(self, query: np.ndarray, progress: Progress | None = None) -> tuple[float, float]:
        """Where a new (d,) vector goes on this map: the model's raw descriptor of an upload or
        of a collection image, centred as the map's vectors are. UMAP and t-SNE use the fitted
        model, fitted again first (``progress``) if this process has none."""
        from .centring import centre

        vectors = self.store.embeddings
        q = np.asarray(query, dtype=np.float32)[None, :]
        q = centre(q, self.store.centre) if self.centred else l2_normalise(q)
        if self.method == "pca":
            # keyed by the drawn coordinates too: a map file rebuilt under the same name (pruned,
            # then written again by another process) may differ in an axis's sign
            drawn = hashlib.blake2b(np.ascontiguousarray(self.coords).tobytes(), digest_size=16).digest()
            key = (*self.key, drawn) if self.key else None
            axes = _PCA_AXES.get(key) if key else None
            if axes is None:  # its "model": the mean and the two axes ((d,) and (d, 2) float32)
                x = l2_normalise(np.asarray(vectors if self.rows is None else vectors[self.rows], dtype=np.float32))
                # the map's own axes, no second SVD: coords[:, k] = (x - mean) v_k = u_k s_k, so
                # (x - mean)^T coords[:, k] = v_k s_k^2 and ||coords[:, k]||^2 = s_k^2 (signs included)
                mean = x.mean(0)
                axes = (mean, ((x - mean).T @ self.coords) / np.maximum((self.coords ** 2).sum(0), 1e-12))
                if key:
                    _PCA_AXES.put(key, axes)
            point = (q[0] - axes[0]) @ axes[1]
            return float(point[0]), float(point[1])
        fitted = _FITTED.get(self.key)
        if fitted is None:
            # seeded and single-threaded: the same input gives the same map again (the store's
            # vectors as they are: normalising twice moves the last bits and UMAP amplifies them)
            raw = np.asarray(vectors if self.rows is None else vectors[self.rows], dtype=np.float32)
            coords, fitted = fit_map(raw, self.method, self.params, progress)
            if not np.allclose(coords, self.coords, atol=1e-4):
                # a map cached by other library versions: the refit one replaces it, so the
                # point and the dots share one frame (the page shows the new map on its next run)
                from .derived import save_derived

                folder, version, name = self.key
                save_derived(Path(folder), name, version, coords)
                self.coords = coords
            _keep_fitted(self.key, fitted)
        with _FITTED_LOCK:
            if self.method == "umap":
                point = fitted.transform(q)[0]
            else:  # openTSNE centres its map in place before optimising the new point: undo that
                new = np.asarray(fitted.transform(q))[0]
                point = new + (self.coords.mean(0) - np.asarray(fitted).mean(0))
        return float(point[0]), float(point[1])

    def to_dict(self) -> dict:
        return {"model": self.model, "method": self.method, "params": self.params, "centred": self.centred, "ids": self.ids,
                "x": self.coords[:, 0].round(5).tolist(), "y": self.coords[:, 1].round(5).tolist(),
                "seconds": round(self.seconds, 3), "total": self.total, "sampled": self.rows is not None}


def embedding_map(catalogue: StoreCatalogue, model: str, method: str = "pca", params: dict | None = None,
                  progress: Progress | None = None, centre: object = True) -> EmbeddingMap:
    """The model's map for the whole store, computed once per store version and parameters.
    ``centre`` (a yes/no value, :func:`cbir.centring.check_flag`): map the vectors centred on the
    collection's mean, as the default search sees them; False maps them as stored."""
    from .derived import derived_array, derived_name

    start = time.perf_counter()
    model, params, store, rows, name = _map_plan(catalogue, model, method, params, centre)
    vectors = (lambda: store.embeddings) if rows is None else (lambda: np.asarray(store.embeddings[rows]))
    key = (str(catalogue.store_folder(model)), store.version, derived_name(store, name))

    def build() -> np.ndarray:
        coords, fitted = fit_map(vectors(), method, params, progress)
        if fitted is not None:
            _keep_fitted(key, fitted)
        return coords

    coords, seconds = derived_array(store, catalogue.store_folder(model), name, build)
    ids = store.ids if rows is None else store.ids[rows]
    return EmbeddingMap(model, method, params, ids.tolist(), np.asarray(coords, dtype=np.float32), seconds,
                        time.perf_counter() - start, rows, len(store), key, store)


def _map_plan(catalogue: StoreCatalogue, model: str, method: str, params: dict | None, centre: object = True):
    """(model name, checked params, store or its centred view, sampled rows or None, cache name) of a map."""
    from .centring import check_flag
    from .extractors import get_spec

    model = get_spec(model).name
    params = check_params(method, params)
    store = catalogue.centred(model) if check_flag("centre", centre) else catalogue.store(model)
    map_method(method).check_points(len(store))  # before any work (a fit, a cache read)
    rows = map_rows(len(store))
    name = "map-" + "-".join([method, *(f"{k}{v:g}" for k, v in params.items()), *([f"sample{len(rows)}"] if rows is not None else [])])
    return model, params, store, rows, name


def map_cached(catalogue: StoreCatalogue, model: str, method: str = "pca", params: dict | None = None,
               centre: object = True) -> bool:
    """Whether :func:`embedding_map` would only read this map (no fit)."""
    from .derived import has_derived

    model, _, store, _, name = _map_plan(catalogue, model, method, params, centre)
    return has_derived(store, catalogue.store_folder(model), name)


def map_rows(n: int) -> np.ndarray | None:
    """The store rows a map shows: all (None) up to MAP_MAX_POINTS, else a seeded sample."""
    if n <= MAP_MAX_POINTS:
        return None
    return np.sort(np.random.default_rng(SEED).choice(n, MAP_MAX_POINTS, replace=False))
