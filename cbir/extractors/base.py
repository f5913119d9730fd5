"""What every extractor implementation returns: a built model and its preprocessing."""

from __future__ import annotations

from typing import Callable

import numpy as np

from .registry import ModelSpec


class Extractor:
    """A built model: ``preprocess`` (uint8 HxWx3 batch -> model input) and ``features``.

    ``spec`` is the model's registry entry, ``weights`` ``imagenet``, ``none`` or a file's
    path; ``model`` a Keras model mapping (b, s, s, 3) float32 to (b, spec.dim)."""

    def __init__(self, spec: ModelSpec, weights: str, model, preprocess: Callable[[np.ndarray], np.ndarray]):
        self.spec = spec
        self.weights = weights
        self.model = model
        self._preprocess = preprocess
        self._predict = None
        self._maps: dict[bool, object] = {}  # the model up to its pooling (at its own input size: True), built on first use

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def input_size(self) -> int:
        return self.spec.input_size

    def features(self, batch_uint8: np.ndarray) -> np.ndarray:
        """(b, s, s, 3) uint8 RGB -> (b, dim) float32 pooled features."""
        x = self._preprocess(np.asarray(batch_uint8, dtype=np.float32))
        if self._predict is None:
            import tensorflow as tf

            model = self.model
            self._predict = tf.function(lambda t: model(t, training=False), reduce_retracing=True)
        return np.asarray(self._predict(x), dtype=np.float32)

    def feature_maps(self, batch_uint8: np.ndarray) -> np.ndarray:
        """(b, s, s, 3) uint8 RGB -> (b, h, w, dim) float32: the final convolutional feature
        maps whose global average is :meth:`features` (h = w = 7 for a 224-px input). Any
        square size ``s`` (multi-scale descriptors): another size than the model's runs a copy
        of it with a free input size and the same weights, built on first use. Raises
        :class:`~cbir.errors.CBIRError` for a model that does not end in global average pooling."""
        fixed = batch_uint8.shape[1] == self.input_size and batch_uint8.shape[2] == self.input_size
        if self._maps.get(fixed) is None:
            self._maps[fixed] = self._maps_function(fixed)
        x = self._preprocess(np.asarray(batch_uint8, dtype=np.float32))
        return np.asarray(self._maps[fixed](x), dtype=np.float32)

    def _maps_function(self, fixed: bool):
        import keras
        import tensorflow as tf

        if not isinstance(self.model.layers[-1], keras.layers.GlobalAveragePooling2D):
            from ..errors import CBIRError

            raise CBIRError(f"{self.spec.label} does not end in global average pooling: it has no feature maps to explain")
        model = self.model
        if not fixed:  # the same layers on a free input size, sharing nothing but the weights' values
            model = keras.models.clone_model(model, input_tensors=keras.Input((None, None, 3)))
            model.set_weights(self.model.get_weights())
        maps = keras.Model(model.input, model.layers[-1].input, name=f"{self.spec.name}_maps")
        return tf.function(lambda t: maps(t, training=False), reduce_retracing=True)
