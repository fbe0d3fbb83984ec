"""Benchmark fixtures, the parameter grid, and the side-channel for non-timing figures.

Full mode (``make bench`` / ``python -m bench.report``): the whole grid, timed by pytest-benchmark.
Quick mode (``--benchmark-disable`` or ``EDGE_BENCH_QUICK=1``; what `make test` runs): one thread
count, shortened streams, fewer memory workers; every test still runs its body once and checks
its outputs, so the suites cannot rot.

Figures that are not timings (peak RSS from subprocesses, accuracies, bytes) are recorded with the
``figures`` fixture and written as JSON to ``$EDGE_BENCH_FIGURES`` at the end of the session.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench import _common as C

_FIGURES: dict[str, Any] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "bench_gpu: a GPU execution-provider case (skipped without a GPU)")
    config.addinivalue_line("markers", "keras_fit: the Keras fit baseline (TensorFlow GPU in bench/gpu.sh)")


def _grid(config: pytest.Config) -> dict[str, list[Any]]:
    quick = C.quick_mode(config)
    return {
        # EfficientNet-Lite0 @128 (ImageNet weights) only in the full grid: building it takes minutes.
        # lite0_224: the packaged device default (int8 TFLite + ONNX), full grid only (18 ms a frame).
        # "default" is the tiny 32-px model (models/tiny), the key kept so earlier results still merge.
        "model": ["default", "mobilenet"] if quick else ["default", "mobilenet", "efficientnet", C.DEVICE_DEFAULT],
        # EDGE_BENCH_BATCHES="1,32,256" (bench/gpu.sh) widens the batch sizes.
        "batch": [int(b) for b in os.environ.get("EDGE_BENCH_BATCHES", "1,32").split(",") if b.strip()],
        "threads": [C.THREADS] if quick else [1, 2, 4],
        "case": list(C.RUNTIME_CASES),
    }


def _case_param(case: str) -> Any:
    marks = [pytest.mark.bench_gpu] if case in C.GPU_CASES else []
    return pytest.param(case, id=case, marks=marks)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    grid = _grid(metafunc.config)
    names = metafunc.fixturenames
    if "case_threads" in names:
        # GPU providers ignore the CPU thread count: one variant each.
        pairs = [(c, t) for c in grid["case"] for t in grid["threads"]
                 if c not in C.GPU_CASES or t == C.THREADS]
        metafunc.parametrize("case_threads", [pytest.param(
            p, id=f"{p[0]}-t{p[1]}", marks=[pytest.mark.bench_gpu] if p[0] in C.GPU_CASES else [])
            for p in pairs])
    if "case" in names:
        metafunc.parametrize("case", [_case_param(c) for c in grid["case"]])
    if "batch" in names:
        metafunc.parametrize("batch", grid["batch"], ids=lambda b: f"b{b}")
    if "model" in names:
        metafunc.parametrize("model", grid["model"])
    if "learn_config" in names:
        # Strategies are read at collection time: ones registered by other modules show up here.
        # Every strategy on the default model; the replay strategy on every model x runtime.
        from edge.strategies import STRATEGIES

        quick = C.quick_mode(metafunc.config)
        cpu_cases = ["litert-fp32"] if quick else [c for c in grid["case"] if c not in C.GPU_CASES]
        configs = [("default", c, s) for c in cpu_cases for s in sorted(STRATEGIES)]
        configs += [(m, c, "replay") for m in grid["model"] for c in grid["case"]
                    if (m, c, "replay") not in configs and (not quick or c != "litert-int8")]
        metafunc.parametrize("learn_config", [pytest.param(
            cfg, id="-".join(cfg), marks=[pytest.mark.bench_gpu] if cfg[1] in C.GPU_CASES else [])
            for cfg in configs])


@pytest.fixture(scope="session")
def quick(request: pytest.FixtureRequest) -> bool:
    return C.quick_mode(request.config)


@pytest.fixture(scope="session")
def figures() -> dict[str, Any]:
    """Session-wide dict of non-timing figures, written to ``$EDGE_BENCH_FIGURES`` at the end."""
    return _FIGURES


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Keep every skip reason (GPU cases, missing TensorFlow) for the summary."""
    if report.skipped and report.when in ("setup", "call"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _FIGURES.setdefault("skipped", {})[report.nodeid] = reason.removeprefix("Skipped: ")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = os.environ.get("EDGE_BENCH_FIGURES")
    if path and _FIGURES:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(_FIGURES, indent=2, sort_keys=True, default=float) + "\n")


