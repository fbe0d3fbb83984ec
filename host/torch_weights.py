"""Read a PyTorch legacy (pre-zip) ``.pth`` state dict into NumPy arrays, without torch.

The legacy format (``torch.save(..., _use_new_zipfile_serialization=False)``, the only format
before PyTorch 1.6) is a byte stream of:

1. a pickled magic number (``0x1950a86a20f9469cfc6c``),
2. a pickled protocol version (``1001``),
3. a pickled ``sys_info`` dict (byte order, type sizes),
4. the object itself, pickled with *persistent ids* ``('storage', StorageType, key, location,
   numel[, view_metadata])`` in place of tensor data, and tensors rebuilt by
   ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)``,
5. a pickled list of the storage keys, in the order their bytes follow,
6. for each storage: an int64 little-endian element count, then the raw elements.

A pickle can call any importable function while it loads, so :class:`_StateDictUnpickler` admits
exactly three kinds of global: ``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``
and the ``torch.*Storage`` types, each mapped to a NumPy stand-in. Anything else (``os.system``,
``torch.nn.Module`` subclasses, new-format zip files) is refused with :class:`UnsafeWeightsError`
before it runs. Tensors come back as C-contiguous NumPy arrays with torch's shapes.

Example:
    >>> from host.torch_weights import load_legacy_state_dict      # doctest: +SKIP
    >>> weights = load_legacy_state_dict("efficientnet-lite0-57934424.pth")  # doctest: +SKIP
    >>> weights["_conv_stem.weight"].shape                          # doctest: +SKIP
    (32, 3, 3, 3)
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["LEGACY_MAGIC", "UnsafeWeightsError", "WeightsFormatError", "load_legacy_state_dict"]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

#: torch storage type name -> little-endian NumPy dtype of its elements.
STORAGE_DTYPES: dict[str, str] = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


class WeightsFormatError(ValueError):
    """The file is not a readable legacy torch state dict (truncated, wrong magic, zip format)."""


class UnsafeWeightsError(WeightsFormatError):
    """The pickle asked for a global other than an OrderedDict, a tensor rebuild or a storage type."""


@dataclass(frozen=True)
class _StorageType:
    name: str
    dtype: np.dtype


@dataclass
class _Storage:
    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


@dataclass
class _PendingTensor:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    extra: tuple[Any, ...] = field(default=())

    def materialise(self, source: str) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise WeightsFormatError(f"{source}: storage {self.storage.key!r} has no data")
        if not self.size:
            if self.offset >= len(data):
                raise WeightsFormatError(f"{source}: scalar tensor offset {self.offset} beyond storage "
                                         f"{self.storage.key!r} of {len(data)} elements")
            return np.array(data[self.offset])
        if any(s < 0 for s in self.size) or any(s < 0 for s in self.stride) or len(self.size) != len(self.stride):
            raise WeightsFormatError(f"{source}: tensor size {self.size} / stride {self.stride} are not valid")
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride)) if all(self.size) else 0
        if last >= max(len(data), 1) and all(self.size):
            raise WeightsFormatError(
                f"{source}: tensor of size {self.size} at offset {self.offset} needs element {last}, "
                f"storage {self.storage.key!r} has {len(data)}"
            )
        view = np.lib.stride_tricks.as_strided(
            data[self.offset:], shape=self.size, strides=tuple(s * data.itemsize for s in self.stride),
            writeable=False,
        )
        return np.ascontiguousarray(view)


def _rebuild_tensor_v2(storage: _Storage, storage_offset: int, size: tuple[int, ...],
                       stride: tuple[int, ...], *extra: Any) -> _PendingTensor:
    if not isinstance(storage, _Storage):
        raise UnsafeWeightsError(f"tensor rebuild: expected a storage, got {type(storage).__name__}")
    return _PendingTensor(storage, int(storage_offset), tuple(int(v) for v in size),
                          tuple(int(v) for v in stride), extra)


class _StateDictUnpickler(pickle.Unpickler):
    """Admits only OrderedDict, the tensor rebuild function and storage types (as NumPy stand-ins)."""

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file)
        self._source = source
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name, np.dtype(STORAGE_DTYPES[name]))
        raise UnsafeWeightsError(
            f"{self._source}: refused to load global '{module}.{name}'; expected only "
            "collections.OrderedDict, torch._utils._rebuild_tensor_v2 and torch.*Storage types"
        )

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)):
            raise UnsafeWeightsError(f"{self._source}: unexpected persistent id {pid!r}: expected "
                                     "('storage', StorageType, key, location, numel)")
        if len(pid) > 5 and pid[5] is not None:
            raise WeightsFormatError(f"{self._source}: storage views are not supported (got {pid!r})")
        storage_type, key, numel = pid[1], pid[2], int(pid[4])
        storage = self.storages.get(key)
        if storage is None:
            storage = self.storages[key] = _Storage(key, storage_type.dtype, numel)
        elif storage.dtype != storage_type.dtype:
            raise WeightsFormatError(f"{self._source}: storage {key!r} used as {storage.dtype} and "
                                     f"{storage_type.dtype}")
        return storage


class _PlainUnpickler(pickle.Unpickler):
    """For the header and the key list: no globals, no persistent ids."""

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        raise UnsafeWeightsError(f"{self._source}: refused global '{module}.{name}' in a header pickle")


def _read_exact(stream: io.BufferedIOBase, count: int, what: str, source: str) -> bytes:
    data = stream.read(count)
    if len(data) != count:
        raise WeightsFormatError(f"{source}: truncated while reading {what}: expected {count} bytes, "
                                 f"got {len(data)}")
    return data


def load_legacy_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Load a legacy-format torch state dict as ``{name: ndarray}`` without importing torch.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeWeightsError: the pickle asks for a global outside the admitted few.
        WeightsFormatError: wrong magic/protocol, big-endian file, zip-format file, truncation.
    """
    source = os.fspath(path)
    if not os.path.isfile(source):
        raise FileNotFoundError(f"weights file not found: {source}")
    if zipfile.is_zipfile(source):
        raise WeightsFormatError(
            f"{source}: this is PyTorch's zip format (torch >= 1.6 default); expected the legacy "
            "format. Re-save it with torch.save(sd, f, _use_new_zipfile_serialization=False)"
        )
    with open(source, "rb") as f:
        stream: io.BufferedIOBase = io.BytesIO(f.read())
    try:
        magic = _PlainUnpickler(stream, source).load()
        if magic != LEGACY_MAGIC:
            raise WeightsFormatError(f"{source}: magic number expected {LEGACY_MAGIC:#x}, got {magic!r}")
        protocol = _PlainUnpickler(stream, source).load()
        if protocol != LEGACY_PROTOCOL:
            raise WeightsFormatError(f"{source}: protocol version expected {LEGACY_PROTOCOL}, got {protocol!r}")
        sys_info = _PlainUnpickler(stream, source).load()
        if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
            raise WeightsFormatError(f"{source}: expected a little-endian file, got sys_info {sys_info!r}")
        unpickler = _StateDictUnpickler(stream, source)
        obj = unpickler.load()
        keys = _PlainUnpickler(stream, source).load()
    except WeightsFormatError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, MemoryError, OverflowError) as exc:
        raise WeightsFormatError(f"{source}: truncated or corrupt pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise WeightsFormatError(f"{source}: expected a state dict (OrderedDict), got {type(obj).__name__}")
    if not isinstance(keys, list) or sorted(keys) != sorted(unpickler.storages):
        raise WeightsFormatError(f"{source}: storage key list {keys!r:.80} does not match the "
                                 f"{len(unpickler.storages)} storages the state dict refers to")
    for key in keys:
        storage = unpickler.storages[key]
        (numel,) = struct.unpack("<q", _read_exact(stream, 8, f"storage {key} size", source))
        if numel != storage.numel:
            raise WeightsFormatError(f"{source}: storage {key!r} expected {storage.numel} elements, "
                                     f"header says {numel}")
        raw = _read_exact(stream, numel * storage.dtype.itemsize, f"storage {key} data", source)
        storage.data = np.frombuffer(raw, dtype=storage.dtype)
    rest = stream.read(1)
    if rest:
        raise WeightsFormatError(f"{source}: unexpected bytes after the last storage")
    out: dict[str, np.ndarray] = {}
    for name, value in obj.items():
        if not isinstance(name, str):
            raise WeightsFormatError(f"{source}: state dict key expected str, got {type(name).__name__}")
        if not isinstance(value, _PendingTensor):
            raise WeightsFormatError(f"{source}: entry {name!r} expected a tensor, got {type(value).__name__}")
        out[name] = value.materialise(source)
    return out
