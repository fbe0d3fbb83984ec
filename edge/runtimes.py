"""Frozen backbones behind one interface: frames -> float32 embeddings.

`open_backbone` reads and verifies a model directory's manifest, picks the file for the runtime
and precision asked for, and returns a `Backbone`:

* `LiteRTBackbone` runs a ``.tflite`` file with ``ai_edge_litert`` (or ``tflite_runtime`` where
  only that is installed), fp32 or full-int8;
* `OnnxBackbone` runs the ``.onnx`` file with ``onnxruntime`` and explicit execution providers.

Runtimes are imported lazily, inside the constructors: ``import edge`` loads neither.

Example:
    >>> import numpy as np
    >>> from edge.runtimes import open_backbone
    >>> with open_backbone("models/tiny", runtime="litert") as bb:   # doctest: +SKIP
    ...     emb = bb.embed(np.zeros((4, 32, 32, 3), np.uint8))
    >>> emb.shape                                                      # doctest: +SKIP
    (4, 256)
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edge.errors import (
    ConfigError,
    InputError,
    ManifestError,
    ModelLoadError,
    ProviderFallbackError,
    RuntimeUnavailableError,
)
from edge.manifest import Manifest, ModelFile, QuantParams, load_manifest
from edge.preprocess import InputMapper, as_frame_batch, quantize

logger = logging.getLogger(__name__)

RUNTIMES = ("auto", "litert", "onnx")

#: Execution providers tried, in order, for each ``providers=`` keyword of `OnnxBackbone`.
PROVIDER_CHAINS: dict[str, tuple[str, ...]] = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}


@dataclass(frozen=True)
class BackboneInfo:
    """What actually runs: runtime, providers in effect, precision, threads and file."""

    runtime: str
    precision: str
    file: str
    threads: int | None
    providers: tuple[str, ...] = ()


class Backbone:
    """Interface of a frozen feature extractor: frames -> ``(N, embedding_size)`` float32.

    `embed` validates the frames once (`edge.preprocess.as_frame_batch`); `embed_batch` is the
    trusted path for frames already validated that way (the agent validates at its boundary).
    The frames become the file's input tensor through an `edge.preprocess.InputMapper`: unchanged
    camera bytes for a uint8-input model (manifest ``input.dtype == "uint8"``, normalisation in
    the graph), a per-channel lookup table for the float32 and int8 inputs of older manifests.
    Subclasses set ``_mapper`` and implement `_run` (model input -> embeddings) and `close`.
    """

    manifest: Manifest
    info: BackboneInfo
    _mapper: InputMapper

    @property
    def embedding_size(self) -> int:
        """Length of one embedding vector."""
        return self.manifest.embedding_size

    def embed(self, frames: np.ndarray) -> np.ndarray:
        """Frames (uint8 ``(N, H, W, C)`` or ``(H, W, C)``) -> float32 ``(N, embedding_size)``."""
        return self._run(self._mapper(as_frame_batch(frames)))

    def embed_batch(self, batch: np.ndarray) -> np.ndarray:
        """Trusted path: a batch already returned by `as_frame_batch` -> embeddings (no re-check)."""
        return self._run(self._mapper(batch))

    def embed_preprocessed(self, x: np.ndarray) -> np.ndarray:
        """Already-preprocessed float32 input ``(N, H, W, C)`` (normalised, not quantized) -> embeddings.

        For a uint8-input model the values are mapped back to pixels (inverse of the normalisation,
        rounded), since its graph does the normalisation.
        """
        x = np.asarray(x)
        expected = (None, *self.manifest.input_shape)
        if x.ndim != 4 or x.shape[1:] != tuple(self.manifest.input_shape) or x.shape[0] == 0:
            raise InputError(f"model input: expected shape {expected} with N >= 1, got {x.shape}")
        if not np.issubdtype(x.dtype, np.floating):
            raise InputError(f"model input: expected float32, got {x.dtype}")
        if not np.isfinite(x).all():
            raise InputError("model input: expected finite values, got NaN or inf")
        x = np.ascontiguousarray(x, dtype=np.float32)
        mapper = self._mapper
        if mapper.input_dtype == "uint8":
            pre = self.manifest.preprocessing
            pixels = (x * np.asarray(pre.std, np.float32) + np.asarray(pre.mean, np.float32)) / np.float32(pre.scale)
            return self._run(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
        if mapper.input_dtype == "int8":
            return self._run(quantize(x, mapper.quant))  # type: ignore[arg-type]
        return self._run(x)

    def _run(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - abstract
        """Release the interpreter or session."""
        raise NotImplementedError

    def __enter__(self) -> Backbone:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        i = self.info
        return (f"{type(self).__name__}(model={self.manifest.name!r}, runtime={i.runtime!r}, "
                f"precision={i.precision!r}, providers={list(i.providers)}, threads={i.threads})")


# --------------------------------------------------------------------------- LiteRT
_STDERR_LOCK = threading.Lock()


@contextmanager
def litert_log_to_logging() -> Iterator[None]:
    """Route what LiteRT's C++ logger writes to stderr during the block into `logging`.

    LiteRT prints ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`` straight to file
    descriptor 2 when the first interpreter of a process allocates its tensors. Its minimal
    logger has no Python switch and ignores ``TF_CPP_MIN_LOG_LEVEL`` (checked with ai-edge-litert
    2.3.0; upstream issues only offer the C++ ``LoggerOptions::SetMinimumLogSeverity``), so the
    descriptor is captured around interpreter creation: ``INFO:`` lines go to this module's logger
    at DEBUG, every other line is written back to stderr unchanged (errors stay visible).
    """
    with _STDERR_LOCK:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):  # no usable fd 2 (closed, or a replaced sys.stderr): nothing to route
            yield
            return
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                capture.seek(0)
                text = capture.read().decode("utf-8", errors="replace")
        for line in text.splitlines():
            if line.startswith("INFO: "):
                logger.debug("LiteRT: %s", line[len("INFO: "):])
            elif line:
                sys.stderr.write(line + "\n")
        sys.stderr.flush()


def import_litert_interpreter() -> tuple[Any, str]:
    """The Interpreter class and the name of the package that provided it."""
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter, "ai_edge_litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter
        return Interpreter, "tflite_runtime"
    except ImportError as exc:
        raise RuntimeUnavailableError(
            "the LiteRT runtime is not installed: pip install ai-edge-litert "
            "(or tflite-runtime on devices without an ai-edge-litert wheel)"
        ) from exc


def _bucket(n: int, max_batch: int) -> int:
    """Smallest power of two >= n, capped at max_batch."""
    size = 1
    while size < n and size < max_batch:
        size *= 2
    return min(size, max_batch)


class _Slot:
    """One interpreter resized to one batch size, with its tensors' indices and a padded input."""

    __slots__ = ("interp", "i_in", "i_out", "padded")

    def __init__(self, interp: Any, i_in: int, i_out: int, padded: np.ndarray) -> None:
        self.interp = interp
        self.i_in = i_in
        self.i_out = i_out
        self.padded = padded  # preallocated (size, H, W, C) input for a short tail


