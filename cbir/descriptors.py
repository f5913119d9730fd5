"""How a descriptor is made from a model's final feature maps under a :class:`~cbir.recipe_presets.Recipe`:
the poolings (average, MAC, GeM, R-MAC), :func:`describe` (scales, flip, signed sqrt, L2) and the
:class:`RecipeExtractor` a stored recipe (``MODEL~PRESET``) indexes and searches with. The maths
only: no model registry, no store (what evaluates a recipe on a collection is :mod:`cbir.recipes`).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .errors import RequestError
from .extractors.base import Extractor
from .recipe_presets import POOLINGS, Recipe


def pool(maps: np.ndarray, pooling: str = "avg", p: float = 3.0) -> np.ndarray:
    """(b, h, w, c) non-negative feature maps -> (b, c) float32 pooled vectors (not normalised)."""
    x = np.asarray(maps, dtype=np.float32)
    if pooling == "avg":
        return x.mean(axis=(1, 2))
    if pooling == "mac":
        return x.max(axis=(1, 2))
    if pooling == "gem":
        return np.power(np.power(np.clip(x, 1e-6, None), p).mean(axis=(1, 2)), 1.0 / p)
    if pooling == "rmac":
        return rmac(x)
    raise RequestError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")


def rmac_regions(h: int, w: int, levels: int = 3, overlap: float = 0.4) -> list[tuple[int, int, int]]:
    """R-MAC's square regions ``(top, left, side)`` on an h x w map (Tolias et al. 2016, as
    cnnimageretrieval-pytorch's ``rmac``): the whole map, then at each level l = 1..levels
    squares of side floor(2 min(h, w) / (l + 1)), spread with about ``overlap`` overlap."""
    side_min = min(h, w)
    steps = np.arange(2, 8)
    b = (max(h, w) - side_min) / (steps - 1)
    extra = int(np.argmin(np.abs((side_min ** 2 - side_min * b) / side_min ** 2 - overlap))) + 1 if h != w else 0
    extra_w, extra_h = (extra, 0) if w > h else (0, extra)
    regions = [(0, 0, -1)]  # -1: the whole map (MAC)
    for level in range(1, levels + 1):
        side = int(2 * side_min // (level + 1))
        if side == 0:
            continue
        half = math.floor(side / 2 - 1)
        def starts(length: int, extra_n: int) -> list[int]:
            n = level + extra_n
            step = (length - side) / (n - 1) if n > 1 else 0
            return [int(math.floor(half + k * step) - half) for k in range(n)]
        regions += [(top, left, side) for top in starts(h, extra_h) for left in starts(w, extra_w)]
    return regions


def rmac(maps: np.ndarray, levels: int = 3) -> np.ndarray:
    """(b, h, w, c) -> (b, c) float32: the sum of the L2-normalised max over each of
    :func:`rmac_regions` (not normalised itself)."""
    x = np.asarray(maps, dtype=np.float32)
    out = np.zeros((x.shape[0], x.shape[3]), dtype=np.float32)
    for top, left, side in rmac_regions(x.shape[1], x.shape[2], levels):
        region = x if side < 0 else x[:, top:top + side, left:left + side, :]
        out += l2(region.max(axis=(1, 2)))
    return out


def l2(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero), float32."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


# -- descriptors ------------------------------------------------------------------------------------
def describe(extractor, images: Sequence, recipe: Recipe) -> np.ndarray:
    """(len(images), c) float32 descriptors before the learned post-processing: pooled at each
    scale (and flipped), each L2-normalised, averaged, signed square root, L2. ``images``: RGB
    PIL images (squeezed to each scale's square size, as the stores' extraction does)."""
    from .images import resize_rgb

    total = None
    for scale in recipe.scales:
        size = max(32, int(round(scale * extractor.input_size)))
        batch = np.stack([resize_rgb(img, size) for img in images])
        for flipped in ((False, True) if recipe.flip else (False,)):
            maps = extractor.feature_maps(batch[:, :, ::-1] if flipped else batch)
            part = l2(pool(maps, recipe.pooling, recipe.p))
            total = part if total is None else total + part
    if recipe.sqrt:
        total = np.sign(total) * np.sqrt(np.abs(total))
    return l2(total)


class RecipeExtractor(Extractor):
    """A model under a stored recipe (``MODEL~PRESET``, :func:`cbir.extractors.registry.recipe_spec`),
    with the extractor interface indexing and uploads use: ``features`` of a (b, s, s, 3) uint8
    batch at ``input_size`` (the largest scale; each smaller scale is resized from it) is
    :func:`describe` of it, (b, dim) float32, L2-normalised. ``base``: the model's own
    :class:`~cbir.extractors.base.Extractor`; ``recipe``: the extraction part of the preset."""

    def __init__(self, spec, base: Extractor, recipe: Recipe):
        super().__init__(spec, base.weights, base.model, lambda x: x)
        self.base, self.recipe = base, recipe

    def features(self, batch_uint8: np.ndarray) -> np.ndarray:
        from PIL import Image

        images = [Image.fromarray(np.ascontiguousarray(a, dtype=np.uint8)) for a in np.asarray(batch_uint8)]
        return describe(self.base, images, self.recipe) if images else np.zeros((0, self.spec.dim), dtype=np.float32)

    def feature_maps(self, batch_uint8: np.ndarray) -> np.ndarray:
        raise RequestError(f"{self.spec.label} pools over several scales: its descriptor does not split over one feature "
                           f"map's locations; explain the match with {self.spec.base}, the same network")
