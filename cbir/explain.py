"""Why did this match? Where a query and a result agree, from the model's final feature maps.

A model here describes an image by the global average of its last convolutional feature map
``F`` (h x w locations of c channels). The cosine similarity of two such descriptors
decomposes exactly over pairs of locations (Stylianou, Souvenir & Pless, "Visualizing Deep
Similarity Networks", WACV 2019)::

    cos(mean_i f_i, mean_j g_j) = mean_ij  <f_i, g_j> / (|mean f| |mean g|)  =  mean_ij M_ij

``M`` (hq*wq x hr*wr) says how much each pair of locations adds to the similarity; its row
means are the query's map (each query location against the whole result), its column means
the result's map, and both maps average to the cosine similarity itself. The best pairs are
the largest entries of ``M`` with no location used twice. The maps explain the cosine
similarity of the pooled descriptors whatever metric the search used (Euclidean distance on
L2-normalised vectors ranks as cosine does; chi-square and Bhattacharyya do not decompose
this way, and the maps then show the cosine view of the same features).

Centred search (:mod:`cbir.centring`, the default) compares ``c(x) = L2(x / |x| - m)``. It
decomposes the same way once each location is rescaled and the mean taken off it,
``f'_i = f_i / |mean f| - m``, since ``mean_i f'_i = x / |x| - m``: the maps then explain the
centred similarity the search ranked by, exactly.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

#: The longest side of each image in the rendered pair (pixels).
RENDER_SIDE = 480
#: How many best-matching location pairs an explanation lists.
TOP_PAIRS = 5


@dataclass(frozen=True)
class Explanation:
    """The similarity of a query and a result, spread over their feature-map locations.

    ``query_map`` (hq, wq) and ``result_map`` (hr, wr) float32: each location's share of the
    cosine similarity (dimensionless; each map's mean is ``similarity``). ``pairs``: the best
    location pairs, ``((qy, qx), (ry, rx), term)``, largest term ``M_ij`` first (the similarity
    is the mean of all hq*wq*hr*wr terms), grid coordinates (row, column) of the maps. ``seconds``: feature maps and decomposition, wall clock.
    ``centred``: whether the similarity is that of vectors centred on the collection's mean."""

    model: str
    similarity: float
    query_map: np.ndarray
    result_map: np.ndarray
    pairs: list[tuple[tuple[int, int], tuple[int, int], float]]
    seconds: float
    centred: bool = False

    def to_dict(self) -> dict:
        """JSON-ready: the maps as nested lists (row-major), rounded to 5 decimals."""
        return {
            "model": self.model,
            "similarity": round(float(self.similarity), 6),
            "centred": self.centred,
            "grid": {"query": list(self.query_map.shape), "result": list(self.result_map.shape)},
            "query_map": np.round(self.query_map.astype(float), 5).tolist(),
            "result_map": np.round(self.result_map.astype(float), 5).tolist(),
            "pairs": [{"query": list(q), "result": list(r), "term": round(float(c), 6)} for q, r, c in self.pairs],
            "seconds": round(self.seconds, 4),
        }


def _locations(maps: np.ndarray, mean: np.ndarray | None) -> np.ndarray:
    """(h, w, c) maps -> (h*w, c) float64 location vectors; with a ``mean`` (c,), each rescaled by
    the pooled vector's length and the mean subtracted (their mean is then ``x / |x| - m``)."""
    f = maps.reshape(-1, maps.shape[-1]).astype(np.float64)
    if mean is None:
        return f
    return f / max(float(np.linalg.norm(f.mean(0))), 1e-12) - np.asarray(mean, dtype=np.float64)


def decompose(query_maps: np.ndarray, result_maps: np.ndarray, top: int = TOP_PAIRS,
              mean: np.ndarray | None = None) -> tuple[float, np.ndarray, np.ndarray, list]:
    """Split the cosine similarity of two globally average-pooled feature maps over their locations.

    ``query_maps`` (hq, wq, c) and ``result_maps`` (hr, wr, c), float32; ``mean``: (c,) the
    collection's mean unit vector for the centred similarity (None: raw). Returns
    ``(similarity, query_map (hq, wq), result_map (hr, wr), pairs)`` as described in the
    module docstring; ``pairs`` holds at most ``top`` location pairs, no location twice.
    A map of zeros (a blank image through ReLU) gives similarity 0 and zero maps."""
    hq, wq, c = query_maps.shape
    hr, wr, c2 = result_maps.shape
    if c != c2:
        raise ValueError(f"the two feature maps have {c} and {c2} channels")
    if mean is not None and np.shape(mean) != (c,):
        raise ValueError(f"the mean has shape {np.shape(mean)}; the feature maps have {c} channels")
    f, g = _locations(query_maps, mean), _locations(result_maps, mean)
    norm = float(np.linalg.norm(f.mean(0)) * np.linalg.norm(g.mean(0)))
    m = f @ g.T / norm if norm > 0 else np.zeros((len(f), len(g)))
    pairs: list = []
    flat = np.argsort(m, axis=None)[::-1]
    used_q: set[int] = set()
    used_r: set[int] = set()
    for k in flat:
        i, j = divmod(int(k), m.shape[1])
        if i in used_q or j in used_r:
            continue
        used_q.add(i)
        used_r.add(j)
        pairs.append((divmod(i, wq), divmod(j, wr), float(m[i, j])))
        if len(pairs) == top:
            break
    return (float(m.mean()), m.mean(1).reshape(hq, wq).astype(np.float32), m.mean(0).reshape(hr, wr).astype(np.float32), pairs)


def explain_images(extractor, query: Image.Image, result: Image.Image, top: int = TOP_PAIRS,
                   mean: np.ndarray | None = None) -> Explanation:
    """The :class:`Explanation` of two RGB images under ``extractor`` (one batch of two through
    the model up to its pooling), centred on ``mean`` (c,) when given. Raises
    :class:`~cbir.errors.CBIRError` for a model without feature maps."""
    from .images import resize_rgb

    t0 = time.perf_counter()
    size = extractor.input_size
    maps = extractor.feature_maps(np.stack([resize_rgb(query, size), resize_rgb(result, size)]))
    similarity, qmap, rmap, pairs = decompose(maps[0], maps[1], top, mean)
    return Explanation(extractor.name, similarity, qmap, rmap, pairs, time.perf_counter() - t0, mean is not None)


def explain_query(collection, spec, extractor: Callable[[], object], query, result_id: str, max_pixels: int,
                  top: int = TOP_PAIRS, mean: np.ndarray | None = None) -> tuple[Explanation, Image.Image, Image.Image]:
    """Why collection image ``result_id`` matched ``query`` (a :class:`cbir.request.Query`: a
    collection id or an upload's bytes or (h, w[, c]) uint8 array), under the model of registry
    entry ``spec`` (``extractor()`` builds or returns it; it needs the model, not its store;
    ``mean``: the store's centring mean, for the centred similarity).
    Returns the :class:`Explanation` and the two decoded RGB images (for :func:`render`).
    Raises RequestError for a model of imported features (no feature maps here),
    UnknownImageError for an unknown id, ImageError for an unreadable upload, and
    WeightsUnavailableError when the model cannot be built."""
    from .errors import RequestError, WeightsUnavailableError
    from .extractors import FAMILIES, can_extract
    from .images import image_from_array, open_image

    if not FAMILIES[spec.family].extracts:
        raise RequestError(f"{spec.name} holds features computed elsewhere: this server has no feature maps of it to "
                           "explain a match with; choose a model it extracts")
    if spec.recipe:  # MODEL~PRESET: pooled over several scales, no one map to split
        raise RequestError(f"{spec.label} pools over several scales: its descriptor does not split over one feature map's "
                           f"locations; explain the match with {spec.base}, the same network")
    ok, why = can_extract(spec.name)  # its weights here: never a download on a request
    if not ok:
        raise WeightsUnavailableError(why)
    result_path = collection.path_of(result_id)  # an unknown id: before any decoding
    if query.image_id is not None:
        query_image = open_image(collection.path_of(query.image_id), max_pixels=max_pixels)
    elif isinstance(query.image, np.ndarray):
        query_image = image_from_array(query.image)
    else:
        query_image = open_image(query.image, max_pixels=max_pixels)
    result_image = open_image(result_path, max_pixels=max_pixels)
    return explain_images(extractor(), query_image, result_image, top, mean), query_image, result_image


# -- pictures -------------------------------------------------------------------------------------
def _shown(img: Image.Image, side: int = RENDER_SIDE) -> Image.Image:
    shown = img.copy()
    shown.thumbnail((side, side), Image.BILINEAR)
    return shown


def overlay(img: Image.Image, heat: np.ndarray, low: float, high: float, alpha: float = 0.55, cmap: str = "inferno") -> Image.Image:
    """``img`` with ``heat`` (h, w) upsampled bilinearly to its size and blended over it in
    colour map ``cmap`` (matplotlib), ``low`` and ``high`` the colour scale's ends. The model
    saw the image squeezed to a square, so the grid stretches over the whole picture."""
    from matplotlib import colormaps

    span = high - low if high > low else 1.0
    scaled = np.clip((heat.astype(np.float32) - low) / span, 0, 1)
    up = np.asarray(Image.fromarray(scaled, mode="F").resize(img.size, Image.BILINEAR))
    colour = (colormaps[cmap](up)[..., :3] * 255).astype(np.uint8)
    return Image.blend(img.convert("RGB"), Image.fromarray(colour), alpha)


def _centre(cell: tuple[int, int], grid: tuple[int, int], size: tuple[int, int], dx: int = 0) -> tuple[float, float]:
    (y, x), (h, w), (width, height) = cell, grid, size
    return dx + (x + 0.5) * width / w, (y + 0.5) * height / h


def render(explanation: Explanation, query: Image.Image, result: Image.Image, gap: int = 16) -> Image.Image:
    """The pair side by side, each with its map overlaid on one colour scale (so the two are
    comparable), and the best location pairs joined by numbered lines."""
    q, r = _shown(query), _shown(result)
    low = float(min(explanation.query_map.min(), explanation.result_map.min()))
    high = float(max(explanation.query_map.max(), explanation.result_map.max()))
    height = max(q.height, r.height)
    canvas = Image.new("RGB", (q.width + gap + r.width, height), "white")
    canvas.paste(overlay(q, explanation.query_map, low, high), (0, 0))
    canvas.paste(overlay(r, explanation.result_map, low, high), (q.width + gap, 0))
    draw = ImageDraw.Draw(canvas)
    ends = [(_centre(qc, explanation.query_map.shape, q.size), _centre(rc, explanation.result_map.shape, r.size, q.width + gap))
            for qc, rc, _ in explanation.pairs]
    for a, b in ends:  # every line first, then every marker: a later line never hides an earlier number
        draw.line([a, b], fill=(56, 189, 248), width=2)
    for n, (a, b) in enumerate(ends, 1):
        for x, y in (a, b):
            x, y = min(max(x, 7), canvas.width - 8), min(max(y, 7), canvas.height - 8)  # inside a thin picture too
            draw.ellipse([x - 7, y - 7, x + 7, y + 7], fill=(255, 255, 255), outline=(2, 132, 199), width=2)
            draw.text((x - 3, y - 6), str(n), fill=(12, 74, 110))
    return canvas


def png(img: Image.Image) -> bytes:
    """``img`` as PNG bytes."""
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=False)
    return out.getvalue()
