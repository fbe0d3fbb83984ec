"""Generic labelled image sources: IDX (real format, written here), npz, image folders, conversions."""

import gzip
import struct

import numpy as np
import pytest
from PIL import Image

from firmware_sim.data.sources import (
    LabelledImages,
    load_idx,
    load_image_folder,
    load_npz,
    load_source,
    resize_images,
    to_channels,
)


def _idx_bytes(arr: np.ndarray) -> bytes:
    assert arr.dtype == np.uint8
    return struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def _write_idx(folder, prefix, x, y, gz=True):
    for kind, arr in (("images-idx3-ubyte", x), ("labels-idx1-ubyte", y)):
        data = _idx_bytes(arr)
        name = f"{prefix}-{kind}"
        if gz:
            with gzip.open(folder / f"{name}.gz", "wb") as f:
                f.write(data)
        else:
            (folder / name).write_bytes(data)


@pytest.fixture
def mnist_like(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, size=7).astype(np.uint8)
    _write_idx(tmp_path, "train", x, y, gz=True)
    _write_idx(tmp_path, "t10k", x[:3], y[:3], gz=False)
    return tmp_path, x, y


def test_load_idx_gz_and_plain(mnist_like):
    folder, x, y = mnist_like
    tr = load_idx(folder, "train")
    assert tr.x.shape == (7, 28, 28, 1) and tr.x.dtype == np.uint8
    assert np.array_equal(tr.x[..., 0], x) and np.array_equal(tr.y, y.astype(np.int64))
    assert tr.y.dtype == np.int64
    te = load_idx(folder, "test")
    assert np.array_equal(te.x[..., 0], x[:3])


def test_idx_bad_magic(mnist_like):
    folder, x, y = mnist_like
    data = bytearray(_idx_bytes(y))
    data[2] = 0x42
    (folder / "t10k-labels-idx1-ubyte").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="bad IDX magic.*00 00 42 01"):
        load_idx(folder, "test")


def test_idx_truncated(mnist_like):
    folder, x, _ = mnist_like
    (folder / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(x[:3])[:-100])
    with pytest.raises(ValueError, match="truncated IDX data.*need 2352 bytes, got 2252"):
        load_idx(folder, "test")


def test_idx_truncated_gzip(mnist_like):
    folder, _, _ = mnist_like
    p = folder / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:40])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz"):
        load_idx(folder, "train")


def test_idx_count_mismatch(mnist_like):
    folder, x, y = mnist_like
    (folder / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(y[:2]))
    with pytest.raises(ValueError, match="count mismatch.*3 images.*2 labels"):
        load_idx(folder, "test")


def test_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_idx(tmp_path, "train")


def test_npz_both_layouts(tmp_path):
    x = np.arange(2 * 5 * 5 * 3, dtype=np.uint8).reshape(2, 5, 5, 3)
    np.savez(tmp_path / "a.npz", x=x, y=np.array([1, 0]), session=np.array([3, 4]))
    a = load_npz(tmp_path / "a.npz")
    assert np.array_equal(a.x, x) and a.y.tolist() == [1, 0] and a.session.tolist() == [3, 4]
    np.savez(tmp_path / "b.npz", x_train=x[..., 0], y_train=np.array([0, 1]),
             x_test=x[:1, ..., 0], y_test=np.array([1]))
    tr, te = load_npz(tmp_path / "b.npz", "train"), load_npz(tmp_path / "b.npz", "test")
    assert tr.x.shape == (2, 5, 5, 1) and te.x.shape == (1, 5, 5, 1) and te.y.tolist() == [1]
    np.savez(tmp_path / "c.npz", images=x)
    with pytest.raises(ValueError, match=r"expected keys x, y or x_train, y_train; got \['images'\]"):
        load_npz(tmp_path / "c.npz")
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="expected 2 labels.*got 3"):
        load_npz(tmp_path / "d.npz")


def test_npz_refuses_pickled_objects(tmp_path):
    np.savez(tmp_path / "o.npz", x=np.array([object()], dtype=object), y=np.array([0]))
    with pytest.raises(ValueError):
        load_npz(tmp_path / "o.npz")


def test_image_folder(tmp_path):
    colors = {"cat": (255, 0, 0), "ant": (0, 255, 0)}
    for name, c in colors.items():
        (tmp_path / name).mkdir()
        for k in range(2):
            Image.new("RGB", (6, 4), c).save(tmp_path / name / f"{k}.png")
    Image.new("L", (6, 4), 128).save(tmp_path / "cat" / "gray.png")
    d = load_image_folder(tmp_path)
    assert d.class_names == ["ant", "cat"]
    assert d.x.shape == (5, 4, 6, 3) and d.y.tolist() == [0, 0, 1, 1, 1]
    assert d.x[0, 0, 0].tolist() == [0, 255, 0] and d.x[-1, 0, 0].tolist() == [128, 128, 128]
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "ant" / "big.png")
    with pytest.raises(ValueError, match="pass image_size"):
        load_image_folder(tmp_path)
    d2 = load_source(f"folder:{tmp_path}", image_size=16)
    assert d2.x.shape == (6, 16, 16, 3)


def test_channels_and_resize():
    g = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4, 1)
    rgb = to_channels(g, 3)
    assert rgb.shape == (2, 4, 4, 3) and np.array_equal(rgb[..., 2], g[..., 0])
    assert np.array_equal(to_channels(rgb, 1), g)
    big = resize_images(rgb, 8)
    assert big.shape == (2, 8, 8, 3) and big.dtype == np.uint8
    assert resize_images(g, (6, 3)).shape == (2, 6, 3, 1)
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        to_channels(g, 2)
    with pytest.raises(ValueError, match="expected uint8"):
        resize_images(g.astype(np.float32), 8)


def test_labelled_images_validation():
    x = np.zeros((3, 4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="expected uint8 array .* got float64"):
        LabelledImages(x.astype(float), np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="expected 3 labels .* got 2"):
        LabelledImages(x, np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="at least 6 names"):
        LabelledImages(x, np.array([0, 1, 5]), None, ["a", "b"])
    d = LabelledImages(x, np.array([0, 1, 1], np.int32))
    assert d.y.dtype == np.int64 and d.class_names == ["0", "1"]


def test_load_source_dispatch(mnist_like, tmp_path):
    folder, x, _ = mnist_like
    d = load_source(f"idx:{folder}", image_size=32)
    assert d.x.shape == (7, 32, 32, 1)
    s = load_source("synthetic:objects=5,frames=2,sessions=2")
    assert s.x.shape == (20, 32, 32, 3) and s.n_classes == 5
    t = load_source("synthetic:objects=5,frames=2,sessions=2", split="test")
    assert not np.array_equal(s.x, t.x) and np.array_equal(s.y, t.y)
    with pytest.raises(ValueError, match="unknown source 'csv:/x'"):
        load_source("csv:/x")
    with pytest.raises(ValueError, match="expected a path"):
        load_source("npz:")
    with pytest.raises(ValueError, match="synthetic option"):
        load_source("synthetic:bogus=1")