def _model_input_dtype(manifest: Manifest, entry: ModelFile) -> str:
    """The input tensor dtype a file must have under its manifest."""
    if manifest.input_dtype == "uint8":
        return "uint8"
    if entry.precision == "int8" and entry.input_quantization is not None:
        return entry.input_quantization.dtype
    return "float32"


class LiteRTBackbone(Backbone):
    """A ``.tflite`` backbone on ai_edge_litert (fallback: tflite_runtime).

    Batching: inputs are cut into chunks of ``max_batch`` frames and each chunk size is rounded up
    to a power of two (the tail is zero-padded into a buffer allocated once per size). One
    interpreter is built per such size, once, and kept in a small LRU cache
    (``max_cached_sizes=6`` holds every size 1..32), so a stream of varying batch sizes allocates
    tensors at most log2(max_batch)+1 times; the batch size -> bucket table is computed at load.
    Measured on the 2-core dev box (models/tiny, 32x32, 2 threads, same run, best of 10): a
    300-frame ``embed`` took 50.2 ms (fp32) / 20.2 ms (int8) with batch-1 invokes in a loop
    (``max_batch=1``) vs 48.6 ms / 17.5 ms resized to chunks of 32. A fresh resize +
    allocate_tensors + first invoke cost 7.9 ms vs 4.7 ms for a warm invoke of 32 frames (fp32),
    which is why sizes are cached rather than resized back and forth.

    Hot path per chunk: ``set_tensor``, ``invoke``, then the output is read through a view of the
    interpreter's buffer (``tensor()``, released before the next invoke) straight into the result
    (dequantized in place for int8): the only allocation per call is the returned array.

    int8 files: the manifest's input/output parameters are checked against the interpreter's own
    at load. A uint8-input file (``input.dtype == "uint8"``) takes the camera bytes unchanged.

    Example:
        >>> from edge.runtimes import LiteRTBackbone
        >>> from edge.manifest import load_manifest
        >>> m = load_manifest("models/tiny")                     # doctest: +SKIP
        >>> bb = LiteRTBackbone("models/tiny", m, "int8")        # doctest: +SKIP
        >>> bb.info.runtime                                         # doctest: +SKIP
        'ai_edge_litert'
    """

    def __init__(self, model_dir: str | os.PathLike[str], manifest: Manifest,
                 precision: str = "fp32", num_threads: int | None = None, max_batch: int = 32,
                 max_cached_sizes: int = 6) -> None:
        self.manifest = manifest
        self.precision = precision
        self.num_threads = num_threads
        self.max_batch = int(max_batch)
        if self.max_batch < 1:
            raise ConfigError(f"max_batch: expected >= 1, got {max_batch}")
        self.max_cached_sizes = int(max_cached_sizes)
        self._entry: ModelFile = manifest.file("tflite", precision)
        self._path = Path(model_dir) / self._entry.path
        self._interpreter_cls, package = import_litert_interpreter()
        self._model_content = self._path.read_bytes()
        self._cache: OrderedDict[int, _Slot] = OrderedDict()
        self._buckets = [0] + [_bucket(n, self.max_batch) for n in range(1, self.max_batch + 1)]
        self._in_dtype = np.dtype(_model_input_dtype(manifest, self._entry))
        self._in_q: QuantParams | None = None
        self._out_q: QuantParams | None = None
        self._out_scale = np.float32(1.0)
        self._out_zero = np.float32(0.0)
        self.info = BackboneInfo(runtime=package, precision=precision, file=str(self._path),
                                 threads=num_threads, providers=("CPU",))
        self._check_model()
        self._mapper = InputMapper(manifest.input_shape, manifest.preprocessing, self._in_dtype.name,
                                   self._in_q if self._in_dtype == np.int8 else None)

    # -- building
    def _new_slot(self, batch: int) -> _Slot:
        try:
            interp = self._interpreter_cls(model_content=self._model_content,
                                           num_threads=self.num_threads)
            inp = interp.get_input_details()
            if len(inp) != 1:
                raise ModelLoadError(f"{self._path}: expected 1 input tensor, got {len(inp)}")
            if int(inp[0]["shape"][0]) != batch:
                interp.resize_tensor_input(inp[0]["index"], [batch, *self.manifest.input_shape])
            with litert_log_to_logging():
                interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"{self._path}: the LiteRT interpreter cannot load it: {exc}") from exc
        out = interp.get_output_details()
        padded = np.zeros((batch, *self.manifest.input_shape), dtype=self._in_dtype)
        return _Slot(interp, int(inp[0]["index"]), int(out[0]["index"]), padded)

    def _check_model(self) -> None:
        interp = self._slot(1).interp
        inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
        want_shape = (1, *self.manifest.input_shape)
        if tuple(int(v) for v in inp["shape"]) != want_shape:
            raise ModelLoadError(f"{self._path}: input shape expected {want_shape} "
                                 f"(from the manifest), got {tuple(inp['shape'])}")
        if tuple(int(v) for v in out["shape"]) != (1, self.embedding_size):
            raise ModelLoadError(f"{self._path}: embedding size expected {self.embedding_size} "
                                 f"(output shape {(1, self.embedding_size)}), "
                                 f"got output shape {tuple(int(v) for v in out['shape'])}")
        in_dtype = np.dtype(inp["dtype"])
        if in_dtype != self._in_dtype:
            raise ModelLoadError(f"{self._path}: {self.precision} file expected a {self._in_dtype} input "
                                 f"(manifest input.dtype {self.manifest.input_dtype!r}), got {in_dtype}")
        if self.precision == "fp32":
            if np.dtype(out["dtype"]) != np.float32:
                raise ModelLoadError(f"{self._path}: fp32 file expected a float32 output, got {out['dtype']}")
            return
        self._in_q = self._checked_quant(self._entry.input_quantization, inp, "input")
        self._out_q = self._checked_quant(self._entry.output_quantization, out, "output")
        if self._in_dtype == np.uint8 and (self._in_q.scale != 1.0 or self._in_q.zero_point != 0):
            raise ModelLoadError(f"{self._path}: a uint8-input int8 file expected input quantization "
                                 f"scale=1, zero_point=0 (camera bytes unchanged), got "
                                 f"scale={self._in_q.scale}, zero_point={self._in_q.zero_point}")
        self._out_scale = np.float32(self._out_q.scale)
        self._out_zero = np.float32(self._out_q.zero_point)

    def _checked_quant(self, params: QuantParams | None, detail: dict[str, Any], what: str) -> QuantParams:
        scale, zero_point = (float(v) for v in detail["quantization"])
        dtype = np.dtype(detail["dtype"]).name
        if params is None:
            raise ManifestError(f"{self._entry.path}: manifest has no {what}_quantization for an int8 file")
        same = (abs(scale - params.scale) <= 1e-6 * max(abs(scale), 1e-30)
                and int(zero_point) == params.zero_point and dtype == params.dtype)
        if not same:
            raise ManifestError(
                f"{self._entry.path} {what} quantization: expected (from the manifest) "
                f"scale={params.scale}, zero_point={params.zero_point}, dtype={params.dtype}; "
                f"got (from the interpreter) scale={scale}, zero_point={int(zero_point)}, dtype={dtype}"
            )
        return params

    def _slot(self, batch: int) -> _Slot:
        cache = self._cache
        hit = cache.get(batch)
        if hit is not None:
            if len(cache) > 1:
                cache.move_to_end(batch)
            return hit
        built = self._new_slot(batch)
        cache[batch] = built
        while len(cache) > max(1, self.max_cached_sizes):
            cache.popitem(last=False)
        return built

    # -- running
    def _run(self, x: np.ndarray) -> np.ndarray:
        if self._cache is None:
            raise ModelLoadError(f"{self._path}: backbone is closed")
        n = x.shape[0]
        out = np.empty((n, self.embedding_size), dtype=np.float32)
        step = self.max_batch
        for start in range(0, n, step):
            k = min(step, n - start)
            size = self._buckets[k]
            slot = self._slot(size)
            chunk = x[start:start + k] if n > step or start else x
            if size != k:
                slot.padded[:k] = chunk
                chunk = slot.padded
            interp = slot.interp
            interp.set_tensor(slot.i_in, chunk)
            interp.invoke()
            view = interp.tensor(slot.i_out)()
            dst = out[start:start + k]
            if self._out_q is None:
                dst[...] = view[:k]
            else:
                np.subtract(view[:k], self._out_zero, out=dst, dtype=np.float32)
                dst *= self._out_scale
            del view  # no reference to the interpreter's buffer may outlive this invoke
        return out

    def close(self) -> None:
        """Drop the interpreters (idempotent)."""
        if self._cache:
            self._cache.clear()
        self._cache = None  # type: ignore[assignment]


