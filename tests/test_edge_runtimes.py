"""Backbones on real runtimes: parity TFLite vs ONNX, batching, providers, corrupt models."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _edge_common import ROOT, backbone, frames_for, need_model
from edge.errors import (
    ChecksumError,
    InputError,
    ManifestError,
    ModelLoadError,
    ProviderFallbackError,
    RuntimeUnavailableError,
)
from edge.manifest import load_manifest
from edge.runtimes import OnnxBackbone, open_backbone


def _frames(n: int = 24) -> np.ndarray:
    shape = load_manifest(need_model(), verify=False).input_shape
    return frames_for(np.arange(n) % 7, shape, seed=3)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def test_tflite_and_onnx_embeddings_agree_within_manifest_tolerances():
    frames = _frames()
    manifest = backbone("litert-fp32").manifest
    lite = backbone("litert-fp32").embed(frames)
    onnx = backbone("onnx-fp32").embed(frames)
    int8 = backbone("litert-int8").embed(frames)
    tol = manifest.tolerances
    assert lite.shape == onnx.shape == int8.shape == (len(frames), manifest.embedding_size)
    rel = np.abs(lite - onnx).max() / np.abs(lite).max()
    assert rel <= tol["fp32"]["max_rel_diff"], rel
    assert _cosine(lite, onnx).min() >= tol["fp32"]["min_cosine"]
    assert _cosine(lite, int8).min() >= tol["int8"]["min_cosine"]


@pytest.mark.parametrize("case", ["litert-fp32", "litert-int8", "onnx-fp32"])
def test_batch_size_does_not_change_embeddings(case):
    bb = backbone(case)
    frames = _frames(37)  # crosses a chunk boundary and needs a padded tail
    whole = bb.embed(frames)
    single = np.concatenate([bb.embed(f) for f in frames[:5]])  # (H, W, C) frames
    np.testing.assert_allclose(whole[:5], single, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bb.embed(frames[:3]), whole[:3], rtol=1e-5, atol=1e-5)
    assert whole.dtype == np.float32 and np.isfinite(whole).all()


def test_info_reports_what_runs():
    lite, onnx, int8 = backbone("litert-fp32"), backbone("onnx-fp32"), backbone("litert-int8")
    assert lite.info.runtime in ("ai_edge_litert", "tflite_runtime") and lite.info.precision == "fp32"
    assert int8.info.precision == "int8" and int8.info.file.endswith(".tflite")
    assert onnx.info.runtime == "onnxruntime" and onnx.info.providers == ("CPUExecutionProvider",)
    assert onnx.info.threads == 2


def test_gpu_request_without_gpu_never_pretends(caplog):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("a CUDA provider is installed here; fallback is tested on CPU-only machines")
    manifest = load_manifest(need_model())
    with pytest.raises(ProviderFallbackError, match="expected CUDAExecutionProvider"):
        OnnxBackbone(need_model(), manifest, providers="cuda", on_fallback="error")
    with caplog.at_level(logging.WARNING, logger="edge.runtimes"):
        bb = OnnxBackbone(need_model(), manifest, providers="tensorrt", on_fallback="warn")
    assert bb.info.providers == ("CPUExecutionProvider",)
    assert "TensorrtExecutionProvider" in caplog.text and "CPUExecutionProvider" in caplog.text
    with pytest.raises(RuntimeUnavailableError, match="none of the requested"):
        OnnxBackbone(need_model(), manifest, providers=["CUDAExecutionProvider"])


@pytest.mark.gpu
def test_cuda_provider_runs_when_present():
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("no CUDA execution provider (install onnxruntime-gpu on a GPU machine)")
    bb = open_backbone(need_model(), runtime="onnx", providers="cuda", on_fallback="error")
    assert bb.info.providers[0] == "CUDAExecutionProvider"
    frames = _frames(8)
    np.testing.assert_allclose(bb.embed(frames), backbone("onnx-fp32").embed(frames), atol=1e-3)


@pytest.fixture
def model_copy(tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(need_model(), dst)
    return dst


def test_changed_byte_in_model_file_is_a_checksum_error(model_copy):
    manifest = load_manifest(model_copy)
    target = model_copy / manifest.file("tflite", "fp32").path
    blob = bytearray(target.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    target.write_bytes(bytes(blob))
    with pytest.raises(ChecksumError, match=r"sha256 expected [0-9a-f]{64}, got [0-9a-f]{64}"):
        open_backbone(model_copy, runtime="litert")


@pytest.mark.parametrize("runtime", ["litert", "onnx"])
def test_truncated_model_without_verification_is_a_load_error(model_copy, runtime):
    manifest = load_manifest(model_copy)
    entry = manifest.file("tflite" if runtime == "litert" else "onnx", "fp32")
    path = model_copy / entry.path
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match="cannot load"):
        open_backbone(model_copy, runtime=runtime, verify=False)


def test_tampered_manifest_is_refused(model_copy):
    path = model_copy / "manifest.json"
    data = json.loads(path.read_text())
    data["schema_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="expected 1, got 99"):
        open_backbone(model_copy)
    data["schema_version"] = 1
    data.pop("fingerprint", None)  # test the runtime's own cross-check, not the stored fingerprint
    data["embedding"]["size"] = data["embedding"]["size"] + 1
    data["embedding"]["mean"] = data["embedding"]["std"] = None
    path.write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match="embedding size expected"):
        open_backbone(model_copy, runtime="litert")


def test_int8_quantization_cross_checked_against_interpreter(model_copy):
    path = model_copy / "manifest.json"
    data = json.loads(path.read_text())
    data.pop("fingerprint", None)  # test the runtime's own cross-check, not the stored fingerprint
    for entry in data["files"]:
        if entry["precision"] == "int8":
            entry["input_quantization"]["scale"] *= 2.0
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="input quantization: expected .*got \\(from the interpreter\\)"):
        open_backbone(model_copy, runtime="litert", precision="int8")


def test_bad_frames_raise_input_error():
    bb = backbone("litert-fp32")
    h, w, c = bb.manifest.input_shape
    with pytest.raises(InputError, match="expected at least one frame"):
        bb.embed(np.zeros((0, h, w, c), np.uint8))
    with pytest.raises(InputError, match="got ndim 2"):
        bb.embed(np.zeros((h, w), np.uint8))
    with pytest.raises(InputError, match="got 4"):
        bb.embed(np.zeros((1, h, w, 4), np.uint8))
    with pytest.raises(InputError, match="got int64"):
        bb.embed(np.zeros((1, h, w, c), np.int64))
    bad = np.zeros((1, h, w, c), np.float32)
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN or inf"):
        bb.embed(bad)
    with pytest.raises(InputError, match=r"expected shape \(None"):
        bb.embed_preprocessed(np.zeros((1, h + 1, w, c), np.float32))


def test_frames_of_other_size_and_gray_are_adapted():
    bb = backbone("litert-fp32")
    h, w, _ = bb.manifest.input_shape
    frames = _frames(2)
    big = np.repeat(np.repeat(frames, 2, axis=1), 2, axis=2)  # 2x nearest upscale
    cos = _cosine(bb.embed(frames), bb.embed(big))
    assert cos.min() > 0.9
    gray = frames[..., :1]
    assert bb.embed(gray).shape == (2, bb.embedding_size)
    float_frames = frames.astype(np.float32)
    np.testing.assert_allclose(bb.embed(float_frames), bb.embed(frames), rtol=1e-6, atol=1e-6)


def test_missing_runtime_names_the_package():
    code = (
        "import sys; sys.modules['onnxruntime'] = None\n"
        "from edge.errors import RuntimeUnavailableError\n"
        "from edge.runtimes import open_backbone\n"
        "try:\n"
        f"    open_backbone({str(need_model())!r}, runtime='onnx')\n"
        "except RuntimeUnavailableError as e:\n"
        "    print('ERR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         timeout=60)
    assert "ERR" in out.stdout and "pip install onnxruntime" in out.stdout, out.stdout + out.stderr


def test_litert_info_line_goes_to_logging_and_other_stderr_lines_stay():
    """LiteRT's XNNPACK INFO line (printed to fd 2 by C++) is routed to logging at DEBUG, not
    printed on every CLI call; any other line written to fd 2 in that window is passed through."""
    need_model()
    code = """
