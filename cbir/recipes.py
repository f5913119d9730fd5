"""Descriptor recipes: how a model's final feature maps become one vector per image.

A :class:`Recipe` is a pooling of the final convolutional feature map, over one or more
input scales (and the horizontally flipped image), then post-processing:

- **pooling**: average (what the stores hold today), max (MAC), generalised mean (GeM,
  ``p``) or R-MAC (max over a grid of regions at 3 scales, each L2-normalised, summed);
  Tolias, Sicre & Jégou, "Particular object retrieval with integral max-pooling of CNN
  activations", ICLR 2016; Radenović, Tolias & Chum, "Fine-tuning CNN image retrieval with no
  human annotation", TPAMI 2018 (GeM; R-MAC's region grid as in their
  ``cnnimageretrieval-pytorch``, MIT);
- **scales** and **flip**: the image squeezed to ``round(s * input size)`` pixels square for
  each scale ``s`` (and mirrored): each pooled vector L2-normalised, then averaged;
- **post-processing**, in this order: signed square root (power normalisation; Perronnin,
  Sánchez & Mensink ECCV 2010), L2, **centring** on the collection's mean vector, PCA to
  ``pca`` dimensions (Jégou & Chum, "Negative evidences and co-occurrences in image
  retrieval", ECCV 2012), L2. Centring and PCA are learned on the collection
  (:func:`fit_post`) and applied to queries alike (:func:`apply_post`).

Recipes are written ``pooling[,scales=A+B+...][,flip][,sqrt][,centre][,pca=D]`` (``gem3`` is
GeM with p = 3) or named by a preset of :data:`PRESETS`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np

from .errors import RequestError
from .lru import LRU

POOLINGS = ("avg", "mac", "gem", "rmac")
SQRT2 = math.sqrt(2.0)
#: The largest input scale (a 2x input costs 4x the extraction) and the most scales a recipe takes.
MAX_SCALE, MAX_SCALES = 2.0, 4
#: The most images a recipe is evaluated on: their descriptors are held in memory (100,000 x
#: 1280 float32 = 512 MB) and described now (Lite0: ~25 minutes per x1 of cost here).
RECIPE_MAX_IMAGES = 100_000
#: The most a recipe may cost, in passes of the model at its own size (:attr:`Recipe.cost`):
#: the category preset is 6; four scales of 2 with the flip would be 32.
RECIPE_MAX_COST = 8.0


@dataclass(frozen=True)
class Recipe:
    """How a descriptor is made; see the module docstring. ``scales`` are factors of the
    model's input size, sorted; ``pca`` None keeps every dimension."""

    pooling: str = "avg"
    p: float = 3.0
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    sqrt: bool = False
    centre: bool = False
    pca: int | None = None

    @property
    def name(self) -> str:
        """The recipe's spelling, read back by :func:`parse_recipe`."""
        parts = [f"gem{self.p:g}" if self.pooling == "gem" else self.pooling]
        if self.scales != (1.0,):
            parts.append("scales=" + "+".join(f"{s:.3g}" for s in self.scales))
        parts += [flag for flag, on in (("flip", self.flip), ("sqrt", self.sqrt), ("centre", self.centre)) if on]
        if self.pca:
            parts.append(f"pca={self.pca}")
        return ",".join(parts)

    @property
    def label(self) -> str:
        """A short label for model lists (``3-scale · flip · √ · centred``); "" for today's."""
        bits = [] if self.pooling == "avg" else [{"mac": "MAC", "gem": f"GeM p={self.p:g}", "rmac": "R-MAC"}[self.pooling]]
        if len(self.scales) > 1:
            bits.append(f"{len(self.scales)}-scale")
        elif self.scales != (1.0,):
            bits.append(f"scale {self.scales[0]:.3g}")
        bits += [word for word, on in (("flip", self.flip), ("√", self.sqrt), ("centred", self.centre)) if on]
        if self.pca:
            bits.append(f"PCA {self.pca}")
        return " · ".join(bits)

    @property
    def cost(self) -> float:
        """Extraction cost relative to one pass at the model's size: sum of squared scales,
        twice with the flip."""
        return sum(s * s for s in self.scales) * (2 if self.flip else 1)

    @property
    def learned(self) -> bool:
        """Whether the recipe learns something from the collection (centring, PCA)."""
        return self.centre or bool(self.pca)


#: Recipes a user picks without knowing the maths (costs: :attr:`Recipe.cost`).
PRESETS: dict[str, tuple[Recipe, str]] = {
    "today": (Recipe(), "average pooling of one pass, L2: what the stores hold"),
    "centred": (Recipe(centre=True), "today's, centred on the collection's mean: same extraction"),
    "category": (Recipe(scales=(1.0, SQRT2), flip=True, sqrt=True, centre=True),
                 "what Wang measures (same class): 2 scales, flip, signed sqrt, centred"),
    "near_duplicate": (Recipe(scales=(1 / SQRT2, 1.0, SQRT2), sqrt=True, centre=True),
                       "instance search (crops, rotations, re-encodings of one image): 3 scales, signed sqrt, centred"),
}


