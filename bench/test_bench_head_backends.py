"""Head backends: one training step of the TFLite head (inside LiteRT) vs the NumPy head.

Self-contained: the shipped head files of models/tiny, the same batch and the same starting
state for both backends, timed by pytest-benchmark's ``benchmark`` fixture. No absolute-time
assertions; each case checks that the step did train.

    pytest bench/test_bench_head_backends.py --benchmark-only
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.heads import make_head

pytest.importorskip("ai_edge_litert")

MODEL = Path(__file__).resolve().parents[1] / "models" / "tiny"
CASES = {  # (kind, optimizer, hidden) -> shipped head file (batch 32, 50 classes, lr 0.01, wd 1e-4)
    ("softmax", "sgd", None): MODEL / "head_softmax_sgd_b32_c50.tflite",
    ("mlp", "adam", 128): MODEL / "head_mlp_adam_b32_c50_h128.tflite",
}


def _head(backend: str, kind: str, optimizer: str, hidden: int | None):
    params = {"optimizer": optimizer, "lr": 0.01, "weight_decay": 1e-4, "hidden": hidden or 128, "seed": 0}
    if backend == "numpy":
        return make_head(kind, 256, 50, **params)
    from edge.tflite_head import TFLiteHead

    return TFLiteHead(CASES[(kind, optimizer, hidden)], 256, 50, kind=kind, num_threads=1, **params)


@pytest.mark.parametrize("rows", [32, 8], ids=["full-batch", "partial-batch"])
@pytest.mark.parametrize("head_case", list(CASES), ids=lambda c: f"{c[0]}-{c[1]}")
@pytest.mark.parametrize("backend", ["numpy", "tflite"])
def test_head_train_step(benchmark, backend: str, head_case: tuple, rows: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 256)).astype(np.float32)
    y = rng.integers(0, 10, rows)
    head = _head(backend, *head_case)
    before = head.state_dict()["param." + ("W" if head_case[0] == "softmax" else "W1")].copy()
    benchmark.extra_info.update({"backend": backend, "kind": head_case[0], "optimizer": head_case[1], "rows": rows})
    loss = benchmark(head.step, x, y)
    assert np.isfinite(loss)
    after = head.state_dict()["param." + ("W" if head_case[0] == "softmax" else "W1")]
    assert not np.array_equal(before, after)


@pytest.mark.parametrize("head_case", list(CASES), ids=lambda c: f"{c[0]}-{c[1]}")
@pytest.mark.parametrize("backend", ["numpy", "tflite"])
def test_head_predict_proba(benchmark, backend: str, head_case: tuple) -> None:
    rng = np.random.default_rng(1)
    head = _head(backend, *head_case)
    head.step(rng.normal(size=(32, 256)).astype(np.float32), rng.integers(0, 10, 32))
    x = rng.normal(size=(64, 256)).astype(np.float32)
    proba = benchmark(head.predict_proba, x)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
