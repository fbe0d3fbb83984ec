"""Generic labelled image sources: IDX (MNIST-style), npz, a folder per class, or the synthetic set.

These feed the host pretrainer and user streams. Every loader returns :class:`LabelledImages`
(uint8 NHWC images, int64 labels) and fails with a clear error naming expected vs got.

Example:
    >>> data = load_source("synthetic")
    >>> data.x.shape[1:], data.x.dtype, data.n_classes
    ((32, 32, 3), dtype('uint8'), 100)
"""

from __future__ import annotations

import gzip
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

__all__ = [
    "IDX_FILES",
    "LabelledImages",
    "load_idx",
    "load_image_folder",
    "load_npz",
    "load_source",
    "resize_images",
    "to_channels",
]

Split = Literal["train", "test"]
#: File names used by Keras' cache, by the original MNIST / Fashion-MNIST downloads and by Debian's
#: ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist/``).
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_IDX_DTYPES: dict[int, np.dtype[Any]] = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
                                     0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


@dataclass(frozen=True)
class LabelledImages:
    """Images with labels: ``x`` uint8 (N, H, W, C), ``y`` int64 (N,), optional ``session`` (N,).

    Example:
        >>> d = LabelledImages(np.zeros((2, 4, 4, 1), np.uint8), np.array([0, 1]), None, ["a", "b"])
        >>> len(d), d.n_classes, d.image_shape
        (2, 2, (4, 4, 1))
    """

    x: np.ndarray
    y: np.ndarray
    session: np.ndarray | None = None
    class_names: list[str] | None = None

    def __post_init__(self) -> None:
        x, y = self.x, self.y
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4:
            got = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
            raise ValueError(f"x: expected uint8 array (N, H, W, C), got {got}")
        if x.shape[3] not in (1, 3):
            raise ValueError(f"x: expected 1 or 3 channels, got {x.shape[3]}")
        if not isinstance(y, np.ndarray) or y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            got = f"{y.dtype} {y.shape}" if isinstance(y, np.ndarray) else type(y).__name__
            raise ValueError(f"y: expected 1-D integer array, got {got}")
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"y: expected {x.shape[0]} labels (one per image), got {y.shape[0]}")
        if y.size and y.min() < 0:
            raise ValueError(f"y: expected labels >= 0, got min {int(y.min())}")
        object.__setattr__(self, "y", y.astype(np.int64, copy=False))
        if self.session is not None:
            s = np.asarray(self.session)
            if s.shape != (x.shape[0],) or not np.issubdtype(s.dtype, np.integer):
                raise ValueError(f"session: expected integer array of shape ({x.shape[0]},), got {s.dtype} {s.shape}")
            object.__setattr__(self, "session", s.astype(np.int64, copy=False))
        names = self.class_names
        if names is None:
            names = [str(i) for i in range(int(y.max()) + 1 if y.size else 0)]
            object.__setattr__(self, "class_names", names)
        if y.size and int(y.max()) >= len(names):
            raise ValueError(f"class_names: expected at least {int(y.max()) + 1} names (max label {int(y.max())}), got {len(names)}")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def n_classes(self) -> int:
        return len(self.class_names or [])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        h, w, c = self.x.shape[1:]
        return int(h), int(w), int(c)


# --------------------------------------------------------------------------- conversions


