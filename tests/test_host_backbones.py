"""Backbone registry (TensorFlow): every backbone ends in a pooled embedding; bad specs are clear."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.tf
keras = pytest.importorskip("keras", reason="host extra (TensorFlow/Keras) not installed")

from host.backbones import EMBEDDING_LAYER, BackboneError, BackboneSpec, build_backbone  # noqa: E402


def test_tiny_cnn_ends_in_pooled_embedding() -> None:
    model = build_backbone(BackboneSpec(input_size=32, embedding_size=64))
    assert model.output_shape == (None, 64)
    assert model.layers[-1].name == EMBEDDING_LAYER
    out = model.predict(np.zeros((2, 32, 32, 3), np.float32), verbose=0)
    assert out.shape == (2, 64)


@pytest.mark.slow
def test_mobilenet_v2_at_chosen_width_and_size_without_downloads() -> None:
    small = build_backbone(BackboneSpec.parse("mobilenet_v2", input_size=64, alpha=0.35))
    wide = build_backbone(BackboneSpec.parse("mobilenet_v2", input_size=64, alpha=0.5))
    assert small.input_shape == (None, 64, 64, 3)
    assert small.layers[-1].name == EMBEDDING_LAYER
    assert small.output_shape == (None, 1280)  # MobileNetV2 keeps 1280 channels for alpha <= 1
    assert wide.count_params() > small.count_params()


def test_mobilenet_v2_rejects_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(BackboneError, match="expected None, 'imagenet' or an existing weights file"):
        build_backbone(BackboneSpec.parse("mobilenet_v2", weights=str(tmp_path / "nope.h5")))


def test_unknown_architecture_lists_the_known_ones() -> None:
    with pytest.raises(BackboneError, match="unknown architecture 'resnet9000'.*tiny_cnn.*mobilenet_v2"):
        BackboneSpec.parse("resnet9000")
    with pytest.raises(BackboneError, match="needs a path"):
        BackboneSpec.parse("keras")


def _user_model(path: Path) -> Path:
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, name="features")(inputs)
    x = keras.layers.Flatten(name="flat")(x)
    outputs = keras.layers.Dense(3, name="logits")(x)
    keras.Model(inputs, outputs).save(path)
    return path


def test_user_keras_model_is_cut_at_the_named_layer_and_pooled(tmp_path: Path) -> None:
    path = _user_model(tmp_path / "user.keras")
    model = build_backbone(BackboneSpec.parse(f"keras:{path}", input_size=16, layer="features"))
    assert model.output_shape == (None, 8)  # 14x14x8 feature map, global-average pooled
    assert model.layers[-1].name == EMBEDDING_LAYER
    vector = build_backbone(BackboneSpec.parse(f"keras:{path}", input_size=16, layer="logits"))
    assert vector.output_shape == (None, 3)


def test_user_keras_model_without_the_named_layer_is_refused(tmp_path: Path) -> None:
    path = _user_model(tmp_path / "user.keras")
    with pytest.raises(BackboneError, match="layer 'pool5' not found.*features"):
        build_backbone(BackboneSpec.parse(f"keras:{path}", input_size=16, layer="pool5"))
    with pytest.raises(BackboneError, match="needs the layer to cut at"):
        build_backbone(BackboneSpec.parse(f"keras:{path}", input_size=16))
    with pytest.raises(BackboneError, match="not found"):
        build_backbone(BackboneSpec.parse(f"keras:{tmp_path / 'missing.keras'}", layer="x"))


def test_savedmodel_backbone_uses_the_named_signature_output(tmp_path: Path) -> None:
    inputs = keras.Input((16, 16, 3))
    outputs = keras.layers.Conv2D(5, 3, name="conv")(inputs)
    keras.Model(inputs, outputs).export(tmp_path / "sm", format="tf_saved_model", verbose=False)
    model = build_backbone(BackboneSpec.parse(f"savedmodel:{tmp_path / 'sm'}", input_size=16))
    assert model.output_shape == (None, 5)
    out = model.predict(np.ones((1, 16, 16, 3), np.float32), verbose=0)
    assert out.shape == (1, 5) and np.all(np.isfinite(out))
    with pytest.raises(BackboneError, match="no SavedModel"):
        build_backbone(BackboneSpec.parse(f"savedmodel:{tmp_path}", input_size=16))
