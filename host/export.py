"""Freeze a backbone at its embedding and export it for the device.

Writes ``<out_root>/<name>/``: ``backbone_fp32.tflite``, ``backbone_int8.tflite`` (full-int8
post-training quantization calibrated on pretraining frames), ``backbone.onnx`` and
``manifest.json`` (schema in `edge.manifest`), after a parity check of every file against the
Keras model on held-out frames. TFLite files use builtin ops only: the export fails if a Flex
(select TF) or custom op appears, since device runtimes lack them.

The files are first written to a temporary folder next to the target and moved into place only
when everything passed, so a failed export never leaves a half-written model directory.

Example:
    >>> from host.export import export_run
    >>> model_dir = export_run("runs/default", name="default", out_root="models")  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from edge.manifest import (
    DEFAULT_FIT,
    DEFAULT_TOLERANCES,
    MANIFEST_NAME,
    Manifest,
    Preprocessing,
    QuantParams,
    describe_file,
    load_manifest,
    write_manifest,
)
from host import __version__ as tool_version
from host.parity import check_parity
from host.pretrain import BACKBONE_FILE, CALIBRATION_FILE, RECORD_FILE, normalise
from host.tflite_ops import non_builtin_ops, tflite_op_names

log = logging.getLogger(__name__)

FP32_TFLITE = "backbone_fp32.tflite"
INT8_TFLITE = "backbone_int8.tflite"
ONNX_FILE = "backbone.onnx"
DEFAULT_OPSET = 17


class ExportError(ValueError):
    """The export cannot proceed (bad inputs, Flex ops, occupied output directory)."""


@dataclass(frozen=True)
class ExportOptions:
    """Which artifacts to write and how."""

    int8: bool = True
    onnx: bool = True
    opset: int = DEFAULT_OPSET
    overwrite: bool = False
    #: uint8 NHWC input with the normalisation inside the graph (manifest ``input.dtype: uint8``);
    #: False writes the older float32-input files (the device normalises in NumPy).
    uint8_input: bool = True


def check_output_dir(target: Path, name: str, overwrite: bool) -> None:
    """Refuse to write into a directory that holds something else, unless ``overwrite``."""
    if not target.exists():
        return
    if not target.is_dir():
        raise ExportError(f"output path {target} exists and is not a directory")
    if not any(target.iterdir()):
        return
    manifest_path = target / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ExportError(
            f"output directory {target} is not empty and holds no {MANIFEST_NAME}: "
            "expected an empty directory or a model directory; refusing to write there"
        )
    if overwrite:
        return
    try:
        existing = load_manifest(target, verify=False)
        held = f"model {existing.name!r} ({existing.architecture}, fingerprint {existing.fingerprint[:12]})"
    except ValueError as exc:
        held = f"an unreadable manifest ({exc})"
    raise ExportError(
        f"output directory {target} already holds {held}; expected an empty directory for "
        f"model {name!r}. Pass --overwrite to replace it, or choose another --name"
    )


def convert_tflite_fp32(model: Any) -> bytes:
    """TFLite flatbuffer of a Keras model, builtin ops only."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


def with_pixel_input(model: Any, preprocessing: Preprocessing, dtype: str = "uint8") -> Any:
    """``model`` behind an input of raw pixels (``dtype`` uint8 or float32 values in [0, 255]):
    the manifest's normalisation ``x * (scale / std) - mean / std`` becomes the graph's first op,
    with the same float32 constants as `edge.preprocess.normalise_pixels`."""
    import keras

    std = np.asarray(preprocessing.std, np.float32)
    mult = (np.float32(preprocessing.scale) / std).astype(np.float32)
    offset = (-np.asarray(preprocessing.mean, np.float32) / std).astype(np.float32)
    shape = tuple(int(v) for v in model.input_shape[1:])
    pixels = keras.Input(shape=shape, dtype=dtype, name="pixels")
    x = keras.layers.Rescaling(scale=mult, offset=offset, name="normalise")(pixels)
    return keras.Model(pixels, model(x), name=f"{model.name}_pixels")


def pixel_calibration(frames_uint8: np.ndarray) -> np.ndarray:
    """Calibration frames as float pixels, with one pixel set to 0 and one to 255 in the first
    frame, so the converter measures the input range [0, 255] exactly: its uint8 input then gets
    scale 1 and zero point 0 and the device passes camera bytes unchanged."""
    x = frames_uint8.astype(np.float32)
    x[0, 0, 0, :] = 0.0
    x[0, 0, -1, :] = 255.0
    return x


