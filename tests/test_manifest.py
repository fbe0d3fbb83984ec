"""Manifest schema: round trip, validation errors (expected vs got) and tamper detection."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edge.errors import ChecksumError, ManifestError
from edge.manifest import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    Manifest,
    Preprocessing,
    QuantParams,
    describe_file,
    load_manifest,
    write_manifest,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "models" / "default"


def _toy_model_dir(tmp_path: Path) -> Path:
    root = tmp_path / "toy"
    root.mkdir()
    (root / "a.tflite").write_bytes(b"tflite-bytes-" * 10)
    (root / "b.tflite").write_bytes(b"int8-bytes-" * 10)
    (root / "c.onnx").write_bytes(b"onnx-bytes-" * 10)
    q = QuantParams(scale=0.05, zero_point=-3)
    manifest = Manifest(
        name="toy",
        architecture="tiny_cnn_32",
        input_shape=(32, 32, 3),
        preprocessing=Preprocessing(mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2)),
        embedding_size=4,
        embedding_mean=(0.0, 1.0, 2.0, 3.0),
        embedding_std=(1.0, 1.0, 1.0, 1.0),
        files=(
            describe_file(root, "a.tflite", "tflite", "fp32"),
            describe_file(root, "b.tflite", "tflite", "int8", q, q),
            describe_file(root, "c.onnx", "onnx", "fp32"),
        ),
        producer={"tool": "test"},
    )
    write_manifest(manifest, root)
    return root


def test_round_trip_preserves_every_field(tmp_path: Path) -> None:
    root = _toy_model_dir(tmp_path)
    loaded = load_manifest(root)
    again = Manifest.from_dict(json.loads(json.dumps(loaded.to_dict())))
    assert again == loaded
    assert loaded.schema_version == SCHEMA_VERSION
    assert loaded.file("tflite", "int8").input_quantization == QuantParams(0.05, -3, "int8")
    assert loaded.embedding_mean == (0.0, 1.0, 2.0, 3.0)


def test_changed_byte_in_a_model_file_is_refused_with_expected_and_got(tmp_path: Path) -> None:
    root = _toy_model_dir(tmp_path)
    recorded = load_manifest(root).file("onnx").sha256
    data = bytearray((root / "c.onnx").read_bytes())
    data[7] ^= 0x01
    (root / "c.onnx").write_bytes(bytes(data))
    with pytest.raises(ChecksumError) as err:
        load_manifest(root)
    message = str(err.value)
    assert "c.onnx" in message and f"expected {recorded}" in message and "got " in message
    load_manifest(root, verify=False)  # the manifest itself still parses


def test_tampered_manifest_hash_is_refused(tmp_path: Path) -> None:
    root = _toy_model_dir(tmp_path)
    data = json.loads((root / MANIFEST_NAME).read_text())
    data["files"][0]["sha256"] = "0" * 64
    (root / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ChecksumError, match="a.tflite"):
        load_manifest(root)


def test_missing_listed_file_is_named(tmp_path: Path) -> None:
    root = _toy_model_dir(tmp_path)
    (root / "b.tflite").unlink()
    with pytest.raises(ChecksumError, match="b.tflite.*missing"):
        load_manifest(root)


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (lambda d: d.update(schema_version=99), "schema_version: expected 1, got 99"),
        (lambda d: d["input"].update(shape=[32, 32]), "input.shape"),
        (lambda d: d["input"].update(layout="NCHW"), "input.layout: expected 'NHWC'"),
        (lambda d: d["preprocessing"].update(std=[0.2, 0.0, 0.2]), "preprocessing.std"),
        (lambda d: d["preprocessing"].update(mean=[0.5]), "preprocessing.mean length: expected 3, got 1"),
        (lambda d: d["embedding"].update(size="4"), "embedding.size: expected int"),
        (lambda d: d["embedding"].update(mean=[0.0]), "embedding.mean length: expected 4, got 1"),
        (lambda d: d["files"][0].update(format="pb"), r"files\[0\].format"),
        (lambda d: d["files"][0].update(path="../escape.tflite"), r"files\[0\].path"),
        (lambda d: d["files"][1].pop("input_quantization"), "input_quantization"),
        (lambda d: d.update(files=[]), "files: expected at least one"),
        (lambda d: d.pop("name"), "name: expected a value"),
    ],
)
def test_malformed_manifest_names_field_expected_and_got(tmp_path: Path, mutate, pattern: str) -> None:
    root = _toy_model_dir(tmp_path)
    data = json.loads((root / MANIFEST_NAME).read_text())
    mutate(data)
    (root / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=pattern):
        load_manifest(root)


def test_missing_or_invalid_manifest_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no manifest.json"):
        load_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(tmp_path)


def test_unknown_file_kind_lists_available(tmp_path: Path) -> None:
    manifest = load_manifest(_toy_model_dir(tmp_path))
    with pytest.raises(ManifestError, match="no onnx/int8 file.*tflite/fp32"):
        manifest.file("onnx", "int8")


def test_fingerprint_depends_on_file_hashes_only(tmp_path: Path) -> None:
    root = _toy_model_dir(tmp_path)
    first = load_manifest(root)
    renamed = first.with_updates(name="other")
    assert renamed.fingerprint == first.fingerprint
    (root / "a.tflite").write_bytes(b"different")
    changed = first.with_updates(files=(describe_file(root, "a.tflite", "tflite", "fp32"), *first.files[1:]))
    assert changed.fingerprint != first.fingerprint


def test_shipped_default_model_verifies(tmp_path: Path) -> None:
    manifest = load_manifest(DEFAULT_MODEL)
    assert {(f.format, f.precision) for f in manifest.files} == {
        ("tflite", "fp32"), ("tflite", "int8"), ("onnx", "fp32")
    }
    results = manifest.parity["results"]
    assert set(results) == {f.path for f in manifest.files}
    assert all(r["passed"] for r in results.values())
    # A copy with one flipped byte in the int8 file is refused.
    copy = tmp_path / "default"
    shutil.copytree(DEFAULT_MODEL, copy)
    target = copy / manifest.file("tflite", "int8").path
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="expected .* got"):
        load_manifest(copy)
