"""The Keras baseline, the way the seed notebooks learn: the frozen backbone (``trainable=False``)
inside a Keras model with a Dense softmax head, trained with ``model.fit`` on each batch.

Host side only: imports TensorFlow/Keras lazily, never from ``edge/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np


def keras_preprocessing(run_dir: str | Path) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 frames -> the backbone's float input, with the statistics recorded at pretraining
    (the same ones the edge manifest carries)."""
    pre = json.loads((Path(run_dir) / "pretrain.json").read_text(encoding="utf-8"))["preprocessing"]
    scale = np.float32(pre["scale"])
    mean = np.asarray(pre["mean"], np.float32)
    std = np.asarray(pre["std"], np.float32)

    def prep(frames: np.ndarray) -> np.ndarray:
        return (frames.astype(np.float32) * scale - mean) / std

    return prep


def build_keras_classifier(run_dir: str | Path, n_classes: int, lr: float = 1e-3,
                           seed: int = 0) -> tuple[Any, Any]:
    """(classifier, frozen base): ``backbone.keras`` with ``trainable=False`` + Dense softmax, compiled."""
    import keras

    keras.utils.set_random_seed(seed)
    base = keras.models.load_model(Path(run_dir) / "backbone.keras", compile=False)
    base.trainable = False
    inputs = keras.Input(base.input_shape[1:], name="image")
    features = base(inputs, training=False)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="head")(features)
    model = keras.Model(inputs, outputs, name="keras_baseline")
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model, base
