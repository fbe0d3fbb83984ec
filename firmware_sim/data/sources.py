"""Generic labelled image sources: IDX (MNIST-style), npz, a folder per class, or the synthetic set.

These feed the host pretrainer and user streams. Every loader returns :class:`LabelledImages`
(uint8 NHWC images, int64 labels) and fails with a clear error naming expected vs got.

The parsers treat files as untrusted: IDX headers are checked against the file size before anything
is allocated (and gzip is read only as far as the header says), npz members are read through
:func:`npz_member` (header checked against the member size, bounded reads, uint8 only, never cast),
labels above :data:`MAX_LABEL` are refused, and images are decoded with :func:`edge.images.load_image`
(regular files only, pixel cap, real bit depth, EXIF orientation), the same rules as on the device.

Example:
    >>> data = load_source("synthetic")
    >>> data.x.shape[1:], data.x.dtype, data.n_classes
    ((32, 32, 3), dtype('uint8'), 100)
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import struct
import tokenize
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edge.checkpoint import read_npy_header
from edge.images import load_image
from edge.preprocess import fit_frame, load_frame

logger = logging.getLogger(__name__)

__all__ = [
    "IDX_FILES",
    "LabelledImages",
    "MAX_ARRAY_BYTES",
    "MAX_LABEL",
    "load_idx",
    "load_image_folder",
    "load_npz",
    "load_source",
    "npz_keys",
    "npz_member",
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
#: Largest label a source may hold: a class name is made for every label up to the largest one.
MAX_LABEL = 99_999
#: Largest array (bytes) a parser reads into memory: an IDX payload or a compressed npz member.
MAX_ARRAY_BYTES = 2 << 30
#: Deflate cannot inflate by more than about 1032:1; a member claiming more is corrupt or crafted.
_MAX_DEFLATE_RATIO = 1032


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
        if y.size and y.max() > MAX_LABEL:
            raise ValueError(f"y: expected labels <= {MAX_LABEL}, got max {int(y.max())}")
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
    """Resize uint8 NHWC images (`edge.preprocess.fit_frame`: squash, bilinear); ``size`` is S or (H, W)."""
    if x.ndim != 4 or x.dtype != np.uint8:
        raise ValueError(f"expected uint8 array (N, H, W, C), got {x.dtype} {x.shape}")
    h, w = (size, size) if isinstance(size, int) else size
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size}")
    if x.shape[1:3] == (h, w):
        return x
    out = np.empty((x.shape[0], h, w, x.shape[3]), np.uint8)
    for i in range(x.shape[0]):
        out[i] = fit_frame(x[i], (h, w))
    return out


# --------------------------------------------------------------------------- IDX


def _read_exactly(handle: Any, n: int, source: str) -> bytes:
    """``n`` bytes from ``handle`` (fewer only at end of file); gzip/zlib errors become ValueError."""
    chunks: list[bytes] = []
    left = n
    try:
        while left > 0:
            chunk = handle.read(min(left, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{source}: truncated or corrupt gzip ({type(exc).__name__}: {exc})") from exc
    return b"".join(chunks)


def _read_idx(path: Path, max_bytes: int = MAX_ARRAY_BYTES) -> np.ndarray:
    """Parse an IDX file (gzipped or not); the header is checked before the payload is read."""
    source = str(path)
    try:
        raw = open(path, "rb")
    except OSError as exc:
        raise ValueError(f"{source}: expected a readable IDX file, got {type(exc).__name__}: {exc}") from exc
    with raw:
        gz = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        handle: Any = gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw
        magic = _read_exactly(handle, 4, source)
        if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES or magic[3] < 1:
            raise ValueError(f"{source}: bad IDX magic: expected 00 00 <type in 08,09,0B..0E> <ndim>, "
                             f"got {magic[:4].hex(' ')}")
        dtype, ndim = _IDX_DTYPES[magic[2]], magic[3]
        dims_raw = _read_exactly(handle, 4 * ndim, source)
        if len(dims_raw) < 4 * ndim:
            raise ValueError(f"{source}: truncated IDX header: expected {4 + 4 * ndim} bytes, "
                             f"got {4 + len(dims_raw)}")
        dims = struct.unpack(f">{ndim}I", dims_raw)
        need = math.prod(dims) * dtype.itemsize
        if not gz:
            got = os.fstat(raw.fileno()).st_size - 4 - 4 * ndim
            if got < need:
                raise ValueError(f"{source}: truncated IDX data: dims {dims} need {need} bytes, got {got}")
            if got > need:
                raise ValueError(f"{source}: IDX file has {got - need} trailing bytes after dims {dims}")
        if need > max_bytes:
            raise ValueError(f"{source}: expected an IDX payload of at most {max_bytes} bytes, "
                             f"got dims {dims} = {need} bytes")
        data = _read_exactly(handle, need + 1, source)
    if len(data) < need:
        raise ValueError(f"{source}: truncated IDX data: dims {dims} need {need} bytes, got {len(data)}")
    if len(data) > need:
        raise ValueError(f"{source}: IDX file has trailing bytes after dims {dims}")
    return np.frombuffer(data, dtype, count=math.prod(dims)).reshape(dims)


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
    images = _read_idx(img_path)
    labels = _read_idx(lab_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{img_path}: expected uint8 images with 3 dims (N, H, W), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{lab_path}: expected 1-D integer labels, got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > MAX_LABEL):
        raise ValueError(f"{lab_path}: expected labels in [0, {MAX_LABEL}], got [{int(labels.min())}, "
                         f"{int(labels.max())}]")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"count mismatch: {img_path} has {images.shape[0]} images, {lab_path} has {labels.shape[0]} labels")
    return LabelledImages(images[..., None].copy(), labels.astype(np.int64))


# --------------------------------------------------------------------------- npz


_NPZ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, RuntimeError, NotImplementedError,
               zlib.error, struct.error, SyntaxError, tokenize.TokenError, OverflowError, MemoryError, TypeError,
               KeyError, IndexError, UnicodeDecodeError)


def _member_data_offset(path: Path, info: zipfile.ZipInfo) -> int:
    """Offset in the zip file of a stored member's first byte (past its local header)."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise ValueError(f"{path}: bad zip local header for member '{info.filename}'")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_len + extra_len


