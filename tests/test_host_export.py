"""Host pipeline end to end (TensorFlow): pretrain -> export -> manifest, parity, runtimes.

One small pretraining run is shared by the module; each test checks one promise of the export.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.tf
pytest.importorskip("tensorflow", reason="host extra (TensorFlow) not installed")

from edge.manifest import describe_file, load_manifest, write_manifest  # noqa: E402
from firmware_sim.data.generator import make_pretraining_set  # noqa: E402
from host.cli import main as host_main  # noqa: E402
from host.export import (  # noqa: E402
    FP32_TFLITE,
    INT8_TFLITE,
    ONNX_FILE,
    ExportError,
    ExportOptions,
    export_run,
    tflite_ops,
)
from host.parity import ParityError, check_parity  # noqa: E402
from host.pretrain import PretrainConfig, embedding_spread, pretrain, recalibrate_batchnorm  # noqa: E402


@pytest.fixture(scope="module")
def source_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    x, y = make_pretraining_set(n_objects=12, frames=8, sessions=3, image_size=32, seed=5)
    path = tmp_path_factory.mktemp("data") / "pretrain.npz"
    np.savez(path, x=x, y=y)
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, source_npz: Path) -> Path:
    out = tmp_path_factory.mktemp("run")
    config = PretrainConfig(data=f"npz:{source_npz}", epochs=6, embedding_size=32, batch_size=32,
                            calibration_frames=64, heldout_frames=32, seed=1)
    result = pretrain(config, out, progress=False)
    assert result.val_accuracy > 1.5 / 12  # learned something beyond chance
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, run_dir: Path) -> Path:
    return export_run(run_dir, name="tiny", out_root=tmp_path_factory.mktemp("models"))


@pytest.mark.slow
def test_export_writes_three_verified_files_and_a_complete_manifest(model_dir: Path) -> None:
    manifest = load_manifest(model_dir)  # verifies every sha256
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(
        ["manifest.json", FP32_TFLITE, INT8_TFLITE, ONNX_FILE])
    assert manifest.input_shape == (32, 32, 3) and manifest.embedding_size == 32
    assert len(manifest.embedding_mean or ()) == 32 and all(s > 0 for s in manifest.embedding_std or ())
    int8 = manifest.file("tflite", "int8")
    # uint8 input, normalisation inside the graph: the device passes camera bytes unchanged
    assert manifest.input_dtype == "uint8"
    assert int8.input_quantization is not None
    assert (int8.input_quantization.dtype, int8.input_quantization.scale, int8.input_quantization.zero_point) \
        == ("uint8", 1.0, 0)
    assert int8.output_quantization is not None and int8.output_quantization.scale > 0
    assert int8.bytes < manifest.file("tflite", "fp32").bytes
    producer = manifest.producer
    assert producer["tensorflow_version"].startswith("2.") and producer["training_data"].startswith("npz:")
    assert producer["pretrain"]["val_accuracy"] > 0


@pytest.mark.slow
def test_parity_figures_are_recorded_and_within_tolerance(model_dir: Path) -> None:
    manifest = load_manifest(model_dir)
    results = manifest.parity["results"]
    assert manifest.parity["samples"] == 32
    assert results[FP32_TFLITE]["max_rel_diff"] <= manifest.tolerances["fp32"]["max_rel_diff"]
    assert results[ONNX_FILE]["max_rel_diff"] <= manifest.tolerances["fp32"]["max_rel_diff"]
    assert results[INT8_TFLITE]["min_cosine"] >= manifest.tolerances["int8"]["min_cosine"]
    assert all(r["passed"] for r in results.values())


@pytest.mark.slow
def test_tflite_files_use_builtin_ops_only(model_dir: Path) -> None:
    for name in (FP32_TFLITE, INT8_TFLITE):
        ops = tflite_ops((model_dir / name).read_bytes())
        assert "CONV_2D" in ops
        assert not [op for op in ops if op.startswith("Flex") or op == "CUSTOM"]


@pytest.mark.slow
def test_artifacts_run_in_a_process_that_never_imports_tensorflow(model_dir: Path) -> None:
    code = f"""
