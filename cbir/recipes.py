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

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .errors import RequestError
from .descriptors import RecipeExtractor, describe, l2, pool, rmac, rmac_regions
from .lru import LRU
from .recipe_presets import MAX_SCALE, MAX_SCALES, POOLINGS, PRESETS, RECIPE_MAX_COST, SQRT2, STORED_RECIPES, Recipe, parse_recipe

#: cbir.recipes is where recipes are used from: the names of cbir.recipe_presets and cbir.descriptors are here too
__all__ = ["MAX_SCALE", "MAX_SCALES", "POOLINGS", "PRESETS", "RECIPE_MAX_COST", "RECIPE_MAX_IMAGES", "SQRT2", "STORED_RECIPES",
           "PostState", "Recipe", "RecipeExtractor", "apply_post", "check_recipe_run", "describe", "describe_paths",
           "evaluate_recipe", "fit_post", "l2", "parse_recipe", "pool", "rmac", "rmac_regions"]

#: The most images a recipe is evaluated on: their descriptors are held in memory (100,000 x
#: 1280 float32 = 512 MB) and described now (Lite0: ~25 minutes per x1 of cost here).
RECIPE_MAX_IMAGES = 100_000


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


def check_recipe_run(models: Sequence[str], metric: str, reranked: bool = False, backend: str | None = None,
                     centre: object = True) -> None:
    """A recipe is evaluated one model at a time (a model this server extracts, not a stored
    recipe), with cosine or Euclidean distance (its descriptors are L2-normalised and may be
    centred: not histograms), on the exact index without re-ranking; whether it centres is said by
    the recipe itself (``,centre``), not by ``centre``. Raises RequestError."""
    from .centring import check_flag

    if not check_flag("centre", centre):
        raise RequestError("a recipe says itself whether it centres (',centre' in its spelling; the presets centred, "
                           "category and near_duplicate do): leave out --no-centre / \"centre\": false")
    if reranked or backend not in (None, "exact", "auto"):
        raise RequestError("a recipe is evaluated on the exact index without re-ranking; leave out --rerank and --backend "
                           "(\"rerank\" and \"backend\" in the API)")
    from .distances import normalise_metric
    from .extractors import FAMILIES, get_spec

    if len(models) != 1:
        raise RequestError("a recipe is evaluated one model at a time: give one model")
    spec = get_spec(models[0])
    if not FAMILIES[spec.family].extracts:
        raise RequestError(f"{spec.name} holds features computed elsewhere: a recipe describes the images anew, which this "
                           "server cannot do for it; choose a model it extracts")
    if spec.recipe:
        raise RequestError(f"{spec.name} is {spec.base} under the {spec.recipe} recipe already: evaluate it as a model "
                           f"(without a recipe), or give {spec.base} with the recipe")
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
    key = (collection.name, collection.labels_digest, collection.files_digest(), spec.name, recipe.name, metric, ties, queries, seed)
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
    report.centred = recipe.centre  # said by the recipe
    return report
