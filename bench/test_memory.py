"""Peak RSS of each configuration in a fresh subprocess (import, load, learn 10 x 300 frames,
predict), edge vs Keras, plus the bytes of head, buffer and state (see `bench._rss_worker`)."""

from __future__ import annotations

import pytest

from bench import _common as C
from bench.conftest import model_dir_for, need_case


def _edge_configs(quick: bool) -> list[tuple[str, str]]:
    if quick:
        return [("default", "litert-fp32"), ("keras", "litert-fp32")]
    models = ("default", "keras", "mobilenet")
    return [(m, c) for m in models for c in C.RUNTIME_CASES]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "edge_config" in metafunc.fixturenames:
        configs = _edge_configs(C.quick_mode(metafunc.config))
        metafunc.parametrize("edge_config", configs, ids=[f"{m}-{c}" for m, c in configs])
    if "keras_epochs" in metafunc.fixturenames:
        epochs = [1] if C.quick_mode(metafunc.config) else [1, C.KERAS_EPOCHS]
        metafunc.parametrize("keras_epochs", epochs, ids=[f"e{e}" for e in epochs])


def _keras_model_dir(quick: bool):
    if not C.has_tensorflow():
        pytest.skip("the Keras-backbone export needs TensorFlow (the host extra)")
    return C.keras_backbone_model_dir(C.keras_run_dir(quick))


def test_rss_edge(edge_config, figures, quick):
    model, case = edge_config
    need_case(case)
    mdir = _keras_model_dir(quick) if model == "keras" else model_dir_for(model)
    out = C.run_worker(["edge", "--model", str(mdir), "--case", case])
    figures.setdefault("rss_edge", {})[f"{model}|{case}"] = out
    assert out["peak_rss_bytes"] > 0 and out["predictions"] == 32
    assert not out["tensorflow_loaded"], "the edge process imported TensorFlow"
    assert out["memory_bytes"]["total"] > 0 and out["checkpoint_bytes"] > 0


def test_rss_keras(keras_epochs, figures, quick):
    if not C.has_tensorflow():
        pytest.skip("the Keras baseline needs TensorFlow (the host extra)")
    run_dir = C.keras_run_dir(quick)
    out = C.run_worker(["keras", "--run-dir", str(run_dir), "--epochs", str(keras_epochs)])
    figures.setdefault("rss_keras", {})[f"e{keras_epochs}"] = out
    assert out["peak_rss_bytes"] > out["rss_bytes"]["start"] > 0 and out["predictions"] == 32