def parse_recipe(text: str | Recipe | None) -> Recipe:
    """A :class:`Recipe` from a preset's name or a spelling (see the module docstring); None:
    today's. Raises RequestError naming what is wrong."""
    if isinstance(text, Recipe):
        return text
    if text is None or not str(text).strip():
        return Recipe()
    spelled = str(text).strip().lower().replace("-", "_")
    if spelled in PRESETS:
        return PRESETS[spelled][0]
    head, *rest = [part.strip() for part in spelled.split(",")]
    recipe = _pooling(head, text)
    for part in rest:
        key, _, value = part.partition("=")
        if key in ("flip", "sqrt", "centre", "center") and not value:
            recipe = replace(recipe, **{"centre" if key == "center" else key: True})
        elif key == "scales" and value:
            recipe = replace(recipe, scales=_scales(value, text))
        elif key == "pca" and value.isascii() and value.isdigit() and 1 <= int(value) <= 100_000:
            recipe = replace(recipe, pca=int(value))
        else:
            raise RequestError(f"recipe {text!r}: {part!r} is not one of scales=A+B, flip, sqrt, centre, pca=D; "
                               f"or name a preset: {', '.join(PRESETS)}")
    if recipe.cost > RECIPE_MAX_COST:
        raise RequestError(f"recipe {text!r} costs {recipe.cost:g} passes of the model (the sum of the squared scales, twice "
                           f"with flip); the most is {RECIPE_MAX_COST:g}: use fewer or smaller scales")
    return recipe


def _pooling(head: str, text: str) -> Recipe:
    if head in ("avg", "mac", "rmac"):
        return Recipe(pooling=head)
    if head.startswith("gem"):
        try:
            p = float(head[3:] or 3)
        except ValueError:
            p = float("nan")
        if math.isfinite(p) and 1 <= p <= 20:
            return Recipe(pooling="gem", p=p)
        raise RequestError(f"recipe {text!r}: GeM's p is a number from 1 to 20, as in gem3")
    raise RequestError(f"recipe {text!r}: unknown pooling {head!r}; choose one of {', '.join(POOLINGS)} "
                       f"(gem takes p: gem3), or name a preset: {', '.join(PRESETS)}")


def _scales(value: str, text: str) -> tuple[float, ...]:
    try:
        scales = tuple(sorted({round(float(v), 4) for v in value.split("+")}))
    except ValueError:
        scales = ()
    if not scales or len(scales) > MAX_SCALES or not all(0.25 <= s <= MAX_SCALE for s in scales):
        raise RequestError(f"recipe {text!r}: scales are 1 to {MAX_SCALES} numbers from 0.25 to {MAX_SCALE:g} "
                           "joined by +, as in scales=0.707+1+1.414")
    return scales


# -- pooling ----------------------------------------------------------------------------------------
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


@dataclass
class PostState:
    """What a recipe learned from the collection: its ``mean`` (d,) and PCA ``components``
    (k, d), float32 (None when the recipe needs them not)."""

    mean: np.ndarray | None = None
    components: np.ndarray | None = field(default=None, repr=False)


def fit_post(descriptors: np.ndarray, recipe: Recipe) -> PostState:
    """Learn the recipe's centring mean and PCA basis from (n, d) descriptors (:func:`describe`'s)."""
    x = np.asarray(descriptors, dtype=np.float64)
    mean = x.mean(0) if recipe.centre or recipe.pca else None
    components = None
    if recipe.pca:
        k = min(recipe.pca, x.shape[0], x.shape[1])
        _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
        components = vt[:k].astype(np.float32)
    return PostState(None if mean is None else mean.astype(np.float32), components)


def apply_post(descriptors: np.ndarray, recipe: Recipe, state: PostState) -> np.ndarray:
    """(n, d) descriptors -> (n, d or pca) float32, centred and projected as learned, L2."""
    x = np.asarray(descriptors, dtype=np.float32)
    if state.mean is not None and (recipe.centre or recipe.pca):
        x = x - state.mean
    if state.components is not None:
        x = x @ state.components.T
    return l2(x)