def npz_member(path: str | os.PathLike[str], member: str, *, memmap: bool = False,
               max_bytes: int = MAX_ARRAY_BYTES) -> np.ndarray:
    """One array of an npz (``member`` without ``.npy``), read with bounded memory.

    The ``.npy`` header is parsed first and its shape x dtype must account for the member's size
    exactly; object arrays are refused. ``memmap=True`` maps a stored (uncompressed) member instead of
    reading it (any size); otherwise at most ``max_bytes`` are read (and the CRC is checked). Every
    failure is a ValueError naming the file, expected vs got.

    Example:
        >>> import tempfile
        >>> path = tempfile.mkdtemp() + "/a.npz"
        >>> np.savez_compressed(path, y=np.arange(3))
        >>> npz_member(path, "y").tolist()
        [0, 1, 2]
    """
    path = Path(path)
    name = member + ".npy"
    try:
        with zipfile.ZipFile(path) as zf:
            try:
                info = zf.getinfo(name)
            except KeyError:
                raise ValueError(f"{path}: no '{name}' member (has {zf.namelist()})") from None
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise ValueError(f"{path}: member '{name}': expected stored or deflated, got compression "
                                 f"method {info.compress_type}")
            with zf.open(info) as f:
                header = read_npy_header(f)
                if header is None:
                    raise ValueError(f"{path}: member '{name}': expected .npy format 1.0, 2.0 or 3.0, "
                                     "got another version")
                shape, fortran, dtype = header
                header_len = f.tell()
            if dtype.hasobject:
                raise ValueError(f"{path}: '{name}' holds Python objects; refusing to load it")
            nbytes = math.prod(shape) * dtype.itemsize
            if header_len + nbytes != info.file_size:
                raise ValueError(f"{path}: member '{name}': header says {dtype} {tuple(shape)} = {nbytes} bytes, "
                                 f"the member holds {info.file_size - header_len}")
            order: Literal["F", "C"] = "F" if fortran else "C"
            if memmap and info.compress_type == zipfile.ZIP_STORED:
                offset = _member_data_offset(path, info) + header_len
                size = os.path.getsize(path)
                if size < offset + nbytes:
                    raise ValueError(f"{path}: truncated ('{name}' needs {offset + nbytes} bytes, file has {size})")
                if nbytes == 0:
                    return np.zeros(shape, dtype, order=order)
                return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=tuple(shape), order=order)
            if memmap:
                logger.warning("%s: member %s is compressed; reading it fully into memory (%d bytes)",
                               path, name, info.file_size)
            if nbytes > max_bytes:
                raise ValueError(f"{path}: member '{name}': expected at most {max_bytes} bytes to read into "
                                 f"memory, got {dtype} {tuple(shape)} = {nbytes} bytes")
            packed = info.compress_size if info.compress_type == zipfile.ZIP_DEFLATED else info.file_size
            if info.file_size > packed * _MAX_DEFLATE_RATIO + 1024:
                raise ValueError(f"{path}: member '{name}': expected at most {_MAX_DEFLATE_RATIO}x its "
                                 f"{packed} stored bytes, got a claimed {info.file_size} bytes")
            with zf.open(info) as member_file:
                reader: Any = member_file
                reader.read(header_len)
                data = bytearray(nbytes)
                view, filled = memoryview(data), 0
                while filled < nbytes:
                    n = reader.readinto(view[filled:])
                    if not n:
                        raise ValueError(f"{path}: member '{name}': truncated, expected {nbytes} data bytes, "
                                         f"got {filled}")
                    filled += n
                reader.read(1)  # reach the end of the member so zipfile checks its CRC
            return np.frombuffer(data, dtype).reshape(tuple(shape), order=order)
    except ValueError:
        raise
    except _NPZ_ERRORS as exc:
        raise ValueError(f"{path}: expected a readable npz, got {type(exc).__name__}: {exc}") from exc


