"""The model manifest: the only contract between the host tool and the device.

A model directory holds ``manifest.json`` and the files it lists (TFLite fp32, TFLite int8, ONNX).
It may also list trainable heads (``heads``: ``.tflite`` files with ``train``/``infer`` signatures,
written by ``edge-host export-head``, run by `edge.tflite_head`). Heads are optional (a manifest
without them is valid, same ``schema_version``) and are not part of the backbone's `fingerprint`.
The schema belongs to the edge side, the consumer; the host writes manifests through this module.

Example:
    >>> from edge.manifest import load_manifest
    >>> m = load_manifest("models/default")          # doctest: +SKIP
    >>> m.embedding_size, m.input_shape              # doctest: +SKIP
    (256, (32, 32, 3))
    >>> m.file("tflite", "int8").input_quantization  # doctest: +SKIP
    QuantParams(scale=0.0156..., zero_point=-1, dtype='int8')

Preprocessing contract: a uint8 frame ``x`` (H, W, C, RGB) becomes the model input
``(x * scale - mean) / std`` in float32, per channel. For an int8 file that float input is then
quantized with the file's input parameters ``q = round(v / scale) + zero_point``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from edge.atomic import atomic_write
from edge.errors import ChecksumError, ManifestError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
FORMATS = ("tflite", "onnx")
PRECISIONS = ("fp32", "int8")
QUANT_DTYPES = ("int8", "uint8")

#: Default parity tolerances checked at export and recorded in the manifest.
DEFAULT_TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"max_rel_diff": 1e-4, "min_cosine": 0.9999},
    "int8": {"min_cosine": 0.98},
}


def sha256_file(path: str | os.PathLike[str], chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Preprocessing:
    """How a uint8 RGB frame becomes the model's float input: ``(x * scale - mean) / std``."""

    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    channel_order: str = "RGB"
    resize: str = "bilinear"


@dataclass(frozen=True)
class QuantParams:
    """Affine quantization of one int8/uint8 tensor: ``real = (q - zero_point) * scale``."""

    scale: float
    zero_point: int
    dtype: str = "int8"


@dataclass(frozen=True)
class ModelFile:
    """One artifact of the model directory, with its hash."""

    path: str
    format: str
    precision: str
    sha256: str
    bytes: int
    input_quantization: QuantParams | None = None
    output_quantization: QuantParams | None = None