# --------------------------------------------------------------------------- ONNX Runtime
def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise RuntimeUnavailableError(
            "ONNX Runtime is not installed: pip install onnxruntime "
            "(or onnxruntime-gpu on CUDA/Jetson devices; never both)"
        ) from exc
    return onnxruntime


class OnnxBackbone(Backbone):
    """An ``.onnx`` backbone on onnxruntime with explicit execution providers.

    ``providers``: ``"cpu"`` (CPUExecutionProvider), ``"cuda"`` (CUDA then CPU) or ``"tensorrt"``
    (TensorRT, CUDA, CPU), or an explicit list of provider names. After the session is built its
    `get_providers()` is checked: if an accelerator was asked for and is not the first provider in
    effect, ``on_fallback="warn"`` logs a warning and ``"error"`` raises `ProviderFallbackError`.
    `info.providers` always reports what runs.

    Example:
        >>> from edge.runtimes import open_backbone
        >>> bb = open_backbone("models/tiny", runtime="onnx")    # doctest: +SKIP
        >>> bb.info.providers                                       # doctest: +SKIP
        ('CPUExecutionProvider',)
    """

    def __init__(self, model_dir: str | os.PathLike[str], manifest: Manifest,
                 providers: str | list[str] | tuple[str, ...] = "cpu",
                 num_threads: int | None = None, on_fallback: str = "warn",
                 max_batch: int = 256) -> None:
        if on_fallback not in ("warn", "error"):
            raise ConfigError(f"on_fallback: expected 'warn' or 'error', got {on_fallback!r}")
        self.manifest = manifest
        self.providers = providers
        self.num_threads = num_threads
        self.on_fallback = on_fallback
        self.max_batch = int(max_batch)
        ort = _import_onnxruntime()
        entry = manifest.file("onnx", "fp32")
        path = Path(model_dir) / entry.path
        if isinstance(providers, str):
            if providers not in PROVIDER_CHAINS:
                raise ConfigError(f"providers: expected one of {sorted(PROVIDER_CHAINS)} or a list, "
                                  f"got {providers!r}")
            requested = PROVIDER_CHAINS[providers]
        else:
            requested = tuple(providers)
        available = set(ort.get_available_providers())
        usable = [p for p in requested if p in available]
        if not usable:
            raise RuntimeUnavailableError(
                f"none of the requested ONNX Runtime providers {list(requested)} is available "
                f"(available: {sorted(available)}); install onnxruntime-gpu for CUDA/TensorRT"
            )
        options = ort.SessionOptions()
        if num_threads is not None:
            options.intra_op_num_threads = int(num_threads)
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(path), sess_options=options, providers=usable)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelLoadError(f"{path}: ONNX Runtime cannot load it: {exc}") from exc
        running = tuple(self._session.get_providers())
        self.info = BackboneInfo(runtime="onnxruntime", precision="fp32", file=str(path),
                                 threads=num_threads, providers=running)
        accel = requested[0]
        if accel != "CPUExecutionProvider" and (not running or running[0] != accel):
            message = (f"ONNX Runtime provider fallback: expected {accel} first, got {list(running)} "
                       f"(the model would run on {running[0] if running else 'nothing'})")
            if on_fallback == "error":
                self._session = None
                raise ProviderFallbackError(message)
            logger.warning(message)
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ModelLoadError(f"{path}: expected 1 input, got {len(inputs)}")
        self._input_name = inputs[0].name
        shape = inputs[0].shape
        self._fixed_batch = shape[0] if isinstance(shape[0], int) else None
        if tuple(shape[1:]) != tuple(manifest.input_shape):
            raise ModelLoadError(f"{path}: input shape expected (N, {manifest.input_shape}), got {shape}")
        want = {"uint8": "tensor(uint8)", "float32": "tensor(float)"}[manifest.input_dtype]
        if inputs[0].type != want:
            raise ModelLoadError(f"{path}: input type expected {want} (manifest input.dtype "
                                 f"{manifest.input_dtype!r}), got {inputs[0].type}")
        outputs = self._session.get_outputs()
        self._output_names = [outputs[0].name]
        self._step = self._fixed_batch or self.max_batch
        self._mapper = InputMapper(manifest.input_shape, manifest.preprocessing, manifest.input_dtype)

    def _run(self, x: np.ndarray) -> np.ndarray:
        session = self._session
        if session is None:
            raise ModelLoadError(f"{self.info.file}: backbone is closed")
        step, n = self._step, x.shape[0]
        out: np.ndarray  # onnxruntime is untyped
        if n <= step:  # the common case: one run, its output returned as is
            out = session.run(self._output_names, {self._input_name: x})[0]
        else:
            out = np.concatenate([session.run(self._output_names, {self._input_name: x[i:i + step]})[0]
                                  for i in range(0, n, step)])
        if out.dtype != np.float32 or out.shape != (n, self.embedding_size):
            out = np.asarray(out, dtype=np.float32).reshape(n, self.embedding_size)
        return out

    def close(self) -> None:
        """Drop the session (idempotent)."""
        self._session = None


