"""From a registry spec to a built :class:`~cbir.extractors.base.Extractor`: the one place
that imports the implementations (lazily: Keras is imported only when a model is built)."""

from __future__ import annotations

from typing import Callable

from ..errors import WeightsUnavailableError
from .base import Extractor
from .keras_runtime import ensure_keras_home
from .registry import ModelSpec, get_spec, normalise_weights, weights_help


def _build_keras(spec: ModelSpec, weights: str) -> Extractor:
    ensure_keras_home()
    from .keras_apps import build_keras_app  # imports Keras: only when a model is built

    return build_keras_app(spec, weights)


def _build_bundled(spec: ModelSpec, weights: str) -> Extractor:
    ensure_keras_home()
    from .efficientnet_lite import build_efficientnet_lite

    return build_efficientnet_lite(spec, weights)


def _build_imported(spec: ModelSpec, weights: str) -> Extractor:
    raise WeightsUnavailableError(weights_help(spec))  # says it has no extractor here


#: model family -> builder (spec, normalised weights) -> Extractor
BUILDERS: dict[str, Callable[[ModelSpec, str], Extractor]] = {
    "keras": _build_keras,
    "efficientnet_lite": _build_bundled,
    "imported": _build_imported,
}


def build_extractor(name: str, weights: str | None = "imagenet") -> Extractor:
    """Build model ``name`` (imports Keras) with ``weights`` (``imagenet``, ``none`` or a
    file's path); ``MODEL~PRESET`` gives a :class:`cbir.recipes.RecipeExtractor`. Raises UnknownNameError for an unknown model and WeightsUnavailableError
    naming the missing file (or saying an imported model has no extractor)."""
    spec = get_spec(name)
    weights = normalise_weights(weights)
    if spec.recipe:  # MODEL~PRESET: the model's own network, describing under the recipe
        from ..descriptors import RecipeExtractor
        from ..recipe_presets import PRESETS

        return RecipeExtractor(spec, build_extractor(spec.base, weights), PRESETS[spec.recipe][0].extraction)
    return BUILDERS[spec.family](spec, weights)
