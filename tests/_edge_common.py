"""Shared helpers of the edge tests (not a test module)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "models" / "tiny"

RUNTIME_CASES = {
    "litert-fp32": ("litert", "fp32"),
    "litert-int8": ("litert", "int8"),
    "onnx-fp32": ("onnx", "fp32"),
}


def need_model() -> Path:
    """The shipped default model directory, or skip with a reason."""
    if not (MODEL_DIR / "manifest.json").is_file():
        pytest.skip(f"the default model is missing: {MODEL_DIR}/manifest.json "
                    "(produce it with the host export command)")
    return MODEL_DIR


@lru_cache(maxsize=None)
def backbone(case: str):
    """One backbone per runtime case, opened once per test process."""
    from edge.runtimes import open_backbone

    runtime, precision = RUNTIME_CASES[case]
    return open_backbone(need_model(), runtime=runtime, precision=precision, num_threads=2)


def frames_for(labels: np.ndarray, shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Synthetic uint8 frames whose colour and pattern depend on the label (learnable)."""
    rng = np.random.default_rng(seed)
    h, w, c = shape
    palette = np.random.default_rng(1234).integers(0, 256, size=(64, c))
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.empty((len(labels), h, w, c), dtype=np.uint8)
    for i, label in enumerate(labels):
        stripes = ((xx * (1 + label % 4) + yy * (label // 4 % 3)) % 8 < 4)[..., None] * 60
        noise = rng.normal(0, 12, size=(h, w, c))
        out[i] = np.clip(palette[label % 64] * 0.7 + stripes + noise, 0, 255).astype(np.uint8)
    return out


def blobs(n_per_class: int, n_classes: int, dim: int, seed: int = 0, spread: float = 1.0):
    """Gaussian blobs in embedding space: (x float32, y int64)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 4, size=(n_classes, dim))
    y = np.repeat(np.arange(n_classes), n_per_class)
    x = centers[y] + rng.normal(0, spread, size=(len(y), dim))
    return x.astype(np.float32), y.astype(np.int64)


def one_class_teaches(seed: int, rows: int, n_classes: int, dim: int):
    """A device's pattern: one teach per class of ``rows`` rows from Gaussian clusters, and 40
    held-out rows per class. Returns ``([(x, y) per class], (test_x, test_y))``."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim)) * 1.2

    def draw(n: int):
        y = np.repeat(np.arange(n_classes), n)
        return (centres[y] + rng.normal(size=(y.size, dim))).astype(np.float32), y
    (x, y), test = draw(rows), draw(40)
    return [(x[y == c], y[y == c]) for c in range(n_classes)], test