def convert_tflite_int8(model: Any, representative: np.ndarray, input_type: str = "int8") -> bytes:
    """Full-integer TFLite (``input_type`` int8 or uint8 input; int8 weights, activations and
    output), builtin ops only."""
    import tensorflow as tf

    def samples() -> Iterator[list[np.ndarray]]:
        for i in range(len(representative)):
            yield [representative[i : i + 1].astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = samples
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8 if input_type == "uint8" else tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


def convert_onnx(model: Any, path: Path, opset: int) -> None:
    """ONNX file of a Keras model via tf2onnx, input ``input`` of shape (N, H, W, C) and the
    model's input dtype (float32, or uint8 for `with_pixel_input` models)."""
    import tensorflow as tf
    import tf2onnx

    shape = (None, *model.input_shape[1:])
    dtype = tf.uint8 if str(model.inputs[0].dtype).endswith("uint8") else tf.float32
    signature = (tf.TensorSpec(shape, dtype, name="input"),)
    tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset, output_path=str(path))


#: Op names used by a TFLite model, every subgraph (`host.tflite_ops.tflite_op_names`).
tflite_ops = tflite_op_names


def check_builtin_ops(content: bytes, label: str) -> list[str]:
    """Raise `ExportError` if the model (any subgraph) uses Flex or custom ops; return the op list."""
    ops = tflite_op_names(content)
    bad = non_builtin_ops(ops)
    if bad:
        raise ExportError(f"{label} uses non-builtin ops {bad}: expected TFLITE_BUILTINS only "
                          "(device runtimes have no Flex delegate)")
    return ops


