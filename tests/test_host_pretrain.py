"""Pretraining (TensorFlow) from every source format, on small files written in the real formats."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.tf
pytest.importorskip("tensorflow", reason="host extra (TensorFlow) not installed")

from host.cli import main as host_main  # noqa: E402
from host.pretrain import PretrainConfig, pretrain, stratified_split  # noqa: E402


def _blobs(n_classes: int, per_class: int, size: int, channels: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images whose class decides the size of a centred bright square (flip/shift invariant)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 60, size=(n_classes * per_class, size, size, channels), dtype=np.uint8)
    y = np.repeat(np.arange(n_classes), per_class)
    for i, label in enumerate(y):
        half = max(1, int(size * (label + 1) / (2 * (n_classes + 1))))
        c = size // 2
        x[i, c - half:c + half, c - half:c + half] = 220
    return x, y


def _write_idx(folder: Path, prefix: str, x: np.ndarray, y: np.ndarray) -> None:
    images = struct.pack(">IIII", 0x00000803, len(x), x.shape[1], x.shape[2]) + x.tobytes()
    labels = struct.pack(">II", 0x00000801, len(y)) + y.astype(np.uint8).tobytes()
    (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(images))
    (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))


def _make_source(kind: str, root: Path) -> str:
    if kind == "npz":
        x, y = _blobs(4, 12, 24, 3)
        np.savez(root / "d.npz", x=x, y=y)
        return f"npz:{root / 'd.npz'}"
    if kind == "npz_split":
        x, y = _blobs(4, 12, 32, 3)
        np.savez(root / "s.npz", x_train=x, y_train=y, x_test=x[:4], y_test=y[:4])
        return f"npz:{root / 's.npz'}"
    if kind == "idx":
        x, y = _blobs(4, 12, 28, 1)
        _write_idx(root, "train", x[..., 0], y)
        _write_idx(root, "t10k", x[:8, ..., 0], y[:8])
        return f"idx:{root}"
    if kind == "folder":
        from PIL import Image

        x, y = _blobs(4, 10, 40, 3)
        for i, (img, label) in enumerate(zip(x, y)):
            folder = root / f"class_{label}"
            folder.mkdir(exist_ok=True)
            Image.fromarray(img).save(folder / f"{i}.png")
        return f"folder:{root}"
    return "synthetic"


@pytest.mark.parametrize("kind", ["npz", "npz_split", "idx", "folder", "synthetic"])
@pytest.mark.slow
def test_pretrain_from_each_source_saves_a_usable_backbone(kind: str, tmp_path: Path) -> None:
    spec = _make_source(kind, tmp_path)
    config = PretrainConfig(data=spec, epochs=4, embedding_size=16, batch_size=16, seed=3,
                            max_train_frames=600 if kind == "synthetic" else None)
    result = pretrain(config, tmp_path / "run", progress=False)
    record = json.loads((tmp_path / "run" / "pretrain.json").read_text())
    assert record["input_shape"] == [32, 32, 3]  # grayscale replicated, sizes resized
    assert record["embedding_size"] == 16
    assert result.embedding_spread > 0.05
    assert 0.0 <= result.val_accuracy <= 1.0
    with np.load(tmp_path / "run" / "calibration.npz") as calib:
        assert calib["representative"].dtype == np.uint8
        assert calib["representative"].shape[1:] == (32, 32, 3)
    if kind != "synthetic":
        assert result.val_accuracy > 0.5  # the blob task is learnable in a few epochs


@pytest.mark.slow
def test_pretraining_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    spec = _make_source("npz", tmp_path)
    runs = []
    for name in ("a", "b"):
        pretrain(PretrainConfig(data=spec, epochs=1, embedding_size=8, seed=7), tmp_path / name, progress=False)
        runs.append(json.loads((tmp_path / name / "pretrain.json").read_text()))
    assert runs[0]["history"] == runs[1]["history"]
    assert runs[0]["embedding_mean"] == runs[1]["embedding_mean"]


def test_stratified_split_holds_out_every_class() -> None:
    y = np.repeat(np.arange(5), 20)
    train, val = stratified_split(y, 0.2, seed=0)
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == 100
    assert np.bincount(y[val]).tolist() == [4] * 5


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "missing.npz"),
        ("corrupt", "corrupt.npz"),
        ("bad_shape", "expected"),
        ("one_class", "expected at least 2 classes"),
    ],
)
def test_bad_pretraining_data_gives_a_clear_error(setup: str, message: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    if setup == "missing":
        spec = f"npz:{tmp_path / 'missing.npz'}"
    elif setup == "corrupt":
        (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 this is not a zip archive")
        spec = f"npz:{tmp_path / 'corrupt.npz'}"
    elif setup == "bad_shape":
        np.savez(tmp_path / "flat.npz", x=np.zeros((10, 32), np.uint8), y=np.arange(10))
        spec = f"npz:{tmp_path / 'flat.npz'}"
    else:
        np.savez(tmp_path / "one.npz", x=np.zeros((10, 8, 8, 3), np.uint8), y=np.zeros(10, np.int64))
        spec = f"npz:{tmp_path / 'one.npz'}"
    code = host_main(["-q", "pretrain", "--data", spec, "--out", str(tmp_path / "run"), "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run" / "backbone.keras").exists()


# --------------------------------------------------------------------------- issue 12 items 2 and 6


def _reference_recalibration(backbone, x: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The former recalibration: every layer's full float64 feature maps at once."""
    import keras

    out = []
    for layer in [lay for lay in backbone.layers if isinstance(lay, keras.layers.BatchNormalization)]:
        probe = keras.Model(backbone.input, layer.input)
        feats = probe.predict(x, batch_size=256, verbose=0).astype(np.float64)
        axes = tuple(range(feats.ndim - 1))
        layer.moving_mean.assign(feats.mean(axis=axes).astype(np.float32))
        layer.moving_variance.assign(feats.var(axis=axes).astype(np.float32))
        out.append((layer.moving_mean.numpy().copy(), layer.moving_variance.numpy().copy()))
    return out