def npz_keys(path: str | os.PathLike[str]) -> list[str]:
    """The array names in an npz (its ``.npy`` members), or a ValueError naming the file."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            return [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
    except _NPZ_ERRORS as exc:
        raise ValueError(f"{path}: expected a readable npz (a zip of .npy files), got "
                         f"{type(exc).__name__}: {exc}") from exc


def load_npz(path: str | os.PathLike[str], split: Split = "train") -> LabelledImages:
    """Load ``x``/``y`` (+ optional ``session``) or ``x_train``/``y_train``/``x_test``/``y_test`` from an npz.

    Grayscale (N, H, W) images get a channel axis. Images must be uint8 (never cast); pickled objects
    are refused; members are read with :func:`npz_member`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"npz file not found: {path}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    keys = set(npz_keys(path))
    if {"x", "y"} <= keys:
        names = ("x", "y", "session")
    elif {f"x_{split}", f"y_{split}"} <= keys:
        names = (f"x_{split}", f"y_{split}", f"session_{split}")
    else:
        raise ValueError(f"{path}: expected keys x, y or x_{split}, y_{split}; got {sorted(keys)}")
    x = npz_member(path, names[0])
    if x.dtype != np.uint8:
        raise ValueError(f"{path}: '{names[0]}': expected uint8 images, got {x.dtype} "
                         f"(convert explicitly; values are never cast)")
    y = npz_member(path, names[1])
    session = npz_member(path, names[2]) if names[2] in keys else None
    if x.ndim == 3:
        x = x[..., None]
    return LabelledImages(x, y, session)


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
        # Non-regular files with an image extension are not skipped: load_image names them.
        files = sorted(f for f in (root / name).iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
        for f in files:
            # The file's way in of edge-agent learn/predict/run: one file, one model input.
            arr = load_image(f) if image_size is None else load_frame(f, (image_size, image_size))
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
