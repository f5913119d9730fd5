"""2-D maps of one model's features over a whole collection, for looking at what a model
sees: PCA (instant, the default), UMAP (``umap-learn``) and t-SNE (``openTSNE``).

Features are L2-normalised first (the cosine geometry every search uses). A map is cached
beside the store as a derived array keyed by the store version, the method and its
parameters, so a second view only reads it. A new point (an uploaded query) is placed,
not recomputed: PCA projects it exactly; UMAP and t-SNE put it at the similarity-weighted
mean position of its 10 nearest stored neighbours, the initialisation openTSNE itself
uses for new points. A store of more than MAP_MAX_POINTS images is mapped through a seeded
random sample of that many (said wherever the map is shown).
"""

from __future__ import annotations

import importlib.util
import io
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from .distances import l2_normalise
from .errors import CBIRError, unknown

if TYPE_CHECKING:
    from .engine import Engine

MAP_LABELS = {"pca": "PCA", "umap": "UMAP", "tsne": "t-SNE"}
MAP_METHODS = tuple(MAP_LABELS)
#: method -> parameter -> (default, low, high)
MAP_PARAMS: dict[str, dict[str, tuple[float, float, float]]] = {
    "pca": {},
    "umap": {"n_neighbors": (15, 2, 200), "min_dist": (0.1, 0.0, 1.0)},
    "tsne": {"perplexity": (30, 2, 100)},
}
_PACKAGES = {"umap": "umap", "tsne": "openTSNE"}
_PLACE_K = 10
#: a larger store is mapped through a seeded random sample of this many images (a scatter of
#: more points is unreadable and unresponsive in a browser; UMAP and t-SNE would take hours)
MAP_MAX_POINTS = 20_000
#: above this many images a map's hover shows id and label without the thumbnail (about 2 KB each)
MAP_THUMBNAILS_MAX = 5_000
SEED = 0

Progress = Callable[[int, int], None]


def map_status() -> dict[str, tuple[bool, str]]:
    """method -> (can run here, why not)."""
    out = {"pca": (True, "numpy")}
    for method, package in _PACKAGES.items():
        ok = importlib.util.find_spec(package) is not None
        out[method] = (ok, package if ok else f"`pip install {'umap-learn' if method == 'umap' else 'openTSNE'}`")
    return out


def check_params(method: str, params: dict | None) -> dict:
    """The method's parameters, defaults filled in, each within its bounds."""
    if method not in MAP_METHODS:
        raise unknown("map method", method, MAP_METHODS)
    ok, why = map_status()[method]
    if not ok:
        raise CBIRError(f"{MAP_LABELS[method]} is not installed here: {why}")
    out = {}
    for name, (default, low, high) in MAP_PARAMS[method].items():
        value = float((params or {}).get(name, default))
        if not low <= value <= high:
            raise CBIRError(f"{MAP_LABELS[method]} {name} must be between {low:g} and {high:g}, got {value:g}")
        out[name] = int(value) if isinstance(default, int) else value
    extra = set(params or {}) - set(out)
    if extra:
        raise CBIRError(f"{MAP_LABELS[method]} takes {', '.join(out) or 'no parameters'}; not {', '.join(sorted(extra))}")
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


def _umap(x: np.ndarray, n_neighbors: int, min_dist: float, progress: Progress | None = None) -> np.ndarray:
    import umap

    bar = {"disable": False, "file": _EpochSink(progress), "desc": "Epochs completed", "bar_format": "{desc}|{n}/{total}",
           "mininterval": 0.2}
    return umap.UMAP(n_neighbors=min(n_neighbors, len(x) - 1), min_dist=min_dist, metric="cosine", random_state=SEED,
                     n_jobs=1, tqdm_kwds=bar).fit_transform(x)