# --------------------------------------------------------------------------- BLAS threads
_BLAS_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                 "openblas_set_num_threads64_", "openblas_set_num_threads")


def limit_blas_threads(n: int = 1) -> list[str]:
    """Set the thread count of every OpenBLAS library loaded in this process (NumPy's); returns
    the libraries changed (empty where none is found, e.g. not Linux, or another BLAS).

    Why: the head's matrix products are small (a few hundred rows x embedding_size x max_classes)
    and run right after the backbone's invoke, whose own worker threads (XNNPACK, ORT) are still
    spinning. With OpenBLAS starting its threads too, a 2-core box measured a 32-row MobileNetV2
    head forward at 5 ms instead of 0.04 ms and a 300-frame learn step at 150-290 ms instead of
    27 ms (bench, load average ~10). One BLAS thread is what a device wants: the runtime owns the
    cores. Found through ``/proc/self/maps`` and set with OpenBLAS's own setter (ctypes), as
    threadpoolctl does, without the extra dependency.
    """
    import ctypes

    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower() and "/" in line}
    except OSError:
        return []
    changed = []
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _BLAS_SETTERS:
            setter = getattr(lib, name, None)
            if setter is not None:
                setter.argtypes = [ctypes.c_int]
                setter(int(n))
                changed.append(path)
                break
    if changed:
        logger.debug("OpenBLAS threads set to %d in %s", n, changed)
    return changed


