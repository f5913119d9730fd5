"""VGG16, ResNet50 and MobileNet from keras.applications (include_top=False, pooling='avg')."""

from __future__ import annotations

import importlib

from ..errors import WeightsUnavailableError
from .base import Extractor
from .registry import ModelSpec, keras_models_dir, weights_help


def build_keras_app(spec: ModelSpec, weights: str) -> Extractor:
    import keras

    constructor = getattr(keras.applications, spec.source)
    module = importlib.import_module(f"keras.applications.{spec.preprocess_module}")
    preprocess = module.preprocess_input
    kwargs = dict(include_top=False, pooling="avg", input_shape=(spec.input_size, spec.input_size, 3))
    if weights == "imagenet":
        keras_models_dir().mkdir(parents=True, exist_ok=True)
        try:
            model = constructor(weights="imagenet", **kwargs)
        except Exception as exc:  # download refused or no network
            raise WeightsUnavailableError(f"{weights_help(spec)} (download failed: {type(exc).__name__})") from exc
    elif weights == "none":
        model = constructor(weights=None, **kwargs)
    else:
        model = constructor(weights=None, **kwargs)
        try:
            model.load_weights(weights, skip_mismatch=False)
        except Exception as exc:
            raise WeightsUnavailableError(f"cannot load {weights} into {spec.label}: {exc}") from exc
    return Extractor(spec, weights, model, lambda x: preprocess(x.copy()))


def download_weights(spec: ModelSpec) -> str:
    """Fetch the ImageNet no-top weights into the models cache (Keras downloads them)."""
    keras_models_dir().mkdir(parents=True, exist_ok=True)
    build_keras_app(spec, "imagenet")
    return str(keras_models_dir() / spec.weights_file)