import logging, os
from edge.runtimes import litert_log_to_logging, open_backbone
import numpy as np
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())
logging.getLogger("edge.runtimes").addHandler(Keep())
logging.getLogger("edge.runtimes").setLevel(logging.DEBUG)
with litert_log_to_logging():
    os.write(2, b"INFO: routed\\nERROR: kept on stderr\\n")
bb = open_backbone("models/tiny", runtime="litert", num_threads=1)
bb.embed(np.zeros((2, *bb.manifest.input_shape), np.uint8))
print(records)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "XNNPACK" not in out.stderr and "INFO: routed" not in out.stderr
    assert "ERROR: kept on stderr" in out.stderr
    assert "LiteRT: routed" in out.stdout and "LiteRT: Created TensorFlow Lite XNNPACK delegate for CPU." in out.stdout


def test_edge_agent_status_prints_nothing_on_stderr(tmp_path):
    need_model()
    cli = shutil.which("edge-agent", path=str(Path(sys.executable).parent))
    if cli is None:
        pytest.skip("edge-agent is not installed in this environment")
    out = subprocess.run([cli, "status", "--model", str(ROOT / "models" / "tiny"), "--state",
                          str(tmp_path / "state")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stderr == "" and "model: tiny" in out.stdout


# ----------------------------------------------------------------------------- the lean input path
from edge.manifest import Preprocessing, QuantParams  # noqa: E402
from edge.preprocess import InputMapper, as_frame_batch, preprocess, quantize  # noqa: E402

_PRE = [
    Preprocessing(scale=1 / 255, mean=(0.52, 0.54, 0.47), std=(0.19, 0.18, 0.16)),
    Preprocessing(scale=1 / 127.5, mean=(1.0, 1.0, 1.0), std=(1.0, 1.0, 1.0)),  # one shared table
    Preprocessing(scale=1 / 255, mean=(0.1, 0.2, 0.3), std=(0.5, 0.4, 0.3), channel_order="BGR"),
]


@pytest.mark.parametrize("pre", _PRE)
def test_lookup_tables_give_the_same_bits_as_preprocess_and_quantize(pre):
    """The per-channel tables of the float32 and int8 inputs are exact, not approximations."""
    frames = np.random.default_rng(0).integers(0, 256, size=(5, 6, 7, 3), dtype=np.uint8)
    frames[0, 0, 0] = (0, 255, 128)  # both ends of the range
    want = preprocess(frames, (6, 7, 3), pre)
    got = InputMapper((6, 7, 3), pre, "float32")(as_frame_batch(frames))
    assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), want.view(np.uint32))
    q = QuantParams(scale=0.0173, zero_point=-3, dtype="int8")
    got8 = InputMapper((6, 7, 3), pre, "int8", q)(as_frame_batch(frames))
    assert got8.dtype == np.int8 and np.array_equal(got8, quantize(want, q))