# --------------------------------------------------------------------------- models
_MODEL_DIRS: dict[str, Path] = {}


def model_dir_for(model: str) -> Path:
    """``default`` -> models/tiny; ``mobilenet`` -> the cached MobileNetV2-0.35 export (TF once);
    ``efficientnet`` -> EfficientNet-Lite0 @128 (`bench._common.efficientnet_model_dir`);
    ``lite0_224`` -> the packaged device default, EfficientNet-Lite0 @224 (`edge.models.imagenet_model_dir`)."""
    if model in _MODEL_DIRS:
        return _MODEL_DIRS[model]
    if model == "default":
        if not (C.TINY_MODEL / "manifest.json").is_file():
            pytest.skip(f"the tiny model is missing: {C.TINY_MODEL}/manifest.json")
        path = C.TINY_MODEL
    elif model == "mobilenet":
        cached = C.CACHE / "models" / C.MOBILENET_NAME / "manifest.json"
        if not cached.is_file() and not C.has_tensorflow():
            pytest.skip("MobileNetV2 export needs TensorFlow (the host extra) and is not cached yet")
        path = C.mobilenet_model_dir()
    elif model == C.DEVICE_DEFAULT:
        from edge.models import imagenet_model_dir

        path = imagenet_model_dir()
        if not (path / "manifest.json").is_file():
            pytest.skip(f"the packaged ImageNet model is missing: {path}/manifest.json")
    elif model == "efficientnet":
        found = C.efficientnet_model_dir()
        if found is None:
            pytest.skip("EfficientNet-Lite0 @128 with a uint8 input is not built and cannot be built here "
                        "(needs TensorFlow, the weights package and the ImageNet sample)")
        path = found
    else:  # pragma: no cover - grid typo
        raise ValueError(f"model: expected 'default', 'mobilenet', 'efficientnet' or 'lite0_224', got {model!r}")
    _MODEL_DIRS[model] = path
    return path


def need_case(case: str) -> tuple[str, str, str]:
    """The (runtime, precision, providers) of a case, or skip with the reason it cannot run here."""
    reason = C.gpu_skip_reason(case)
    if reason:
        pytest.skip(reason)
    return C.RUNTIME_CASES[case]


def need_file(model_dir: Path, runtime: str, precision: str) -> None:
    """Skip when the model ships no file for this runtime/precision (lite0_224: no fp32 TFLite)."""
    from edge.manifest import load_manifest

    fmt = "onnx" if runtime == "onnx" else "tflite"
    if not any(f.format == fmt and f.precision == precision for f in load_manifest(model_dir, verify=False).files):
        pytest.skip(f"{model_dir.name} ships no {fmt}/{precision} file")


def open_case(model: str, case: str, threads: int | None):
    from edge.runtimes import open_backbone

    runtime, precision, providers = need_case(case)
    need_file(model_dir_for(model), runtime, precision)
    return open_backbone(model_dir_for(model), runtime=runtime, precision=precision,
                         providers=providers, num_threads=threads,
                         on_fallback="error" if case in C.GPU_CASES else "warn")


def frames_for_model(model_dir: Path, n: int, seed: int = 0) -> np.ndarray:
    from edge.manifest import load_manifest

    shape = tuple(load_manifest(model_dir, verify=False).input_shape)
    return C.rng_frames(n, shape, seed)
