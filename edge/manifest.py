"""The model manifest: the only contract between the host tool and the device.

A model directory holds ``manifest.json`` and the files it lists (TFLite fp32, TFLite int8, ONNX).
It may also list trainable heads (``heads``: ``.tflite`` files with ``train``/``infer`` signatures,
written by ``edge-host export-head``, run by `edge.tflite_head`). Heads are optional (a manifest
without them is valid, same ``schema_version``) and are not part of the backbone's `fingerprint`.
The schema belongs to the edge side, the consumer; the host writes manifests through this module.

Example:
    >>> from edge.manifest import load_manifest
    >>> m = load_manifest("models/tiny")          # doctest: +SKIP
    >>> m.embedding_size, m.input_shape              # doctest: +SKIP
    (256, (32, 32, 3))
    >>> m.file("tflite", "int8").input_quantization  # doctest: +SKIP
    QuantParams(scale=0.0156..., zero_point=-1, dtype='int8')

Integrity: the `Manifest.fingerprint` is a sha256 over every field that changes what the device
computes (input shape/dtype/layout, preprocessing, embedding size and statistics, and each file's
format, precision, sha256 and quantization); checkpoints record it, and ``manifest.json`` stores it
too (``fingerprint``, written by `write_manifest`), so a changed or corrupted computing field is
refused at load with expected vs got. Parsing is bounded (`parse_json_bounded`: size cap, nesting
depth, no NaN/Infinity) and strict (unknown fields are refused, numbers must be finite).

Preprocessing contract: a uint8 frame of another size is first fitted to the input size by
``preprocessing.fit`` (``squash``, ``crop`` or ``letterbox``; ``squash`` when absent) with the
``preprocessing.resize`` filter; then a uint8 frame ``x`` (H, W, C, RGB) becomes the model input
``(x * scale - mean) / std`` in float32, per channel. For an int8 file that float input is then
quantized with the file's input parameters ``q = round(v / scale) + zero_point``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
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
RESIZE_METHODS = ("bilinear", "nearest", "bicubic", "area")
#: How a frame of another aspect ratio is fitted to the input (`edge.preprocess.fit_frame`): stretch it
#: whole (squash), cut the centre (crop: fit the shorter side) or pad with black (letterbox: fit the longer).
FIT_POLICIES = ("squash", "crop", "letterbox")
#: The policy of a manifest that names none (every manifest written before the field existed).
DEFAULT_FIT = "squash"
#: Model input dtypes: float32 (normalised in NumPy) or uint8 (camera bytes; normalisation in the graph).
INPUT_DTYPES = ("float32", "uint8")
#: Version of the fingerprint's definition (part of the hashed text).
FINGERPRINT_VERSION = 2
#: Bounds of the parser: bytes of manifest.json and nesting depth of its JSON.
MAX_MANIFEST_BYTES = 8 << 20
MAX_JSON_DEPTH = 32
MAX_INPUT_SIDE = 4096
MAX_EMBEDDING_SIZE = 1 << 16
_QRANGE = {"int8": (-128, 127), "uint8": (0, 255)}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)

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
    """How a uint8 RGB frame becomes the model's float input: ``(x * scale - mean) / std``.

    A frame of another size is first fitted to the input by ``fit`` (one of `FIT_POLICIES`) with
    Pillow's ``resize`` filter (one of `RESIZE_METHODS`), see `edge.preprocess.fit_frame`.
    """

    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    channel_order: str = "RGB"
    resize: str = "bilinear"
    fit: str = DEFAULT_FIT


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

    def computing_fields(self) -> dict[str, Any]:
        """Every field that changes what the device computes, as plain JSON (what `fingerprint` hashes).

        Names, paths, producer, parity figures, tolerances and trainable heads (each verified by
        its own sha256) are left out. ``preprocessing.fit`` changes the model input, so it is hashed,
        but only when it is not the default ``squash``: a manifest written before the field existed
        (squash implied) keeps its fingerprint, and so do the checkpoints that recorded it.
        """
        files = []
        for f in self.files:
            files.append({
                "format": f.format, "precision": f.precision, "sha256": f.sha256,
                "input_quantization": None if f.input_quantization is None else asdict(f.input_quantization),
                "output_quantization": None if f.output_quantization is None else asdict(f.output_quantization),
            })
        files.sort(key=lambda entry: (entry["format"], entry["precision"], entry["sha256"]))
        preprocessing = {**asdict(self.preprocessing), "mean": list(self.preprocessing.mean),
                         "std": list(self.preprocessing.std)}
        if preprocessing["fit"] == DEFAULT_FIT:
            del preprocessing["fit"]
        return {
            "fingerprint_version": FINGERPRINT_VERSION,
            "input": {"shape": list(self.input_shape), "dtype": self.input_dtype, "layout": self.layout},
            "preprocessing": preprocessing,
            "embedding": {
                "size": self.embedding_size,
                "mean": None if self.embedding_mean is None else list(self.embedding_mean),
                "std": None if self.embedding_std is None else list(self.embedding_std),
            },
            "files": files,
        }

    @property
    def fingerprint(self) -> str:
        """sha256 identifying what the backbone computes (over `computing_fields`).

        Checkpoints record it: a head trained on one backbone, or on the same files with other
        preprocessing or embedding statistics, is refused. It does not change with the runtime
        chosen, since every file of a model computes the same embedding within the parity tolerance.
        """
        text = json.dumps(self.computing_fields(), sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

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
            "fingerprint": self.fingerprint,
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
        """Validate and parse the JSON form; `ManifestError` names the field, expected vs got.

        A stored ``fingerprint`` must match the one computed from the parsed fields.
        """
        _expect(isinstance(data, dict), "manifest", "a JSON object", type(data).__name__)
        version = data.get("schema_version")
        if not _is_int(version) or version != SCHEMA_VERSION:
            raise ManifestError(
                f"manifest schema_version: expected {SCHEMA_VERSION}, got {_short(version)} "
                "(an integer; this edge runtime does not understand that manifest)"
            )
        _known_keys(data, _TOP_KEYS, "manifest")
        name = _get(data, "name", str)
        architecture = _get(data, "architecture", str)
        inp = _get(data, "input", dict)
        _known_keys(inp, ("shape", "dtype", "layout"), "input")
        shape = _get(inp, "shape", list, "input.shape")
        _expect(
            len(shape) == 3 and all(_is_int(v) and 0 < v <= MAX_INPUT_SIDE for v in shape),
            "input.shape",
            f"[height, width, channels] of ints in [1, {MAX_INPUT_SIDE}]",
            shape,
        )
        _expect(shape[2] in (1, 3), "input.shape channels", "1 or 3", shape[2])
        layout = inp.get("layout", "NHWC")
        _expect(layout == "NHWC", "input.layout", "'NHWC'", layout)
        input_dtype = inp.get("dtype", "float32")
        _expect(input_dtype in INPUT_DTYPES, "input.dtype", "/".join(INPUT_DTYPES), input_dtype)

        pre = _get(data, "preprocessing", dict)
        _known_keys(pre, ("scale", "mean", "std", "channel_order", "resize", "fit"), "preprocessing")
        channels = shape[2]
        mean = _vector(_get(pre, "mean", list, "preprocessing.mean"), channels, "preprocessing.mean")
        std = _vector(_get(pre, "std", list, "preprocessing.std"), channels, "preprocessing.std")
        _expect(all(v > 0 for v in std), "preprocessing.std", "positive values", std)
        order = pre.get("channel_order", "RGB")
        orders = ("GRAY",) if channels == 1 else ("RGB", "BGR")
        _expect(isinstance(order, str) and order in orders, "preprocessing.channel_order",
                f"{'/'.join(orders)} for {channels} channel(s)", order)
        scale = _number(_get(pre, "scale", (int, float), "preprocessing.scale"), "preprocessing.scale")
        _expect(scale > 0, "preprocessing.scale", "a positive number", scale)
        resize = pre.get("resize", "bilinear")
        _expect(isinstance(resize, str) and resize in RESIZE_METHODS, "preprocessing.resize",
                "/".join(RESIZE_METHODS), resize)
        fit = pre.get("fit", DEFAULT_FIT)
        _expect(isinstance(fit, str) and fit in FIT_POLICIES, "preprocessing.fit", "/".join(FIT_POLICIES), fit)
        preprocessing = Preprocessing(scale=scale, mean=mean, std=std, channel_order=order, resize=resize,
                                      fit=fit)

        emb = _get(data, "embedding", dict)
        _known_keys(emb, ("size", "dtype", "mean", "std"), "embedding")
        size = _get(emb, "size", int, "embedding.size")
        _expect(0 < size <= MAX_EMBEDDING_SIZE, "embedding.size", f"an int in [1, {MAX_EMBEDDING_SIZE}]", size)
        _expect(emb.get("dtype", "float32") == "float32", "embedding.dtype", "'float32'", emb.get("dtype"))
        emb_mean = _optional_vector(emb.get("mean"), size, "embedding.mean")
        emb_std = _optional_vector(emb.get("std"), size, "embedding.std")
        if emb_std is not None:
            _expect(all(v > 0 for v in emb_std), "embedding.std", "positive values", "a value <= 0")

        raw_files = _get(data, "files", list)
        _expect(0 < len(raw_files) <= 16, "files", "at least one model file (at most 16)",
                f"{len(raw_files)} entries")
        files = tuple(_parse_file(entry, i) for i, entry in enumerate(raw_files))
        seen = set()
        for f in files:
            key = (f.format, f.precision)
            _expect(key not in seen, "files", "one file per format/precision", f"two {key}")
            seen.add(key)
        raw_heads = data.get("heads") or []
        _expect(isinstance(raw_heads, list) and len(raw_heads) <= 64, "heads", "a list of at most 64",
                type(raw_heads).__name__)
        heads = tuple(_parse_head(entry, i) for i, entry in enumerate(raw_heads))
        _expect(len({h.path for h in heads}) == len(heads), "heads", "distinct paths", [h.path for h in heads])
        tolerances = data.get("tolerances") or {k: dict(v) for k, v in DEFAULT_TOLERANCES.items()}
        _expect(isinstance(tolerances, dict) and all(
            isinstance(v, dict) and all(_is_number(x) for x in v.values()) for v in tolerances.values()),
            "tolerances", "an object of objects of finite numbers", tolerances)
        producer = data.get("producer") or {}
        parity = data.get("parity") or {}
        _expect(isinstance(producer, dict), "producer", "an object", type(producer).__name__)
        _expect(isinstance(parity, dict), "parity", "an object", type(parity).__name__)

        manifest = cls(
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
            tolerances=tolerances,
            producer=producer,
            parity=parity,
            schema_version=version,
            heads=heads,
        )
        if "fingerprint" in data:
            stored = data["fingerprint"]
            got = manifest.fingerprint
            if stored != got:
                raise ManifestError(
                    f"manifest fingerprint: expected {_short(stored)} (stored), got {got} computed from "
                    "its fields (a field that changes what the device computes was changed or corrupted)")
        return manifest

    def with_updates(self, **changes: Any) -> Manifest:
        """A copy with some fields replaced (manifests are immutable)."""
        return replace(self, **changes)

    # ------------------------------------------------------------- verification
    def verify(self, model_dir: str | os.PathLike[str]) -> None:
        """Check every listed file exists and matches its recorded size and sha256."""
        root = Path(model_dir)
        entries: tuple[ModelFile | HeadFile, ...] = (*self.files, *self.heads)
        for f in entries:
            verify_file(root / f.path, f)


def verify_file(path: Path, entry: ModelFile | HeadFile) -> None:
    """Raise `ChecksumError` (expected vs got) if ``path`` is missing or differs from ``entry``."""
    if not path.is_file():
        raise ChecksumError(f"model file {entry.path!r} listed in the manifest is missing: {path}")
    size = path.stat().st_size
    if size != entry.bytes:  # cheap, and a truncated or padded file is never hashed
        raise ChecksumError(f"model file {entry.path!r} does not match the manifest: size expected "
                            f"{entry.bytes} bytes, got {size} (the file was changed or corrupted)")
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
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise ManifestError(f"{path}: expected a regular file, got another kind of file")
        raw = handle.read(MAX_MANIFEST_BYTES + 1)
    data = parse_json_bounded(raw, what=str(path))
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
_TOP_KEYS = ("schema_version", "fingerprint", "name", "architecture", "input", "preprocessing", "embedding",
             "files", "tolerances", "producer", "parity", "heads")
_FILE_KEYS = ("path", "format", "precision", "sha256", "bytes", "input_quantization", "output_quantization")
_HEAD_KEYS = ("path", "sha256", "bytes", "kind", "optimizer", "batch_size", "max_classes", "embedding_size",
              "hidden", "hyperparameters", "producer")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"expected finite numbers, got {name}")


def parse_json_bounded(raw: bytes | str, what: str = "JSON", max_bytes: int = MAX_MANIFEST_BYTES,
                       max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` with bounds checked first: at most ``max_bytes``, nesting at most ``max_depth``.

    NaN/Infinity literals are refused. Every failure is a `ManifestError` naming ``what``,
    expected vs got, never a RecursionError or MemoryError.
    """
    size = len(raw)
    if size > max_bytes:
        raise ManifestError(f"{what}: expected at most {max_bytes} bytes of JSON, got {size} or more")
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{what}: expected UTF-8 JSON, got undecodable bytes ({exc})") from exc
    import numpy as np  # the edge side always has NumPy; a vectorised depth scan of big inputs

    bare = _STRING.sub('""', text)
    codes = np.frombuffer(bare.encode("utf-8"), dtype=np.uint8)
    steps = (np.isin(codes, (0x5B, 0x7B)).astype(np.int32) - np.isin(codes, (0x5D, 0x7D)).astype(np.int32))
    depth = int(np.cumsum(steps).max()) if steps.size else 0
    if depth > max_depth:
        raise ManifestError(f"{what}: expected JSON nested at most {max_depth} deep, got depth {depth}")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, huge ints, NaN literals
        raise ManifestError(f"{what} is not valid JSON: {str(exc)[:200]}") from exc


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number(value: Any, what: str) -> float:
    _expect(_is_number(value), what, "a finite number", value)
    return float(value)