def to_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """Convert uint8 NHWC images to 1 or 3 channels (gray replicated to RGB, RGB -> ITU-R 601 luma)."""
    if x.ndim != 4 or x.dtype != np.uint8:
        raise ValueError(f"expected uint8 array (N, H, W, C), got {x.dtype} {x.shape}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    have = x.shape[3]
    if have == channels:
        return x
    if have == 1 and channels == 3:
        return np.repeat(x, 3, axis=3)
    if have == 3 and channels == 1:
        gray = x.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.clip(np.rint(gray), 0, 255).astype(np.uint8)[..., None]
    raise ValueError(f"cannot convert {have} channels to {channels}")


def resize_images(x: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize uint8 NHWC images with Pillow bilinear; ``size`` is S or (H, W)."""
    if x.ndim != 4 or x.dtype != np.uint8:
        raise ValueError(f"expected uint8 array (N, H, W, C), got {x.dtype} {x.shape}")
    h, w = (size, size) if isinstance(size, int) else size
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size}")
    if x.shape[1:3] == (h, w):
        return x
    out = np.empty((x.shape[0], h, w, x.shape[3]), np.uint8)
    for i in range(x.shape[0]):
        img = x[i, :, :, 0] if x.shape[3] == 1 else x[i]
        r = np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.BILINEAR))
        out[i] = r[..., None] if x.shape[3] == 1 else r
    return out


# --------------------------------------------------------------------------- IDX


def _read_maybe_gz(path: Path) -> bytes:
    with open(path, "rb") as f:
        head = f.read(2)
    try:
        if head == b"\x1f\x8b":
            with gzip.open(path, "rb") as g:
                return g.read()
        return path.read_bytes()
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path}: truncated or corrupt gzip ({exc})") from exc


def _parse_idx(data: bytes, source: str) -> np.ndarray:
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES or data[3] < 1:
        raise ValueError(f"{source}: bad IDX magic: expected 00 00 <type in 08,09,0B..0E> <ndim>, got {data[:4].hex(' ')}")
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{source}: truncated IDX header: expected {header} bytes, got {len(data)}")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    need = int(np.prod(dims)) * dtype.itemsize
    got = len(data) - header
    if got < need:
        raise ValueError(f"{source}: truncated IDX data: dims {dims} need {need} bytes, got {got}")
    if got > need:
        raise ValueError(f"{source}: IDX file has {got - need} trailing bytes after dims {dims}")
    return np.frombuffer(data, dtype, count=int(np.prod(dims)), offset=header).reshape(dims)


def _find_idx_file(folder: Path, stem: str) -> Path:
    alt = stem.replace("-idx", ".idx")  # some mirrors use train-images.idx3-ubyte
    for name in (stem + ".gz", stem, alt + ".gz", alt):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"IDX file not found: looked for {folder / (stem + '.gz')} and {folder / stem}")


def load_idx(folder: str | os.PathLike[str], split: Split = "train") -> LabelledImages:
    """Load MNIST-style IDX files (gzipped or not) from ``folder``, e.g. Keras' cache or
    ``/usr/share/datasets/fashion-mnist`` (Debian ``dataset-fashion-mnist``). Images come back as
    uint8 (N, H, W, 1)."""
    if split not in IDX_FILES:
        raise ValueError(f"split must be one of {tuple(IDX_FILES)}, got {split!r}")
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"IDX folder not found: {folder}")
    img_path, lab_path = (_find_idx_file(folder, stem) for stem in IDX_FILES[split])
    images = _parse_idx(_read_maybe_gz(img_path), str(img_path))
    labels = _parse_idx(_read_maybe_gz(lab_path), str(lab_path))
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{img_path}: expected uint8 images with 3 dims (N, H, W), got {images.dtype} {images.shape}")
    if labels.ndim != 1:
        raise ValueError(f"{lab_path}: expected 1-D labels, got shape {labels.shape}")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"count mismatch: {img_path} has {images.shape[0]} images, {lab_path} has {labels.shape[0]} labels")
    return LabelledImages(images[..., None].copy(), labels.astype(np.int64))


# --------------------------------------------------------------------------- npz


def load_npz(path: str | os.PathLike[str], split: Split = "train") -> LabelledImages:
    """Load ``x``/``y`` (+ optional ``session``) or ``x_train``/``y_train``/``x_test``/``y_test`` from an npz.

    Grayscale (N, H, W) images get a channel axis. Pickled objects are refused (``allow_pickle=False``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"npz file not found: {path}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            if {"x", "y"} <= keys:
                x, y = z["x"], z["y"]
                session = z["session"] if "session" in keys else None
            elif {f"x_{split}", f"y_{split}"} <= keys:
                x, y = z[f"x_{split}"], z[f"y_{split}"]
                session = z[f"session_{split}"] if f"session_{split}" in keys else None
            else:
                raise ValueError(f"{path}: expected keys x, y or x_{split}, y_{split}; got {sorted(keys)}")
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: not a readable npz ({exc})") from exc
    if x.ndim == 3:
        x = x[..., None]
    if x.dtype != np.uint8:
        raise ValueError(f"{path}: expected uint8 images, got {x.dtype}")
    return LabelledImages(x, np.asarray(y), session)


# --------------------------------------------------------------------------- image folder


def load_image_folder(root: str | os.PathLike[str], image_size: int | None = None) -> LabelledImages:
    """One sub-folder per class (classes sorted by name, like Keras); images converted to RGB.

    Images of different sizes are refused unless ``image_size`` is given (then all are resized).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{root}: expected one sub-folder per class, found none")
    images: list[np.ndarray] = []
    labels: list[int] = []
    first: tuple[tuple[int, ...], Path] | None = None
    for label, name in enumerate(classes):
        files = sorted(f for f in (root / name).iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
        for f in files:
            try:
                with Image.open(f) as opened:
                    im = opened.convert("RGB")
                    if image_size is not None:
                        im = im.resize((image_size, image_size), Image.Resampling.BILINEAR)
                    arr = np.asarray(im)
            except OSError as exc:
                raise ValueError(f"{f}: not a readable image ({exc})") from exc
            if first is None:
                first = (arr.shape, f)
            elif arr.shape != first[0]:
                raise ValueError(f"{f}: size {arr.shape[1]}x{arr.shape[0]} differs from {first[1]} "
                                 f"({first[0][1]}x{first[0][0]}); pass image_size to resize")
            images.append(arr)
            labels.append(label)
    if not images:
        raise ValueError(f"{root}: no images with extensions {IMAGE_EXTENSIONS} in {len(classes)} class folders")
    return LabelledImages(np.stack(images), np.asarray(labels, np.int64), None, classes)


# --------------------------------------------------------------------------- dispatcher


def load_source(spec: str, split: Split = "train", image_size: int | None = None) -> LabelledImages:
    """Load ``idx:PATH``, ``npz:PATH``, ``folder:PATH`` or ``synthetic`` (the generator's pretraining objects).

    ``synthetic`` accepts options: ``synthetic:objects=100,frames=8,sessions=4,seed=0``; its test
    split renders the same objects in other sessions and poses. ``image_size`` resizes every source.
    """
    kind, _, arg = spec.partition(":")
    if kind == "synthetic":
        from firmware_sim.data.generator import SUPPORTED_SIZES, make_pretraining_set

        opts = {"objects": 100, "frames": 8, "sessions": 4, "seed": 0}
        for item in filter(None, arg.split(",")):
            key, eq, value = item.partition("=")
            if key not in opts or not eq or not value.strip().lstrip("-").isdigit():
                raise ValueError(f"synthetic option {item!r}: expected one of {sorted(opts)} as key=int")
            opts[key] = int(value)
        size = image_size if image_size in SUPPORTED_SIZES else 32
        x, y = make_pretraining_set(opts["objects"], opts["frames"], opts["sessions"], size, opts["seed"],
                                    variant=0 if split == "train" else 1)
        data = LabelledImages(x, y, None, [f"pretrain_object_{i}" for i in range(opts["objects"])])
    elif kind in ("idx", "npz", "folder"):
        if not arg:
            raise ValueError(f"source {spec!r}: expected a path after '{kind}:'")
        if kind == "idx":
            data = load_idx(arg, split)
        elif kind == "npz":
            data = load_npz(arg, split)
        else:
            return load_image_folder(arg, image_size)
    else:
        raise ValueError(f"unknown source {spec!r}: expected idx:PATH, npz:PATH, folder:PATH or synthetic")
    if image_size is not None and data.x.shape[1:3] != (image_size, image_size):
        data = LabelledImages(resize_images(data.x, image_size), data.y, data.session, data.class_names)
    return data