def describe_paths(extractor, paths: Sequence, recipe: Recipe, batch_size: int = 16, max_pixels: int | None = None,
                   progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """:func:`describe` of image files in batches: ((n, c) float32, rows of unreadable files
    zero; [(path, reason)] of the files skipped)."""
    from .errors import ImageError
    from .images import open_image

    out, skipped, width = None, [], None
    for start in range(0, len(paths), batch_size):
        chunk, rows = [], []
        for row, path in enumerate(paths[start:start + batch_size], start):
            try:
                chunk.append(open_image(path) if max_pixels is None else open_image(path, max_pixels=max_pixels))
                rows.append(row)
            except ImageError as exc:
                skipped.append((str(path), str(exc)))
        if chunk:
            vectors = describe(extractor, chunk, recipe)
            if out is None:
                width = vectors.shape[1]
                out = np.zeros((len(paths), width), dtype=np.float32)
            out[rows] = vectors
        if progress:
            progress(min(start + batch_size, len(paths)), len(paths))
    return (np.zeros((len(paths), width or 0), dtype=np.float32) if out is None else out), skipped


def check_recipe_run(models: Sequence[str], metric: str) -> None:
    """A recipe is evaluated one model at a time, with cosine or Euclidean distance (its
    descriptors are L2-normalised and may be centred: not histograms). Raises RequestError."""
    from .distances import normalise_metric
    from .extractors import FAMILIES, get_spec

    if len(models) != 1:
        raise RequestError("a recipe is evaluated one model at a time: give one model")
    spec = get_spec(models[0])
    if not FAMILIES[spec.family].extracts:
        raise RequestError(f"{spec.name} holds features computed elsewhere: a recipe describes the images anew, which this "
                           "server cannot do for it; choose a model it extracts")
    if normalise_metric(metric) not in ("cosine", "euclidean"):
        raise RequestError(f"a recipe's descriptors are L2-normalised and may be centred, not histograms: evaluate them "
                           f"with cosine or euclidean, not {metric}")


#: Recipe evaluations kept per process (each holds per-query APs only): an API client or a
#: second CLI ``--compare`` asking again does not describe the collection again.
_EVALUATED: LRU[tuple, object] = LRU(8)


def evaluate_recipe(catalogue, model: str, recipe: Recipe, progress: Callable[[int, int], None] | None = None,
                    ties: str = "stable", metric: str = "cosine", queries: int | None = None, seed: int = 0):
    """Every labelled image of ``catalogue``'s collection described by ``model`` under
    ``recipe`` (extracted now, with ``progress``), then evaluated as ``cbir evaluate`` does:
    each image (or a seeded sample of ``queries`` of them, drawn as ``cbir evaluate`` draws
    it) a query against the rest. Returns the :class:`~cbir.evaluation.EvaluationReport`,
    named ``model · recipe``; kept per collection files, model, recipe and parameters (a
    repeat is free). Raises WeightsUnavailableError when the model's weights are not here
    (never downloads them), CollectionError for a collection without labels, WorkLimitError
    over :data:`RECIPE_MAX_IMAGES`, and RequestError as :func:`check_recipe_run` does."""
    import hashlib

    from .errors import CollectionError, WeightsUnavailableError, WorkLimitError
    from .extractors import can_extract, get_spec

    check_recipe_run([model], metric)
    collection = catalogue.collection
    if not collection.has_labels:
        raise CollectionError(f"collection {collection.name!r} has no labels to evaluate a recipe against")
    spec = get_spec(model)
    ok, why = can_extract(spec.name)
    if not ok:
        raise WeightsUnavailableError(why)
    ids = [i for i in collection.ids if collection.label_of(i) is not None]
    if len(ids) > RECIPE_MAX_IMAGES:
        raise WorkLimitError(f"a recipe is evaluated on at most {RECIPE_MAX_IMAGES:,} images (their descriptors are held in "
                             f"memory and extracted now); this collection has {len(ids):,} labelled images")
    files = hashlib.blake2b("\n".join(collection.signatures()).encode(), digest_size=16).hexdigest()
    key = (collection.name, collection.labels_digest, files, spec.name, recipe.name, metric, ties, queries, seed)
    return _EVALUATED.get_or_build(key, lambda: _evaluate_recipe(catalogue, spec.name, recipe, ids, progress, ties, metric,
                                                                 queries, seed))


def _evaluate_recipe(catalogue, model: str, recipe: Recipe, ids: list[str], progress, ties: str, metric: str,
                     queries: int | None, seed: int):
    from .evaluation import evaluate_distances, merge_reports
    from .experiments import EVAL_CHUNK
    from .index.exact import ExactIndex

    t0 = time.perf_counter()
    collection = catalogue.collection
    vectors, skipped = describe_paths(catalogue.extractor(model), [collection.path_of(i) for i in ids], recipe,
                                      max_pixels=catalogue.settings.max_image_pixels, progress=progress)
    bad = {p for p, _ in skipped}
    keep = [k for k, i in enumerate(ids) if str(collection.path_of(i)) not in bad]
    ids, vectors = [ids[k] for k in keep], vectors[keep]
    vectors = apply_post(vectors, recipe, fit_post(vectors, recipe))
    labels = [collection.label_of(i) for i in ids]
    n = len(ids)
    sample = np.arange(n) if not queries or queries >= n else np.sort(np.random.default_rng(seed).choice(n, queries, replace=False))
    index, chunks = ExactIndex(vectors, metric), []
    for start in range(0, sample.size, EVAL_CHUNK):
        rows = sample[start:start + EVAL_CHUNK]
        d = index.distances(vectors[rows]).astype(np.float64)
        d[np.arange(rows.size), rows] = np.inf
        chunks.append(evaluate_distances(d, labels, rows, ties=ties))
    name = f"{model} · {recipe.label or 'today'}"
    if sample.size < n:
        name += f" ({sample.size} of {n} queries, seeded sample, seed {seed})"
    report = merge_reports(chunks, [labels[r] for r in sample], name, metric)
    report.seconds, report.collection = time.perf_counter() - t0, collection.name
    report.query_ids = [ids[r] for r in sample]
    return report