import sys, numpy as np
from edge.manifest import load_manifest
m = load_manifest({str(model_dir)!r})
x = np.random.default_rng(0).integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)  # camera bytes
from ai_edge_litert.interpreter import Interpreter
outs = []
for prec in ("fp32", "int8"):
    f = m.file("tflite", prec)
    it = Interpreter(model_path={str(model_dir)!r} + "/" + f.path)
    it.allocate_tensors()
    d = it.get_input_details()[0]
    it.set_tensor(d["index"], x[:1]); it.invoke()
    outs.append(it.get_tensor(it.get_output_details()[0]["index"]).shape)
import onnxruntime as ort
s = ort.InferenceSession({str(model_dir)!r} + "/" + m.file("onnx").path, providers=["CPUExecutionProvider"])
outs.append(s.run(None, {{s.get_inputs()[0].name: x}})[0].shape)
assert "tensorflow" not in sys.modules, "tensorflow was imported"
print(outs)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[(1, 32), (1, 32), (4, 32)]"


@pytest.mark.slow
def test_parity_failure_is_detected_for_a_wrong_file(model_dir: Path, run_dir: Path, tmp_path: Path) -> None:
    # Replace the fp32 file by another backbone's export (consistent hash, wrong weights).
    other_run = tmp_path / "other-run"
    shutil.copytree(run_dir, other_run)
    import keras

    model = keras.models.load_model(other_run / "backbone.keras", compile=False)
    for weight in model.weights:
        if weight.name.endswith("kernel"):
            weight.assign(np.random.default_rng(3).normal(size=weight.shape).astype(np.float32) * 0.1)
    from host.export import convert_tflite_fp32, with_pixel_input

    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    manifest = load_manifest(broken, verify=False)
    (broken / FP32_TFLITE).write_bytes(convert_tflite_fp32(with_pixel_input(model, manifest.preprocessing)))
    files = tuple(describe_file(broken, FP32_TFLITE, "tflite", "fp32") if f.path == FP32_TFLITE else f
                  for f in manifest.files)
    manifest = manifest.with_updates(files=files)
    write_manifest(manifest, broken)
    with np.load(run_dir / "calibration.npz") as calib:
        frames = calib["heldout"]
    reference = keras.models.load_model(run_dir / "backbone.keras", compile=False).predict(
        (frames.astype(np.float32) / 255 - np.asarray(manifest.preprocessing.mean, np.float32))
        / np.asarray(manifest.preprocessing.std, np.float32), verbose=0)
    with pytest.raises(ParityError, match=rf"{FP32_TFLITE} \(tflite fp32\): max relative diff expected <= "):
        check_parity(broken, manifest, frames, reference)
    # The untouched files still pass against the same reference.
    check_parity(model_dir, load_manifest(model_dir), frames, reference)