def _vector(value: Any, size: int, what: str) -> tuple[float, ...]:
    _expect(isinstance(value, list), what, "a list of finite numbers", type(value).__name__)
    _expect(len(value) == size, f"{what} length", size, len(value))
    bad = [v for v in value if not _is_number(v)]
    _expect(not bad, what, "finite numbers", bad[:1])
    return tuple(float(v) for v in value)


def _known_keys(obj: dict[str, Any], allowed: tuple[str, ...], what: str) -> None:
    unknown = sorted(str(k) for k in obj if k not in allowed)
    _expect(not unknown, what, f"fields among {list(allowed)}", f"unknown field(s) {unknown[:3]}")
def _expect(ok: bool, what: str, expected: Any, got: Any) -> None:
    if not ok:
        raise ManifestError(f"manifest {what}: expected {expected}, got {_short(got)}")


def _get(obj: dict[str, Any], key: str, kind: Any, what: str | None = None) -> Any:
    what = what or key
    if key not in obj:
        raise ManifestError(f"manifest {what}: expected a value, got nothing (field missing)")
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) or not isinstance(value, kinds):
        names = "/".join(k.__name__ for k in kinds)
        raise ManifestError(f"manifest {what}: expected {names}, got {type(value).__name__} {_short(value)}")
    return value