HEAD_KINDS = ("softmax", "mlp")
HEAD_OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class HeadFile:
    """A trainable head file (``head_*.tflite``) for this backbone, with its training settings.

    ``hyperparameters`` are baked into the file (``lr``, ``weight_decay``, and ``momentum`` for
    sgd or ``beta1``/``beta2``/``eps`` for adam); ``batch_size`` is the fixed row count of its
    ``train`` signature (smaller batches are padded, larger ones refused).
    """

    path: str
    sha256: str
    bytes: int
    kind: str
    optimizer: str
    batch_size: int
    max_classes: int
    embedding_size: int
    hidden: int | None = None
    hyperparameters: dict[str, float] = field(default_factory=dict)
    producer: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    """Parsed, validated ``manifest.json``. Build with `load_manifest` or `Manifest.from_dict`."""

    name: str
    architecture: str
    input_shape: tuple[int, int, int]
    preprocessing: Preprocessing
    embedding_size: int
    files: tuple[ModelFile, ...]
    embedding_mean: tuple[float, ...] | None = None
    embedding_std: tuple[float, ...] | None = None
    input_dtype: str = "float32"
    layout: str = "NHWC"
    producer: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    tolerances: dict[str, dict[str, float]] = field(
        default_factory=lambda: {k: dict(v) for k, v in DEFAULT_TOLERANCES.items()}
    )
    schema_version: int = SCHEMA_VERSION
    heads: tuple[HeadFile, ...] = ()

    # ------------------------------------------------------------------ queries
    def file(self, format: str, precision: str = "fp32") -> ModelFile:
        """The artifact of a format and precision; `ManifestError` if the manifest has none."""
        for entry in self.files:
            if entry.format == format and entry.precision == precision:
                return entry
        have = ", ".join(f"{f.format}/{f.precision}" for f in self.files) or "none"
        raise ManifestError(
            f"model {self.name!r} has no {format}/{precision} file (expected one of: {have})"
        )

    @property
    def fingerprint(self) -> str:
        """sha256 identifying the backbone as a whole (over the sorted file hashes).

        Checkpoints record it: a head trained on one backbone is refused on another. It does not
        change with the runtime chosen, since every file of a model computes the same embedding
        within the parity tolerance.
        """
        joined = "\n".join(sorted(f.sha256 for f in self.files))
        return hashlib.sha256(joined.encode("ascii")).hexdigest()

    # ------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, the layout written to ``manifest.json``."""
        files = []
        for f in self.files:
            entry = asdict(f)
            for key in ("input_quantization", "output_quantization"):
                if entry[key] is None:
                    del entry[key]
            files.append(entry)
        return {
            "schema_version": self.schema_version,
            "name": self.name,
            "architecture": self.architecture,
            "input": {
                "shape": list(self.input_shape),
                "dtype": self.input_dtype,
                "layout": self.layout,
            },
            "preprocessing": {
                **asdict(self.preprocessing),
                "mean": list(self.preprocessing.mean),
                "std": list(self.preprocessing.std),
            },
            "embedding": {
                "size": self.embedding_size,
                "dtype": "float32",
                "mean": None if self.embedding_mean is None else list(self.embedding_mean),
                "std": None if self.embedding_std is None else list(self.embedding_std),
            },
            "files": files,
            "tolerances": self.tolerances,
            "producer": self.producer,
            "parity": self.parity,
        } | ({"heads": [asdict(h) for h in self.heads]} if self.heads else {})

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Validate and parse the JSON form; `ManifestError` names the field, expected vs got."""
        _expect(isinstance(data, dict), "manifest", "a JSON object", type(data).__name__)
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ManifestError(
                f"manifest schema_version: expected {SCHEMA_VERSION}, got {version!r} "
                "(this edge runtime does not understand that manifest)"
            )
        name = _get(data, "name", str)
        architecture = _get(data, "architecture", str)
        inp = _get(data, "input", dict)
        shape = _get(inp, "shape", list, "input.shape")
        _expect(
            len(shape) == 3 and all(isinstance(v, int) and v > 0 for v in shape),
            "input.shape",
            "[height, width, channels] of positive ints",
            shape,
        )
        _expect(shape[2] in (1, 3), "input.shape channels", "1 or 3", shape[2])
        layout = inp.get("layout", "NHWC")
        _expect(layout == "NHWC", "input.layout", "'NHWC'", layout)
        input_dtype = inp.get("dtype", "float32")
        _expect(input_dtype == "float32", "input.dtype", "'float32'", input_dtype)

        pre = _get(data, "preprocessing", dict)
        channels = shape[2]
        mean = tuple(float(v) for v in _get(pre, "mean", list, "preprocessing.mean"))
        std = tuple(float(v) for v in _get(pre, "std", list, "preprocessing.std"))
        _expect(len(mean) == channels, "preprocessing.mean length", channels, len(mean))
        _expect(len(std) == channels, "preprocessing.std length", channels, len(std))
        _expect(all(s > 0 for s in std), "preprocessing.std", "positive values", std)
        order = pre.get("channel_order", "RGB")
        _expect(order in ("RGB", "BGR", "GRAY"), "preprocessing.channel_order", "RGB/BGR/GRAY", order)
        scale = float(_get(pre, "scale", (int, float), "preprocessing.scale"))
        _expect(scale > 0 and math.isfinite(scale), "preprocessing.scale", "a positive number", scale)
        preprocessing = Preprocessing(
            scale=scale, mean=mean, std=std, channel_order=order,
            resize=str(pre.get("resize", "bilinear")),
        )

        emb = _get(data, "embedding", dict)
        size = _get(emb, "size", int, "embedding.size")
        _expect(size > 0, "embedding.size", "a positive int", size)
        emb_mean = _optional_vector(emb.get("mean"), size, "embedding.mean")
        emb_std = _optional_vector(emb.get("std"), size, "embedding.std")

        raw_files = _get(data, "files", list)
        _expect(len(raw_files) > 0, "files", "at least one model file", "an empty list")
        files = tuple(_parse_file(entry, i) for i, entry in enumerate(raw_files))
        seen = set()
        for f in files:
            key = (f.format, f.precision)
            _expect(key not in seen, "files", "one file per format/precision", f"two {key}")
            seen.add(key)
        raw_heads = data.get("heads") or []
        _expect(isinstance(raw_heads, list), "heads", "a list", type(raw_heads).__name__)
        heads = tuple(_parse_head(entry, i) for i, entry in enumerate(raw_heads))
        _expect(len({h.path for h in heads}) == len(heads), "heads", "distinct paths", [h.path for h in heads])

        return cls(
            name=name,
            architecture=architecture,
            input_shape=(shape[0], shape[1], shape[2]),
            input_dtype=input_dtype,
            layout=layout,
            preprocessing=preprocessing,
            embedding_size=size,
            embedding_mean=emb_mean,
            embedding_std=emb_std,
            files=files,
            tolerances=data.get("tolerances") or {k: dict(v) for k, v in DEFAULT_TOLERANCES.items()},
            producer=data.get("producer") or {},
            parity=data.get("parity") or {},
            schema_version=version,
            heads=heads,
        )

    def with_updates(self, **changes: Any) -> Manifest:
        """A copy with some fields replaced (manifests are immutable)."""
        return replace(self, **changes)

    # ------------------------------------------------------------- verification
    def verify(self, model_dir: str | os.PathLike[str]) -> None:
        """Check every listed file exists and matches its recorded size and sha256."""
        root = Path(model_dir)
        for f in (*self.files, *self.heads):
            verify_file(root / f.path, f)


def verify_file(path: Path, entry: ModelFile | HeadFile) -> None:
    """Raise `ChecksumError` (expected vs got) if ``path`` is missing or differs from ``entry``."""
    if not path.is_file():
        raise ChecksumError(f"model file {entry.path!r} listed in the manifest is missing: {path}")
    got = sha256_file(path)
    if got != entry.sha256:
        raise ChecksumError(
            f"model file {entry.path!r} does not match the manifest: "
            f"sha256 expected {entry.sha256}, got {got} (the file was changed or corrupted)"
        )


def load_manifest(model_dir: str | os.PathLike[str], verify: bool = True) -> Manifest:
    """Read ``model_dir/manifest.json``; with ``verify`` also check every file's sha256."""
    path = Path(model_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"no {MANIFEST_NAME} in model directory {Path(model_dir)} (looked for {path})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc}") from exc
    manifest = Manifest.from_dict(data)
    if verify:
        manifest.verify(model_dir)
    return manifest


