"""Pretrain a backbone on a source data set, with a temporary classifier on top.

The result is a run directory holding the frozen-to-be backbone (``backbone.keras``), a record of
how it was made (``pretrain.json``) and a small calibration sample (``calibration.npz``: uint8
frames for int8 calibration and held-out frames for the parity check), so that `host.export` needs
nothing else.

Example:
    >>> from host.pretrain import PretrainConfig, pretrain
    >>> result = pretrain(PretrainConfig(data="synthetic", epochs=2), "runs/demo")  # doctest: +SKIP
    >>> round(result.val_accuracy, 2)                                               # doctest: +SKIP
    0.9

BatchNorm statistics are recomputed after training, layer by layer, on un-augmented training
frames (`recalibrate_batchnorm`): moving averages collected under augmentation and a short schedule
drift from the statistics the frozen backbone sees later, and a frozen backbone with wrong BN
statistics gives near-constant embeddings.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from firmware_sim.data.sources import LabelledImages, load_source, resize_images, to_channels
from host.backbones import EMBEDDING_LAYER, BackboneSpec, build_backbone

log = logging.getLogger(__name__)

BACKBONE_FILE = "backbone.keras"
RECORD_FILE = "pretrain.json"
CALIBRATION_FILE = "calibration.npz"


class PretrainError(ValueError):
    """Unusable data or configuration for pretraining."""


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that determines a pretraining run (recorded in ``pretrain.json``)."""

    data: str = "synthetic"
    backbone: str = "tiny_cnn"
    input_size: int = 32
    channels: int = 3
    alpha: float = 0.35
    weights: str | None = None
    layer: str | None = None
    embedding_size: int = 256
    epochs: int = 12
    batch_size: int = 64
    learning_rate: float = 2e-3
    val_fraction: float = 0.15
    augment: bool = True
    seed: int = 0
    calibration_frames: int = 256
    heldout_frames: int = 64
    max_train_frames: int | None = None
    classes: tuple[int, ...] | None = None  # pretrain on these source labels only (relabelled 0..m-1)

    def backbone_spec(self) -> BackboneSpec:
        return BackboneSpec.parse(
            self.backbone,
            input_size=self.input_size,
            channels=self.channels,
            alpha=self.alpha,
            weights=self.weights,
            layer=self.layer,
            embedding_size=self.embedding_size,
        )


@dataclass
class PretrainResult:
    """What a pretraining run produced and measured."""

    run_dir: Path
    train_accuracy: float
    val_accuracy: float
    embedding_spread: float
    seconds: float
    record: dict[str, Any] = field(default_factory=dict)


def prepare_images(images: LabelledImages, input_size: int, channels: int) -> np.ndarray:
    """uint8 frames at the backbone's size and channel count (grayscale replicated to RGB)."""
    x = to_channels(images.x, channels)
    if x.shape[1:3] != (input_size, input_size):
        x = resize_images(x, (input_size, input_size))
    return x