def quant_params_of(content: bytes) -> tuple[QuantParams, QuantParams]:
    """Input and output quantization parameters of an int8 TFLite model."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    params = []
    for detail in (interpreter.get_input_details()[0], interpreter.get_output_details()[0]):
        scale, zero_point = detail["quantization"]
        dtype = np.dtype(detail["dtype"]).name
        if dtype not in ("int8", "uint8") or scale == 0:
            raise ExportError(f"int8 model tensor {detail['name']!r}: expected int8 with a scale, "
                              f"got {dtype} scale {scale}")
        params.append(QuantParams(scale=float(scale), zero_point=int(zero_point), dtype=dtype))
    return params[0], params[1]


def export_model(
    model: Any,
    *,
    name: str,
    architecture: str,
    preprocessing: Preprocessing,
    representative_uint8: np.ndarray,
    heldout_uint8: np.ndarray,
    out_root: str | Path = "models",
    options: ExportOptions = ExportOptions(),
    embedding_mean: list[float] | None = None,
    embedding_std: list[float] | None = None,
    producer: dict[str, Any] | None = None,
    tolerances: dict[str, dict[str, float]] | None = None,
    post_check: Callable[[Path, Manifest], dict[str, Any]] | None = None,
) -> Path:
    """Export a Keras backbone (input preprocessed NHWC float32, output the embedding).

    ``tolerances`` replaces the default parity limits for this model (a per-model limit must be
    justified in ``producer``, see `host.pretrained`). ``post_check(staging_dir, manifest)`` runs
    after the parity check, before anything is moved into place; it may raise to abort the export,
    and what it returns is added to the manifest's ``producer``.
    """
    import keras
    import tensorflow as tf

    if not name or "/" in name or name.startswith("."):
        raise ExportError(f"model name: expected a plain folder name, got {name!r}")
    if len(model.output_shape) != 2:
        raise ExportError(f"backbone output: expected (N, D) embeddings, got {model.output_shape}")
    input_shape = tuple(int(v) for v in model.input_shape[1:])
    for label, frames in (("representative", representative_uint8), ("held-out", heldout_uint8)):
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != input_shape:
            raise ExportError(f"{label} frames: expected uint8 (N, {', '.join(map(str, input_shape))}), "
                              f"got {frames.dtype} {frames.shape}")
        if len(frames) == 0:
            raise ExportError(f"{label} frames: expected at least one frame, got none")
    out_root = Path(out_root)
    target = out_root / name
    check_output_dir(target, name, options.overwrite)
    out_root.mkdir(parents=True, exist_ok=True)

    def prep(frames: np.ndarray) -> np.ndarray:
        return normalise(frames, list(preprocessing.mean), list(preprocessing.std), preprocessing.scale)

    u8 = options.uint8_input
    deployed = with_pixel_input(model, preprocessing) if u8 else model

    staging = Path(tempfile.mkdtemp(prefix=f".{name}-export-", dir=out_root))
    staging.chmod(0o755)  # mkdtemp makes it private; a model directory is meant to be shared
    try:
        log.info("converting %s to TFLite fp32 (%s input)", name, "uint8" if u8 else "float32")
        fp32 = convert_tflite_fp32(deployed)
        ops = check_builtin_ops(fp32, FP32_TFLITE)
        (staging / FP32_TFLITE).write_bytes(fp32)
        files = [describe_file(staging, FP32_TFLITE, "tflite", "fp32")]
        if options.int8:
            log.info("converting %s to TFLite int8 (%d calibration frames)", name, len(representative_uint8))
            if u8:
                int8 = convert_tflite_int8(with_pixel_input(model, preprocessing, "float32"),
                                           pixel_calibration(representative_uint8), input_type="uint8")
            else:
                int8 = convert_tflite_int8(model, prep(representative_uint8))
            check_builtin_ops(int8, INT8_TFLITE)
            in_q, out_q = quant_params_of(int8)
            if u8 and (in_q.dtype, in_q.scale, in_q.zero_point) != ("uint8", 1.0, 0):
                raise ExportError(f"{INT8_TFLITE} input quantization: expected uint8 scale=1 zero_point=0 "
                                  f"(camera bytes unchanged), got {in_q.dtype} scale={in_q.scale} "
                                  f"zero_point={in_q.zero_point}")
            (staging / INT8_TFLITE).write_bytes(int8)
            files.append(describe_file(staging, INT8_TFLITE, "tflite", "int8", in_q, out_q))
        if options.onnx:
            log.info("converting %s to ONNX (opset %d)", name, options.opset)
            convert_onnx(deployed, staging / ONNX_FILE, options.opset)
            files.append(describe_file(staging, ONNX_FILE, "onnx", "fp32"))

        manifest = Manifest(
            name=name,
            architecture=architecture,
            input_shape=input_shape,  # type: ignore[arg-type]
            input_dtype="uint8" if u8 else "float32",
            preprocessing=preprocessing,
            embedding_size=int(model.output_shape[-1]),
            embedding_mean=None if embedding_mean is None else tuple(embedding_mean),
            embedding_std=None if embedding_std is None else tuple(embedding_std),
            files=tuple(files),
            tolerances={k: dict(v) for k, v in (tolerances or DEFAULT_TOLERANCES).items()},
            producer={
                "tool": "edge-host",
                "tool_version": tool_version,
                "tensorflow_version": tf.__version__,
                "keras_version": keras.__version__,
                "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
                "tflite_ops": ops,
                **(producer or {}),
            },
        )
        reference = model.predict(prep(heldout_uint8), batch_size=256, verbose=0)
        parity = check_parity(staging, manifest, heldout_uint8, reference,
                              reference_name=f"keras (TensorFlow {tf.__version__})")
        manifest = manifest.with_updates(parity=parity)
        if post_check is not None:
            manifest = manifest.with_updates(producer={**manifest.producer, **post_check(staging, manifest)})
        write_manifest(manifest, staging)
        load_manifest(staging, verify=True)

        if target.exists():
            backup = out_root / f".{name}-replaced"
            if backup.exists():
                shutil.rmtree(backup)
            target.rename(backup)
            staging.rename(target)
            shutil.rmtree(backup)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("exported %s to %s", name, target)
    return target


def export_run(run_dir: str | Path, *, name: str, out_root: str | Path = "models",
               options: ExportOptions = ExportOptions()) -> Path:
    """Export the backbone saved by `host.pretrain.pretrain` in ``run_dir``."""
    import keras

    run_dir = Path(run_dir)
    for needed in (BACKBONE_FILE, RECORD_FILE, CALIBRATION_FILE):
        if not (run_dir / needed).is_file():
            raise ExportError(f"pretraining run {run_dir}: expected {needed}, not found "
                              f"(looked for {run_dir / needed}; run `edge-host pretrain` first)")
    record = json.loads((run_dir / RECORD_FILE).read_text(encoding="utf-8"))
    model = keras.models.load_model(run_dir / BACKBONE_FILE, compile=False)
    with np.load(run_dir / CALIBRATION_FILE, allow_pickle=False) as calib:
        representative, heldout = calib["representative"], calib["heldout"]
    if len(heldout) == 0:
        heldout = representative[:64]
    pre = record["preprocessing"]
    preprocessing = Preprocessing(scale=pre["scale"], mean=tuple(pre["mean"]), std=tuple(pre["std"]),
                                  channel_order=pre.get("channel_order", "RGB"),
                                  fit=pre.get("fit", DEFAULT_FIT))  # how frames are fitted: the model's
    config = record["config"]
    producer = {
        "training_data": config["data"],
        "seed": config["seed"],
        "pretrain": {
            "epochs": config["epochs"],
            "n_classes": record["n_classes"],
            "n_train": record["n_train"],
            "val_accuracy": record["val_accuracy"],
            "embedding_spread": record["embedding_spread"],
        },
        "backbone": record["backbone"],
    }
    return export_model(
        model,
        name=name,
        architecture=record["backbone"],
        preprocessing=preprocessing,
        representative_uint8=representative,
        heldout_uint8=heldout,
        out_root=out_root,
        options=options,
        embedding_mean=record.get("embedding_mean"),
        embedding_std=record.get("embedding_std"),
        producer=producer,
    )
