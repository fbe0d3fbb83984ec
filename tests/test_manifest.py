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
TINY_MODEL = REPO / "models" / "tiny"


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
    with pytest.raises(ManifestError, match="manifest fingerprint: expected .* computed from its fields"):
        load_manifest(root)
    del data["fingerprint"]  # a manifest without a stored fingerprint: the file hash still catches it
    (root / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ChecksumError, match="a.tflite"):
        load_manifest(root)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (("preprocessing", "mean", 1), 0.41),
        (("preprocessing", "std", 0), 0.3),
        (("preprocessing", "scale"), 1 / 256),
        (("preprocessing", "channel_order"), "BGR"),
        (("preprocessing", "resize"), "nearest"),
        (("preprocessing", "fit"), "crop"),
        (("preprocessing", "fit"), "letterbox"),
        (("embedding", "mean", 2), 2.5),
        (("embedding", "std", 3), 2.0),
        (("input", "shape", 0), 64),
        (("files", 1, "input_quantization", "scale"), 0.06),
        (("files", 1, "output_quantization", "zero_point"), 4),
    ],
)
def test_every_computing_field_is_covered_by_the_stored_fingerprint(tmp_path: Path, field, value) -> None:
    root = _toy_model_dir(tmp_path)
    data = json.loads((root / MANIFEST_NAME).read_text())
    target = data
    for key in field[:-1]:
        target = target[key]
    target[field[-1]] = value
    (root / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="fingerprint: expected"):
        load_manifest(root)
    stored = data.pop("fingerprint")  # without the stored value the new fingerprint differs
    assert Manifest.from_dict(data).fingerprint != stored


def test_non_computing_fields_keep_the_fingerprint(tmp_path: Path) -> None:
    root = _toy_model_dir(tmp_path)
    data = json.loads((root / MANIFEST_NAME).read_text())
    data["name"] = "renamed"
    data["producer"] = {"tool": "other", "seed": 3}
    data["parity"] = {"samples": 1}
    (root / MANIFEST_NAME).write_text(json.dumps(data))
    assert load_manifest(root).fingerprint == data["fingerprint"]


def test_a_manifest_without_a_fit_policy_squashes_with_the_same_fingerprint(tmp_path: Path) -> None:
    """Manifests written before ``preprocessing.fit`` existed load as squash, fingerprint unchanged."""
    root = _toy_model_dir(tmp_path)
    data = json.loads((root / MANIFEST_NAME).read_text())
    assert data["preprocessing"]["fit"] == "squash"  # written explicitly now
    del data["preprocessing"]["fit"]
    (root / MANIFEST_NAME).write_text(json.dumps(data))
    old = load_manifest(root)
    assert old.preprocessing.fit == "squash" and old.fingerprint == data["fingerprint"]


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (lambda d: d.update(schema_version=True), "schema_version: expected 1, got True"),
        (lambda d: d.update(schema_version=1.0), "schema_version: expected 1, got 1.0"),
        (lambda d: d["preprocessing"].update(mean=[[0.5], 0.4, 0.3]), "preprocessing.mean: expected finite"),
        (lambda d: d["preprocessing"].update(std=[1e400, 0.2, 0.2]), "expected finite numbers, got Infinity"),
        (lambda d: d["preprocessing"].update(channel_order="RGBA"), "channel_order: expected RGB/BGR"),
        (lambda d: d["preprocessing"].update(channel_order="GRAY"), "channel_order: expected RGB/BGR"),
        (lambda d: d["preprocessing"].update(resize="lanczos9"), "preprocessing.resize"),
        (lambda d: d["preprocessing"].update(fit="stretch"), "preprocessing.fit: expected squash/crop/letterbox"),
        (lambda d: d["preprocessing"].update(scael=1.0), r"unknown field\(s\) \['scael'\]"),
        (lambda d: d["embedding"].update(std=[1.0, 0.0, 1.0, 1.0]), "embedding.std: expected positive"),
        (lambda d: d["embedding"].update(mean=[0.0, "x", 1.0, 1.0]), "embedding.mean: expected finite"),
        (lambda d: d["embedding"].update(size=10**9), "embedding.size: expected an int in"),
        (lambda d: d["input"].update(shape=[10**6, 32, 3]), "input.shape"),
        (lambda d: d["files"][1]["input_quantization"].update(zero_point=500), "zero_point: expected an int"),
        (lambda d: d["files"][1]["input_quantization"].update(scale=[1]), "scale: expected int/float"),
        (lambda d: d.update(fingerprint="f" * 64), "fingerprint: expected 'ffff"),
        (lambda d: d.update(extra={"x": 1}), r"unknown field\(s\) \['extra'\]"),
    ],
)
def test_values_are_validated(tmp_path: Path, mutate, pattern: str) -> None:
    root = _toy_model_dir(tmp_path)
    data = json.loads((root / MANIFEST_NAME).read_text())
    mutate(data)
    (root / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=pattern):
        load_manifest(root)


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("[" * 100_000, "nested at most 32 deep, got depth 100000"),
        ('{"a": ' + "[" * 40 + "]" * 40 + "}", "nested at most 32 deep, got depth 41"),
        ('{"schema_version": NaN}', "expected finite numbers, got NaN"),
        ('{"schema_version": ' + "9" * 5000 + "}", "not valid JSON"),
        (" " * (9 << 20), "expected at most"),
        ("\udcff", "expected UTF-8 JSON"),
        ('{"schema_version": 1e400}', "schema_version: expected 1, got inf"),
    ],
)
def test_json_parsing_is_bounded(tmp_path: Path, text: str, pattern: str) -> None:
    (tmp_path / MANIFEST_NAME).write_text(text, encoding="utf-8", errors="surrogateescape")
    with pytest.raises(ManifestError, match=pattern):
        load_manifest(tmp_path)