def channel_stats(x_uint8: np.ndarray, scale: float = 1.0 / 255.0,
                  chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of ``x * scale`` (used as the manifest's preprocessing).

    Exact integer sums of the uint8 values, ``chunk`` frames at a time: no float copy of the set.
    """
    if x_uint8.dtype != np.uint8 or x_uint8.ndim != 4 or not len(x_uint8):
        raise PretrainError(f"channel_stats: expected non-empty uint8 (N, H, W, C) frames, "
                            f"got {x_uint8.dtype} {x_uint8.shape}")
    channels = x_uint8.shape[3]
    total = np.zeros(channels, np.int64)
    squares = np.zeros(channels, np.int64)
    for start in range(0, len(x_uint8), chunk):
        part = x_uint8[start:start + chunk].reshape(-1, channels).astype(np.int64)
        total += part.sum(axis=0)
        squares += (part * part).sum(axis=0)
    count = x_uint8.size // channels
    mean = total / count
    var = np.maximum(squares / count - mean * mean, 0.0)
    std = np.sqrt(var) * scale
    std = np.where(std < 1e-6, 1.0, std)
    return [float(v) for v in mean * scale], [float(v) for v in std]


def normalise(x_uint8: np.ndarray, mean: list[float], std: list[float], scale: float = 1.0 / 255.0) -> np.ndarray:
    """The manifest's preprocessing, ``(x * scale - mean) / std``, in float32 (one float32 array, in place)."""
    x = x_uint8.astype(np.float32)
    x *= np.float32(scale)
    x -= np.asarray(mean, np.float32)
    x /= np.asarray(std, np.float32)
    return x


def select_classes(images: LabelledImages,
                   classes: tuple[int, ...] | list[int]) -> tuple[LabelledImages, dict[int, int]]:
    """Only the images of ``classes`` (source labels), relabelled ``0..m-1`` in the given order.

    Returns the subset and the map source label -> pretraining label (recorded in ``pretrain.json``).
    """
    wanted = [int(c) for c in classes]
    present = set(np.unique(images.y).tolist())
    missing = sorted(set(wanted) - present)
    if missing or len(set(wanted)) != len(wanted) or len(wanted) < 2:
        raise PretrainError(f"--classes: expected at least 2 distinct labels of the data (present: "
                            f"{sorted(present)}), got {wanted}" + (f"; missing {missing}" if missing else ""))
    lut = np.full(int(images.y.max()) + 1, -1, np.int64)
    lut[wanted] = np.arange(len(wanted))
    mask = lut[images.y] >= 0
    names = list(images.class_names or [])
    session = None if images.session is None else images.session[mask]
    subset = LabelledImages(images.x[mask], lut[images.y[mask]], session,
                            [names[c] if c < len(names) else str(c) for c in wanted])
    return subset, {c: i for i, c in enumerate(wanted)}


#: Bytes per input value of a trained frame that pretraining holds at once: the float32 normalised
#: copy and the copy TensorFlow makes of it for `fit` (every frame is also held once as uint8).
PRETRAIN_BYTES_PER_VALUE = 4 + 4


def check_memory(n_frames: int, input_size: int, channels: int, n_trained: int | None = None,
                 available: int | None = None) -> int:
    """Refuse a pretraining set that would not fit in memory; returns the estimated bytes.

    ``n_frames`` are held as uint8 at the backbone's input size, ``n_trained`` of them (default all:
    training + validation) also as float32 twice (:data:`PRETRAIN_BYTES_PER_VALUE`). ``available``
    defaults to psutil's available memory. TensorFlow's own ~1 GB is not counted.

    Example:
        >>> round(check_memory(60_000, 32, 3, available=8 * 1024 ** 3) / 1024 ** 3, 2)   # fashion-MNIST, 32 px
        1.54
    """
    values = input_size * input_size * channels
    trained = n_frames if n_trained is None else min(n_trained, n_frames)
    need = int(n_frames) * values + int(trained) * values * PRETRAIN_BYTES_PER_VALUE
    if available is None:
        import psutil

        available = int(psutil.virtual_memory().available)
    if need > available:
        gib = 1024 ** 3
        raise PretrainError(
            f"pretraining {n_frames} frames at {input_size}x{input_size}x{channels} needs about "
            f"{need / gib:.1f} GiB (uint8 frames + float32 copies), only {available / gib:.1f} GiB available; "
            "use --max-train-frames, --classes or a smaller --input-size"
        )
    return need


class _RunningMoments:
    """Per-channel mean and variance over batches (Chan et al.'s pairwise update, float64)."""

    def __init__(self, channels: int) -> None:
        self.count = 0
        self.mean = np.zeros(channels, np.float64)
        self.m2 = np.zeros(channels, np.float64)

    def update(self, values: np.ndarray) -> None:
        v = np.asarray(values, np.float64).reshape(-1, self.mean.shape[0])
        n = v.shape[0]
        if n == 0:
            return
        batch_mean = v.mean(axis=0)
        batch_m2 = ((v - batch_mean) ** 2).sum(axis=0)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + batch_m2 + delta * delta * (self.count * n / total)
        self.count = total

    @property
    def variance(self) -> np.ndarray:
        return self.m2 / max(self.count, 1)


def stratified_split(y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) with ``val_fraction`` of every class held out, seeded."""
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        n_val = max(1, int(round(len(members) * val_fraction))) if len(members) > 1 else 0
        val_idx.append(members[:n_val])
        train_idx.append(members[n_val:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


def recalibrate_batchnorm(backbone: Any, x: np.ndarray, batch_size: int = 256) -> int:
    """Set every BatchNorm layer's moving mean/variance to the exact statistics of ``x``.

    Layers are processed in graph order, each with the already recalibrated layers before it, so
    the statistics are the ones the frozen backbone will see. The statistics are accumulated
    ``batch_size`` frames at a time (running float64 moments per channel), so memory stays at one
    batch of feature maps whatever the size of ``x``. Returns the number of layers set.
    """
    import keras

    bn_layers = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in bn_layers:
        probe = keras.Model(backbone.input, layer.input)
        moments = _RunningMoments(int(layer.input.shape[-1]))
        for start in range(0, len(x), batch_size):
            moments.update(np.asarray(probe.predict_on_batch(x[start:start + batch_size])))
        layer.moving_mean.assign(moments.mean.astype(np.float32))
        layer.moving_variance.assign(moments.variance.astype(np.float32))
    return len(bn_layers)


def embedding_stats(embeddings: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-dimension mean and std (floored at 1e-6) of embeddings: the manifest's standardisation."""
    mean = [float(v) for v in embeddings.mean(axis=0)]
    std = [float(max(v, 1e-6)) for v in embeddings.std(axis=0)]
    return mean, std


def embedding_spread(embeddings: np.ndarray) -> float:
    """Mean per-dimension std across samples over the mean absolute embedding.

    Near 0 means near-constant embeddings (the symptom of broken BN statistics).
    """
    scale = float(np.mean(np.abs(embeddings))) + 1e-12
    return float(np.mean(embeddings.std(axis=0)) / scale)


def pretrain(config: PretrainConfig, run_dir: str | Path, progress: bool = True) -> PretrainResult:
    """Train ``config.backbone`` on ``config.data`` and save it to ``run_dir``."""
    import keras
    import tensorflow as tf

    started = time.perf_counter()
    run_dir = Path(run_dir)
    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()

    spec = config.backbone_spec()
    images = load_source(config.data, split="train")
    class_map: dict[int, int] | None = None
    if config.classes is not None:
        images, class_map = select_classes(images, config.classes)
    n_classes = int(images.y.max()) + 1 if len(images.y) else 0
    if len(images.y) < 2 or len(np.unique(images.y)) < 2:
        raise PretrainError(
            f"pretraining data {config.data!r}: expected at least 2 classes and 2 images, "
            f"got {len(np.unique(images.y))} classes in {len(images.y)} images"
        )
    n_trained = None if config.max_train_frames is None else (
        config.max_train_frames + int(np.ceil(len(images.y) * config.val_fraction)) + n_classes)
    check_memory(len(images.y), spec.input_size, spec.channels, n_trained)
    x_all = prepare_images(images, spec.input_size, spec.channels)
    y_all = images.y.astype(np.int64)
    train_idx, val_idx = stratified_split(y_all, config.val_fraction, config.seed)
    if config.max_train_frames is not None and len(train_idx) > config.max_train_frames:
        rng = np.random.default_rng(config.seed + 1)
        train_idx = np.sort(rng.choice(train_idx, config.max_train_frames, replace=False))
    mean, std = channel_stats(x_all[train_idx])
    x_train = normalise(x_all[train_idx], mean, std)
    x_val = normalise(x_all[val_idx], mean, std)
    y_train, y_val = y_all[train_idx], y_all[val_idx]
    log.info("pretraining %s on %s: %d train, %d val, %d classes",
             spec.label, config.data, len(train_idx), len(val_idx), n_classes)

    backbone = build_backbone(spec)
    inputs = keras.Input(backbone.input_shape[1:], name="image")
    x = inputs
    if config.augment:
        x = keras.layers.RandomFlip("horizontal", seed=config.seed, name="aug_flip")(x)
        x = keras.layers.RandomTranslation(0.1, 0.1, seed=config.seed, name="aug_shift")(x)
    x = backbone(x)
    x = keras.layers.Dropout(0.2, seed=config.seed, name="pretrain_dropout")(x)
    outputs = keras.layers.Dense(n_classes, name="pretrain_classifier")(x)
    classifier = keras.Model(inputs, outputs, name="pretrain_model")
    steps = max(1, int(np.ceil(len(x_train) / config.batch_size))) * config.epochs
    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=steps)
    classifier.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = classifier.fit(
        x_train, y_train,
        validation_data=(x_val, y_val) if len(x_val) else None,
        epochs=config.epochs,
        batch_size=config.batch_size,
        shuffle=True,
        verbose=2 if progress else 0,
    )

    n_bn = recalibrate_batchnorm(backbone, x_train)
    train_acc = _accuracy(classifier, x_train, y_train)
    val_acc = _accuracy(classifier, x_val, y_val) if len(x_val) else float("nan")
    train_emb = backbone.predict(x_train[:2048], batch_size=256, verbose=0)
    spread = embedding_spread(train_emb)
    if spread < 0.05:
        raise PretrainError(
            f"embeddings are near-constant after pretraining: spread expected >= 0.05, got {spread:.4f} "
            "(check the data, the learning rate and the BatchNorm statistics)"
        )

    run_dir.mkdir(parents=True, exist_ok=True)
    backbone.trainable = False
    backbone.save(run_dir / BACKBONE_FILE)
    rng = np.random.default_rng(config.seed + 2)
    rep = rng.choice(train_idx, min(config.calibration_frames, len(train_idx)), replace=False)
    held = rng.choice(val_idx, min(config.heldout_frames, len(val_idx)), replace=False) if len(val_idx) else rep[:0]
    np.savez(run_dir / CALIBRATION_FILE, representative=x_all[np.sort(rep)], heldout=x_all[np.sort(held)])

    seconds = time.perf_counter() - started
    emb_mean, emb_std = embedding_stats(train_emb)
    record = {
        "config": asdict(config),
        "backbone": spec.label,
        "architecture": spec.architecture,
        "input_shape": [spec.input_size, spec.input_size, spec.channels],
        "embedding_size": int(backbone.output_shape[-1]),
        "n_classes": n_classes,
        "classes": None if class_map is None else {str(k): v for k, v in class_map.items()},
        "n_train": int(len(train_idx)),
        "n_val": int(len(val_idx)),
        "preprocessing": {"scale": 1.0 / 255.0, "mean": mean, "std": std, "channel_order": "RGB"},
        "embedding_mean": emb_mean,
        "embedding_std": emb_std,
        "train_accuracy": train_acc,
        "val_accuracy": val_acc,
        "embedding_spread": spread,
        "batchnorm_layers_recalibrated": n_bn,
        "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
        "seconds": seconds,
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__,
                     "python": platform.python_version(), "numpy": np.__version__},
        "embedding_layer": EMBEDDING_LAYER,
    }
    (run_dir / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    log.info("pretraining done in %.1f s: val accuracy %.3f", seconds, val_acc)
    return PretrainResult(run_dir, train_acc, val_acc, spread, seconds, record)


def _accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    logits = model.predict(x, batch_size=256, verbose=0)
    return float(np.mean(np.argmax(logits, axis=1) == y))