def write_manifest(manifest: Manifest, model_dir: str | os.PathLike[str]) -> Path:
    """Write ``manifest.json`` atomically (temp file, fsync, rename, fsync of the folder)."""
    text = json.dumps(manifest.to_dict(), indent=2, sort_keys=False) + "\n"
    return atomic_write(Path(model_dir) / MANIFEST_NAME, lambda handle: handle.write(text), text=True)


def describe_file(model_dir: str | os.PathLike[str], relpath: str, format: str, precision: str,
                  input_quantization: QuantParams | None = None,
                  output_quantization: QuantParams | None = None) -> ModelFile:
    """A `ModelFile` entry for a file already written in ``model_dir`` (hash and size computed)."""
    path = Path(model_dir) / relpath
    return ModelFile(
        path=relpath,
        format=format,
        precision=precision,
        sha256=sha256_file(path),
        bytes=path.stat().st_size,
        input_quantization=input_quantization,
        output_quantization=output_quantization,
    )


# ---------------------------------------------------------------------- helpers
def _expect(ok: bool, what: str, expected: Any, got: Any) -> None:
    if not ok:
        raise ManifestError(f"manifest {what}: expected {expected}, got {got!r}")


def _get(obj: dict[str, Any], key: str, kind: Any, what: str | None = None) -> Any:
    what = what or key
    if key not in obj:
        raise ManifestError(f"manifest {what}: expected a value, got nothing (field missing)")
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) or not isinstance(value, kinds):
        names = "/".join(k.__name__ for k in kinds)
        raise ManifestError(f"manifest {what}: expected {names}, got {type(value).__name__} {value!r}")
    return value