def test_strings_with_brackets_do_not_count_as_nesting(tmp_path: Path) -> None:
    root = _toy_model_dir(tmp_path)
    data = json.loads((root / MANIFEST_NAME).read_text())
    data["producer"] = {"note": "[" * 1000 + '\\"{' * 50}
    (root / MANIFEST_NAME).write_text(json.dumps(data))
    assert load_manifest(root).producer["note"].startswith("[[[")


def test_manifest_that_is_a_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    import os

    os.mkfifo(tmp_path / MANIFEST_NAME)
    with pytest.raises(ManifestError, match="no manifest.json"):
        load_manifest(tmp_path)


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


def test_fingerprint_covers_computing_fields_only(tmp_path: Path) -> None:
    root = _toy_model_dir(tmp_path)
    first = load_manifest(root)
    renamed = first.with_updates(name="other", producer={"x": 1})
    assert renamed.fingerprint == first.fingerprint
    (root / "a.tflite").write_bytes(b"different")
    changed = first.with_updates(files=(describe_file(root, "a.tflite", "tflite", "fp32"), *first.files[1:]))
    assert changed.fingerprint != first.fingerprint
    pre = first.with_updates(preprocessing=Preprocessing(mean=(0.5, 0.4, 0.31), std=(0.2, 0.2, 0.2)))
    assert pre.fingerprint != first.fingerprint
    stats = first.with_updates(embedding_std=(1.0, 1.0, 1.0, 1.5))
    assert stats.fingerprint != first.fingerprint


def test_shipped_default_model_verifies(tmp_path: Path) -> None:
    manifest = load_manifest(TINY_MODEL)
    assert {(f.format, f.precision) for f in manifest.files} == {
        ("tflite", "fp32"), ("tflite", "int8"), ("onnx", "fp32")
    }
    results = manifest.parity["results"]
    assert set(results) == {f.path for f in manifest.files}
    assert all(r["passed"] for r in results.values())
    # A copy with one flipped byte in the int8 file is refused.
    copy = tmp_path / "tiny"
    shutil.copytree(TINY_MODEL, copy)
    target = copy / manifest.file("tflite", "int8").path
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="expected .* got"):
        load_manifest(copy)