def _optional_vector(value: Any, size: int, what: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    _expect(isinstance(value, list), what, "a list of floats or null", type(value).__name__)
    return _vector(value, size, what)


def _parse_quant(value: Any, what: str) -> QuantParams | None:
    if value is None:
        return None
    _expect(isinstance(value, dict), what, "an object", type(value).__name__)
    _known_keys(value, ("scale", "zero_point", "dtype"), what)
    scale = _number(_get(value, "scale", (int, float), f"{what}.scale"), f"{what}.scale")
    _expect(scale > 0, f"{what}.scale", "a positive number", scale)
    zero_point = _get(value, "zero_point", int, f"{what}.zero_point")
    dtype = value.get("dtype", "int8")
    _expect(isinstance(dtype, str) and dtype in QUANT_DTYPES, f"{what}.dtype", "/".join(QUANT_DTYPES), dtype)
    lo, hi = _QRANGE[dtype]
    _expect(lo <= zero_point <= hi, f"{what}.zero_point", f"an int in [{lo}, {hi}] for {dtype}", zero_point)
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
    return str(digest)


def _parse_file(entry: Any, index: int) -> ModelFile:
    what = f"files[{index}]"
    _expect(isinstance(entry, dict), what, "an object", type(entry).__name__)
    _known_keys(entry, _FILE_KEYS, what)
    path = _get(entry, "path", str, f"{what}.path")
    _expect(_inside_model_dir(path), f"{what}.path", "a path inside the model directory", path)
    fmt = _get(entry, "format", str, f"{what}.format")
    _expect(fmt in FORMATS, f"{what}.format", "/".join(FORMATS), fmt)
    precision = _get(entry, "precision", str, f"{what}.precision")
    _expect(precision in PRECISIONS, f"{what}.precision", "/".join(PRECISIONS), precision)
    digest = _parse_sha256(entry, what)
    size = _get(entry, "bytes", int, f"{what}.bytes")
    _expect(size >= 0, f"{what}.bytes", "an int >= 0", size)
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
    _known_keys(entry, _HEAD_KEYS, what)
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
    _expect(isinstance(hp, dict) and all(_is_number(v) for v in hp.values()),
            f"{what}.hyperparameters", "an object of finite numbers", hp)
    producer = entry.get("producer") or {}
    _expect(isinstance(producer, dict), f"{what}.producer", "an object", type(producer).__name__)
    return HeadFile(path=path, sha256=digest, bytes=_get(entry, "bytes", int, f"{what}.bytes"),
                    kind=kind, optimizer=optimizer, batch_size=batch, max_classes=classes,
                    embedding_size=emb, hidden=hidden,
                    hyperparameters={k: float(v) for k, v in hp.items()}, producer=producer)