# --------------------------------------------------------------------------- factory
def runtime_available(runtime: str) -> bool:
    """Whether the runtime's package can be imported (imports it if so)."""
    try:
        (import_litert_interpreter if runtime == "litert" else _import_onnxruntime)()
    except RuntimeUnavailableError:
        return False
    return True


def open_backbone(model_dir: str | os.PathLike[str], runtime: str = "auto", precision: str = "fp32",
                  providers: str | list[str] | tuple[str, ...] = "cpu", num_threads: int | None = None,
                  verify: bool = True, on_fallback: str = "warn") -> Backbone:
    """Load ``model_dir/manifest.json`` (checking every file's sha256 when ``verify``) and open a backbone.

    ``runtime="auto"`` picks LiteRT when installed, else ONNX Runtime (int8 needs LiteRT: the
    manifest's int8 artifact is a TFLite file). Raises `ManifestError`, `ChecksumError`,
    `RuntimeUnavailableError` or `ModelLoadError` with expected vs got.
    """
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime: expected one of {RUNTIMES}, got {runtime!r}")
    if precision not in ("fp32", "int8"):
        raise ConfigError(f"precision: expected 'fp32' or 'int8', got {precision!r}")
    manifest = load_manifest(model_dir, verify=verify)
    if runtime == "auto":
        if precision == "int8" or runtime_available("litert"):
            runtime = "litert"
        else:
            runtime = "onnx"
    if runtime == "litert":
        return LiteRTBackbone(model_dir, manifest, precision=precision, num_threads=num_threads)
    if precision != "fp32":
        raise ManifestError(f"runtime onnx: expected precision fp32, got {precision!r} "
                            "(int8 models run on LiteRT)")
    return OnnxBackbone(model_dir, manifest, providers=providers, num_threads=num_threads,
                        on_fallback=on_fallback)
