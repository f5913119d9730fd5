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