def _tsne(x: np.ndarray, perplexity: float, progress: Progress | None) -> np.ndarray:
    from openTSNE import TSNE

    total = 750  # openTSNE's early exaggeration (250) + optimisation (500) iterations
    done = [0]

    def tick(iteration, error, embedding):
        done[0] += 50
        if progress:
            progress(min(done[0], total), total)

    return np.asarray(TSNE(perplexity=min(perplexity, (len(x) - 1) / 3), metric="cosine", random_state=SEED, n_jobs=1,
                           callbacks=tick, callbacks_every_iters=50).fit(x))


def compute_map(vectors: np.ndarray, method: str, params: dict, progress: Progress | None = None) -> np.ndarray:
    """(n, 2) float32 coordinates of the L2-normalised ``vectors``."""
    if len(vectors) < 3:
        raise CBIRError("a map needs at least 3 indexed images")
    x = l2_normalise(np.asarray(vectors, dtype=np.float32))
    if method == "pca":
        out = _pca(x)
    elif method == "umap":
        out = _umap(x, **params, progress=progress)
    else:
        out = _tsne(x, params["perplexity"], progress)
    if progress:
        progress(1, 1)
    return np.asarray(out, dtype=np.float32)


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

    def place(self, vectors: np.ndarray, query: np.ndarray) -> tuple[float, float]:
        """Where a new vector goes on this map (``vectors``: the whole store's)."""
        x = l2_normalise(np.asarray(vectors if self.rows is None else vectors[self.rows], dtype=np.float32))
        q = l2_normalise(np.asarray(query, dtype=np.float32)[None, :])[0]
        if self.method == "pca":
            # the map's own axes, no second SVD: coords[:, k] = (x - mean) v_k = u_k s_k, so
            # (x - mean)^T coords[:, k] = v_k s_k^2 and ||coords[:, k]||^2 = s_k^2 (signs included)
            mean = x.mean(0)
            axes = ((x - mean).T @ self.coords) / np.maximum((self.coords ** 2).sum(0), 1e-12)
            point = (q - mean) @ axes
            return float(point[0]), float(point[1])
        sims = x @ q
        near = np.argsort(-sims)[:_PLACE_K]
        w = np.clip(sims[near], 0.0, None) + 1e-6
        return tuple(float(v) for v in (w[:, None] * self.coords[near]).sum(0) / w.sum())

    def to_dict(self) -> dict:
        return {"model": self.model, "method": self.method, "params": self.params, "ids": self.ids,
                "x": self.coords[:, 0].round(5).tolist(), "y": self.coords[:, 1].round(5).tolist(),
                "seconds": round(self.seconds, 3), "total": self.total, "sampled": self.rows is not None}


def embedding_map(engine: Engine, model: str, method: str = "pca", params: dict | None = None,
                  progress: Progress | None = None) -> EmbeddingMap:
    """The model's map for the whole store, computed once per store version and parameters."""
    from .extractors import get_spec
    from .store import derived_array

    model = get_spec(model).name
    params = check_params(method, params)
    store = engine.store(model)
    rows = map_rows(len(store))
    name = "map-" + "-".join([method, *(f"{k}{v:g}" for k, v in params.items()), *([f"sample{len(rows)}"] if rows is not None else [])])
    start = time.perf_counter()
    vectors = (lambda: store.embeddings) if rows is None else (lambda: np.asarray(store.embeddings[rows]))
    coords, seconds = derived_array(store, engine.store_folder(model), name, lambda: compute_map(vectors(), method, params, progress))
    ids = store.ids if rows is None else store.ids[rows]
    return EmbeddingMap(model, method, params, ids.tolist(), np.asarray(coords, dtype=np.float32), seconds,
                        time.perf_counter() - start, rows, len(store))


def map_rows(n: int) -> np.ndarray | None:
    """The store rows a map shows: all (None) up to MAP_MAX_POINTS, else a seeded sample."""
    if n <= MAP_MAX_POINTS:
        return None
    return np.sort(np.random.default_rng(SEED).choice(n, MAP_MAX_POINTS, replace=False))