def _optional_vector(value: Any, size: int, what: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    _expect(isinstance(value, list), what, "a list of floats or null", type(value).__name__)
    _expect(len(value) == size, f"{what} length", size, len(value))
    return tuple(float(v) for v in value)


def _parse_quant(value: Any, what: str) -> QuantParams | None:
    if value is None:
        return None
    _expect(isinstance(value, dict), what, "an object", type(value).__name__)
    scale = float(_get(value, "scale", (int, float), f"{what}.scale"))
    _expect(scale > 0, f"{what}.scale", "a positive number", scale)
    zero_point = _get(value, "zero_point", int, f"{what}.zero_point")
    dtype = value.get("dtype", "int8")
    _expect(dtype in QUANT_DTYPES, f"{what}.dtype", "/".join(QUANT_DTYPES), dtype)
    return QuantParams(scale=scale, zero_point=zero_point, dtype=dtype)


def _inside_model_dir(path: str) -> bool:
    """A relative path that cannot climb out of the model directory."""
    return not os.path.isabs(path) and ".." not in Path(path).parts


def _parse_sha256(entry: dict[str, Any], what: str) -> str:
    digest = _get(entry, "sha256", str, f"{what}.sha256")
    _expect(
        len(digest) == 64 and all(c in "0123456789abcdef" for c in digest),
        f"{what}.sha256", "64 lowercase hex digits", digest,
    )
    return digest


def _parse_file(entry: Any, index: int) -> ModelFile:
    what = f"files[{index}]"
    _expect(isinstance(entry, dict), what, "an object", type(entry).__name__)
    path = _get(entry, "path", str, f"{what}.path")
    _expect(_inside_model_dir(path), f"{what}.path", "a path inside the model directory", path)
    fmt = _get(entry, "format", str, f"{what}.format")
    _expect(fmt in FORMATS, f"{what}.format", "/".join(FORMATS), fmt)
    precision = _get(entry, "precision", str, f"{what}.precision")
    _expect(precision in PRECISIONS, f"{what}.precision", "/".join(PRECISIONS), precision)
    digest = _parse_sha256(entry, what)
    size = _get(entry, "bytes", int, f"{what}.bytes")
    in_q = _parse_quant(entry.get("input_quantization"), f"{what}.input_quantization")
    out_q = _parse_quant(entry.get("output_quantization"), f"{what}.output_quantization")
    if precision == "int8" and fmt == "tflite":
        _expect(in_q is not None and out_q is not None, f"{what}",
                "input_quantization and output_quantization for an int8 file", "none")
    return ModelFile(path=path, format=fmt, precision=precision, sha256=digest, bytes=size,
                     input_quantization=in_q, output_quantization=out_q)


def _parse_head(entry: Any, index: int) -> HeadFile:
    what = f"heads[{index}]"
    _expect(isinstance(entry, dict), what, "an object", type(entry).__name__)
    path = _get(entry, "path", str, f"{what}.path")
    _expect(_inside_model_dir(path) and path.endswith(".tflite"),
            f"{what}.path", "a .tflite path inside the model directory", path)
    digest = _parse_sha256(entry, what)
    kind = _get(entry, "kind", str, f"{what}.kind")
    _expect(kind in HEAD_KINDS, f"{what}.kind", "/".join(HEAD_KINDS), kind)
    optimizer = _get(entry, "optimizer", str, f"{what}.optimizer")
    _expect(optimizer in HEAD_OPTIMIZERS, f"{what}.optimizer", "/".join(HEAD_OPTIMIZERS), optimizer)
    batch = _get(entry, "batch_size", int, f"{what}.batch_size")
    classes = _get(entry, "max_classes", int, f"{what}.max_classes")
    _expect(batch >= 1 and classes >= 2, f"{what} batch_size/max_classes", ">= 1 / >= 2", (batch, classes))
    emb = _get(entry, "embedding_size", int, f"{what}.embedding_size")
    # A head made for another embedding size is not a manifest error (the backbone stays usable):
    # `edge.tflite_head.find_head_file` skips it and `TFLiteHead` refuses it with expected vs got.
    _expect(emb > 0, f"{what}.embedding_size", "a positive int", emb)
    hidden = entry.get("hidden")
    if kind == "mlp":
        _expect(isinstance(hidden, int) and not isinstance(hidden, bool) and hidden >= 1,
                f"{what}.hidden", "a positive int for an mlp head", hidden)
    else:
        _expect(hidden is None, f"{what}.hidden", "null for a softmax head", hidden)
    hp = entry.get("hyperparameters") or {}
    _expect(isinstance(hp, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                         for v in hp.values()),
            f"{what}.hyperparameters", "an object of numbers", hp)
    producer = entry.get("producer") or {}
    _expect(isinstance(producer, dict), f"{what}.producer", "an object", type(producer).__name__)
    return HeadFile(path=path, sha256=digest, bytes=_get(entry, "bytes", int, f"{what}.bytes"),
                    kind=kind, optimizer=optimizer, batch_size=batch, max_classes=classes,
                    embedding_size=emb, hidden=hidden,
                    hyperparameters={k: float(v) for k, v in hp.items()}, producer=producer)