def test_uint8_model_input_passes_camera_bytes_unchanged_and_rounds_other_frames():
    pre = _PRE[0]
    frames = np.random.default_rng(1).integers(0, 256, size=(3, 4, 4, 3), dtype=np.uint8)
    mapper = InputMapper((4, 4, 3), pre, "uint8")
    got = mapper(frames)
    assert got.dtype == np.uint8 and np.array_equal(got, frames)
    floats = np.minimum(frames.astype(np.float32) + 0.4, 255)  # float pixel values are rounded to the nearest byte
    assert np.array_equal(mapper(as_frame_batch(floats)), frames)
    gray = frames[..., :1]  # another channel count takes the general path (replicated to RGB)
    assert np.array_equal(mapper(as_frame_batch(gray)), np.repeat(gray, 3, axis=3))
    bgr = InputMapper((4, 4, 3), Preprocessing(channel_order="BGR"), "uint8")
    assert np.array_equal(bgr(frames), frames[..., ::-1])


@pytest.mark.parametrize("case", ["litert-fp32", "litert-int8", "onnx-fp32"])
def test_embed_equals_the_preprocessed_path_bit_for_bit(case):
    """embed (table lookup, views, in-place dequantization) == the reference preprocess path."""
    bb = backbone(case)
    frames = _frames(37)
    x = preprocess(frames, bb.manifest.input_shape, bb.manifest.preprocessing)
    np.testing.assert_array_equal(bb.embed(frames), bb.embed_preprocessed(x))
    np.testing.assert_array_equal(bb.embed_batch(as_frame_batch(frames[:1])), bb.embed(frames[:1]))


def test_limit_blas_threads_sets_numpys_openblas_and_the_agent_uses_one_thread():
    """OpenBLAS's own getter reads back what limit_blas_threads set (skips where NumPy has another BLAS)."""
    import ctypes

    from edge.runtimes import limit_blas_threads

    changed = limit_blas_threads(1)
    if not changed:
        pytest.skip("no OpenBLAS library is loaded in this process (another BLAS, or not Linux)")
    lib = ctypes.CDLL(changed[0])
    getter = next(getattr(lib, n) for n in ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
                                            "openblas_get_num_threads64_", "openblas_get_num_threads")
                  if hasattr(lib, n))
    try:
        assert limit_blas_threads(2) == changed
        assert getter() == min(2, os.cpu_count() or 1)  # OpenBLAS caps at the core count
        from edge.agent import Agent, AgentConfig

        Agent(backbone("litert-fp32"), AgentConfig(max_classes=4))
        assert getter() == 1
    finally:
        limit_blas_threads(1)
