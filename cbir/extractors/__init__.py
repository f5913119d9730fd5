"""Feature extractors. The registry (:mod:`.registry`: model name -> spec, families,
availability) is pure data; :mod:`.builders` builds a model from it, importing the
implementations (:mod:`.keras_apps`, :mod:`.efficientnet_lite`) and Keras only when a
model is built, so ``import cbir`` stays light. The public names are gathered here."""

from .base import Extractor
from .builders import BUILDERS, build_extractor
from .keras_runtime import ensure_keras_home, quiet_tensorflow_import
from .registry import (
    BUNDLED,
    DEFAULT_PREFERENCE,
    FAMILIES,
    IMPORTED,
    MODELS,
    RECIPE_SEP,
    Family,
    ModelSpec,
    available_models,
    bundled_weights_path,
    can_extract,
    default_model,
    get_spec,
    keras_models_dir,
    model_status,
    name_of,
    normalise_weights,
    weights_help,
)

__all__ = [
    "BUILDERS", "BUNDLED", "DEFAULT_PREFERENCE", "FAMILIES", "IMPORTED", "MODELS", "RECIPE_SEP", "Extractor", "Family", "ModelSpec",
    "available_models", "build_extractor", "bundled_weights_path", "can_extract", "default_model", "ensure_keras_home",
    "get_spec", "keras_models_dir", "model_status", "name_of", "normalise_weights", "quiet_tensorflow_import", "weights_help",
]