@pytest.mark.slow
def test_streaming_batchnorm_recalibration_equals_the_full_one() -> None:
    import keras

    from host.backbones import BackboneSpec, build_backbone
    from host.pretrain import recalibrate_batchnorm

    keras.utils.set_random_seed(0)
    backbone = build_backbone(BackboneSpec.parse("tiny_cnn", input_size=32, channels=3, embedding_size=16))
    x = (np.random.default_rng(1).normal(size=(203, 32, 32, 3)) * 2 + 0.5).astype(np.float32)
    expected = _reference_recalibration(backbone, x)
    assert expected, "tiny_cnn has BatchNorm layers"
    for layer in [lay for lay in backbone.layers if isinstance(lay, keras.layers.BatchNormalization)]:
        layer.moving_mean.assign(np.zeros(layer.moving_mean.shape, np.float32))  # forget them
        layer.moving_variance.assign(np.ones(layer.moving_variance.shape, np.float32))
    n = recalibrate_batchnorm(backbone, x, batch_size=64)  # 203 frames: batches of 64, 64, 64, 11
    assert n == len(expected)
    bn = [lay for lay in backbone.layers if isinstance(lay, keras.layers.BatchNormalization)]
    for layer, (mean, var) in zip(bn, expected):
        np.testing.assert_allclose(layer.moving_mean.numpy(), mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(layer.moving_variance.numpy(), var, rtol=1e-5, atol=1e-6)


def test_channel_stats_and_normalise_match_float64_references() -> None:
    from host.pretrain import channel_stats, normalise

    x = np.random.default_rng(2).integers(0, 256, (1000, 6, 6, 3), dtype=np.uint8)
    mean, std = channel_stats(x, chunk=64)
    ref = x.astype(np.float64) / 255.0
    np.testing.assert_allclose(mean, ref.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(std, ref.std(axis=(0, 1, 2)), rtol=1e-10)
    out = normalise(x, mean, std)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, (ref - np.array(mean)) / np.array(std), rtol=1e-5, atol=1e-5)


def test_memory_too_short_fails_with_a_clear_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from host.pretrain import PretrainError, check_memory

    assert check_memory(100, 32, 3, available=10 ** 9) == 100 * 32 * 32 * 3 * 9
    with pytest.raises(PretrainError, match=r"needs about 1.5 GiB .* only 1.0 GiB available; use --max-train"):
        check_memory(60_000, 32, 3, available=1024 ** 3)
    spec = _make_source("npz", tmp_path)

    class Short:
        available = 1000  # bytes

    import psutil

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Short())
    code = host_main(["-q", "pretrain", "--data", spec, "--out", str(tmp_path / "run"), "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "GiB available" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "backbone.keras").exists()


@pytest.mark.slow
def test_pretrain_on_a_class_subset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x, y = _blobs(6, 10, 24, 3)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    out = tmp_path / "run"
    code = host_main(["-q", "pretrain", "--data", f"npz:{tmp_path / 'd.npz'}", "--classes", "3-5",
                      "--out", str(out), "--epochs", "1", "--embedding-size", "8"])
    assert code == 0
    record = json.loads((out / "pretrain.json").read_text())
    assert record["n_classes"] == 3 and record["classes"] == {"3": 0, "4": 1, "5": 2}
    assert record["n_train"] + record["n_val"] == 30 and record["config"]["classes"] == [3, 4, 5]
    code = host_main(["-q", "pretrain", "--data", f"npz:{tmp_path / 'd.npz'}", "--classes", "4-9",
                      "--out", str(tmp_path / "bad"), "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "--classes: expected at least 2 distinct labels" in err and "missing [6, 7, 8, 9]" in err