@pytest.mark.slow
def test_output_directory_holding_another_model_is_refused(model_dir: Path, run_dir: Path) -> None:
    before = (model_dir / "manifest.json").read_bytes()
    with pytest.raises(ExportError, match="already holds model 'tiny'.*--overwrite"):
        export_run(run_dir, name="tiny", out_root=model_dir.parent)
    assert (model_dir / "manifest.json").read_bytes() == before
    clutter = model_dir.parent / "clutter"
    clutter.mkdir()
    (clutter / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty and holds no manifest.json"):
        export_run(run_dir, name="clutter", out_root=model_dir.parent)
    assert (clutter / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_overwrite_replaces_atomically_and_leaves_no_staging(run_dir: Path, tmp_path: Path) -> None:
    first = export_run(run_dir, name="m", out_root=tmp_path, options=ExportOptions(int8=False, onnx=False))
    assert [f.path for f in load_manifest(first).files] == [FP32_TFLITE]
    again = export_run(run_dir, name="m", out_root=tmp_path, options=ExportOptions(overwrite=True))
    assert len(load_manifest(again).files) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


@pytest.mark.slow
def test_batchnorm_recalibration_restores_sound_statistics(run_dir: Path, source_npz: Path) -> None:
    import keras

    from host.pretrain import normalise

    record = json.loads((run_dir / "pretrain.json").read_text())
    model = keras.models.load_model(run_dir / "backbone.keras", compile=False)
    with np.load(source_npz) as data:
        x = normalise(data["x"][:200], record["preprocessing"]["mean"], record["preprocessing"]["std"])
    healthy = embedding_spread(model.predict(x, verbose=0))
    bn = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in bn:  # what an unconverged moving average looks like
        layer.moving_mean.assign(np.full(layer.moving_mean.shape, 50.0, np.float32))
        layer.moving_variance.assign(np.full(layer.moving_variance.shape, 1e-4, np.float32))
    broken = embedding_spread(model.predict(x, verbose=0))
    assert recalibrate_batchnorm(model, x) == len(bn)
    first_inputs = keras.Model(model.input, bn[0].input).predict(x, verbose=0)
    np.testing.assert_allclose(bn[0].moving_mean.numpy(), first_inputs.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)
    fixed = embedding_spread(model.predict(x, verbose=0))
    assert broken < 0.05 < fixed
    assert fixed == pytest.approx(healthy, rel=0.5)


def test_cli_reports_clear_errors_with_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert host_main(["pretrain", "--data", "csv:/nowhere", "--out", str(tmp_path / "r")]) == 2
    assert "csv" in capsys.readouterr().err
    assert host_main(["pretrain", "--backbone", "resnet9000", "--out", str(tmp_path / "r")]) == 2
    assert "unknown architecture 'resnet9000'" in capsys.readouterr().err
    assert host_main(["export", "--run", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "expected backbone.keras, not found" in err and "edge-host pretrain" in err


@pytest.mark.slow
def test_cli_export_from_run_prints_sizes_and_parity(run_dir: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code = host_main(["-q", "export", "--run", str(run_dir), "--name", "viacli", "--out", str(tmp_path),
                      "--no-onnx"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "backbone_int8.tflite" in out and "min cos" in out
    assert load_manifest(tmp_path / "viacli").name == "viacli"
    assert os.listdir(tmp_path) == ["viacli"]


@pytest.mark.slow
def test_uint8_input_files_take_camera_bytes_and_match_the_float32_export(run_dir: Path, model_dir: Path,
                                                                        tmp_path: Path) -> None:
    """Every uint8-input file has a uint8 input tensor; the older float32-input export still
    works and computes the same embeddings (fp32 within the fp32 tolerance)."""
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    from edge.runtimes import open_backbone

    for name in (FP32_TFLITE, INT8_TFLITE):
        detail = Interpreter(model_path=str(model_dir / name)).get_input_details()[0]
        assert np.dtype(detail["dtype"]) == np.uint8, (name, detail["dtype"])
    session = ort.InferenceSession(str(model_dir / ONNX_FILE), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(uint8)"
    assert all(r["input_dtype"] == "uint8" for r in load_manifest(model_dir).parity["results"].values())

    old = export_run(run_dir, name="float-input", out_root=tmp_path,
                     options=ExportOptions(uint8_input=False, int8=False))
    assert load_manifest(old).input_dtype == "float32"
    frames = np.load(run_dir / "calibration.npz")["heldout"][:16]
    for runtime in ("litert", "onnx"):
        with open_backbone(model_dir, runtime=runtime) as new_bb, open_backbone(old, runtime=runtime) as old_bb:
            a, b = new_bb.embed(frames), old_bb.embed(frames)
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max(), runtime
