"""The LiteRT fallback really works: ``tflite_runtime`` on NumPy 1.x runs the packaged tiny model (issue 13).

`make test-tflrt` runs this file (and a slice of the contract tests) in a second virtual environment,
``.venv-tflrt``: NumPy 1.24, ``tflite-runtime`` 2.14, no ``ai-edge-litert`` and no ``onnxruntime``.
It sets ``EDGE_TEST_LITERT_PACKAGE=tflite_runtime``, so every test asserts that the fallback is what
served the backbone, and ``EDGE_TEST_REFERENCE_PYTHON`` (the main venv's interpreter), so the same
frames are embedded by ``ai_edge_litert`` in that other process and compared under the manifest's
tolerances. In the main venv the file runs too, on ``ai_edge_litert``, minus those two checks.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _edge_common import frames_for
from edge.agent import Agent, AgentConfig
from edge.checkpoint import CheckpointStore, resume
from edge.config import validate_agent_config
from edge.models import tiny_model_dir
from edge.runtimes import import_litert_interpreter, open_backbone

#: The LiteRT package the environment must use (set by `make test-tflrt`), else None: any.
EXPECTED = os.environ.get("EDGE_TEST_LITERT_PACKAGE") or None
#: An interpreter with ai_edge_litert, for the cross-runtime comparison (set by `make test-tflrt`).
REFERENCE_PY = os.environ.get("EDGE_TEST_REFERENCE_PYTHON") or None
PRECISIONS = ("fp32", "int8")
#: int8 of two LiteRT builds (ai_edge_litert 2.3 vs tflite_runtime 2.14) may differ by one output
#: quantization step on a few elements: measured min cosine 0.99998 over 64 frames; fp32 matched to 1.9e-7.
CROSS_RUNTIME_INT8_MIN_COSINE = 0.999


def _model() -> Path:
    model = tiny_model_dir()
    if not (model / "manifest.json").is_file():
        pytest.skip(f"the tiny model is missing: {model}/manifest.json")
    return model


@pytest.fixture(scope="module", params=PRECISIONS)
def bb(request):
    backbone = open_backbone(_model(), runtime="litert", precision=request.param, num_threads=2)
    yield backbone
    backbone.close()


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))


def test_environment_has_only_the_fallback():
    if EXPECTED is None:
        pytest.skip("only in the tflite-runtime venv (make test-tflrt sets EDGE_TEST_LITERT_PACKAGE)")
    _, package = import_litert_interpreter()
    assert package == EXPECTED, f"LiteRT package: expected {EXPECTED}, got {package}"
    if EXPECTED == "tflite_runtime":
        assert importlib.util.find_spec("ai_edge_litert") is None, "ai_edge_litert must not be installed here"
        major = int(np.__version__.split(".")[0])
        assert major == 1, f"numpy: expected 1.x (what tflite-runtime is built for), got {np.__version__}"


def test_backbone_reports_the_runtime_that_ran_it(bb):
    if EXPECTED is not None:
        assert bb.info.runtime == EXPECTED, f"runtime: expected {EXPECTED}, got {bb.info.runtime}"
    else:
        assert bb.info.runtime in ("ai_edge_litert", "tflite_runtime")
    frames = frames_for(np.arange(5), bb.manifest.input_shape, seed=3)
    emb = bb.embed(frames)
    assert emb.shape == (5, bb.manifest.embedding_size) and emb.dtype == np.float32
    assert np.isfinite(emb).all() and np.abs(emb).max() > 0
    one_by_one = np.concatenate([bb.embed(frames[i:i + 1]) for i in range(len(frames))])
    np.testing.assert_allclose(one_by_one, emb, rtol=1e-5, atol=1e-5)


def test_int8_agrees_with_fp32_within_the_manifest_tolerance():
    fp32 = open_backbone(_model(), runtime="litert", precision="fp32", num_threads=2)
    int8 = open_backbone(_model(), runtime="litert", precision="int8", num_threads=2)
    frames = frames_for(np.arange(8), fp32.manifest.input_shape, seed=5)
    cos = _cosine(fp32.embed(frames), int8.embed(frames)).min()
    want = fp32.manifest.tolerances["int8"]["min_cosine"]
    assert cos >= want, f"int8 vs fp32 cosine: expected >= {want}, got {cos:.5f}"


_REFERENCE = """
import sys, numpy as np
from edge.models import tiny_model_dir
from edge.runtimes import open_backbone
frames = np.load(sys.argv[1])
out = {}
for precision in ("fp32", "int8"):
    with open_backbone(tiny_model_dir(), runtime="litert", precision=precision, num_threads=2) as bb:
        assert bb.info.runtime == "ai_edge_litert", bb.info.runtime
        out[precision] = bb.embed(frames)
np.savez(sys.argv[2], **out)
"""


def test_embeddings_match_ai_edge_litert_in_the_main_venv(tmp_path):
    if REFERENCE_PY is None:
        pytest.skip("needs EDGE_TEST_REFERENCE_PYTHON, an interpreter with ai_edge_litert (make test-tflrt)")
    model = _model()
    fp32 = open_backbone(model, runtime="litert", precision="fp32", num_threads=2)
    int8 = open_backbone(model, runtime="litert", precision="int8", num_threads=2)
    frames = frames_for(np.arange(16) % 8, fp32.manifest.input_shape, seed=11)
    np.save(tmp_path / "frames.npy", frames)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run([REFERENCE_PY, "-c", _REFERENCE, str(tmp_path / "frames.npy"), str(tmp_path / "ref.npz")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, f"reference run: expected exit 0, got {proc.returncode}: {proc.stderr[-2000:]}"
    with np.load(tmp_path / "ref.npz") as ref:
        ref_fp32, ref_int8 = ref["fp32"], ref["int8"]
    tol = fp32.manifest.tolerances
    got = fp32.embed(frames)
    rel = float(np.abs(got - ref_fp32).max() / np.abs(ref_fp32).max())
    assert rel <= tol["fp32"]["max_rel_diff"], f"fp32 max rel diff: expected <= {tol['fp32']['max_rel_diff']}, got {rel:.3g}"
    assert _cosine(got, ref_fp32).min() >= tol["fp32"]["min_cosine"]
    got8 = int8.embed(frames)
    cos8 = _cosine(got8, ref_int8).min()
    assert cos8 >= CROSS_RUNTIME_INT8_MIN_COSINE, \
        f"int8 vs ai_edge_litert int8 cosine: expected >= {CROSS_RUNTIME_INT8_MIN_COSINE}, got {cos8:.5f}"
    assert _cosine(got8, ref_fp32).min() >= tol["int8"]["min_cosine"]


@pytest.mark.parametrize("precision,head_backend", [("fp32", "numpy"), ("int8", "numpy"), ("int8", "tflite")])
def test_agent_learns_checkpoints_and_resumes(tmp_path, precision, head_backend):
    backbone = open_backbone(_model(), runtime="litert", precision=precision, num_threads=2)
    if EXPECTED is not None:
        assert backbone.info.runtime == EXPECTED
    extra = {"optimizer": "sgd", "strategy": "replay"} if head_backend == "tflite" else {}
    config = AgentConfig(max_classes=50 if head_backend == "tflite" else 6, buffer_capacity=32, epochs=3,
                         seed=0, head_backend=head_backend, **extra)
    agent = Agent(backbone, config)
    labels = np.repeat(np.arange(3), 8)
    input_shape = backbone.manifest.input_shape
    for cls in range(3):  # one class per batch: the continual case, replay keeps the old ones
        agent.learn_many(frames_for(labels[labels == cls], input_shape, seed=cls), labels[labels == cls])
    test_y = np.repeat(np.arange(3), 4)
    test_x = frames_for(test_y, input_shape, seed=99)
    accuracy = float((agent.predict_many(test_x) == test_y).mean())
    assert accuracy >= 0.9, f"held-out accuracy after three one-class batches: expected >= 0.9, got {accuracy:.2f}"

    store = CheckpointStore(tmp_path / "state", backbone.manifest.fingerprint, validate_config=validate_agent_config)
    store.save(agent.state_dict(), agent.config.to_dict(), agent.step_)

    def restore(ckpt):
        fresh = Agent(backbone, AgentConfig.from_dict(ckpt.config))
        fresh.load_state_dict(ckpt.state)
        return fresh

    resumed = resume(store, restore)
    assert resumed is not None, "resume: expected the saved checkpoint, got none"
    again, ckpt = resumed
    assert ckpt.step == agent.step_
    np.testing.assert_array_equal(again.predict_proba_many(test_x), agent.predict_proba_many(test_x))


def test_edge_agent_cli_on_the_installed_runtime(tmp_path):
    from PIL import Image

    _model()
    exe = Path(sys.executable).parent / "edge-agent"
    if not exe.is_file():
        pytest.skip(f"the edge-agent console script is not installed next to {sys.executable}")
    shape = open_backbone(_model(), runtime="litert", precision="int8").manifest.input_shape
    images = []
    for label in (0, 1):
        for i, frame in enumerate(frames_for(np.full(3, label), shape, seed=label)):
            path = tmp_path / f"c{label}_{i}.png"
            Image.fromarray(frame).save(path)
            images.append(path.name)
    state = tmp_path / "state"
    base = [str(exe)]
    common = ["--model", str(_model()), "--state", str(state), "--precision", "int8", "--runtime", "litert"]
    for label in (0, 1):
        proc = subprocess.run([*base, "learn", *common, "--label", str(label),
                               *[p for p in images if p.startswith(f"c{label}_")]],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"learn: expected exit 0, got {proc.returncode}: {proc.stderr}"
    proc = subprocess.run([*base, "predict", *common, "--json", *images], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    predicted = [json.loads(line)["index"] for line in proc.stdout.splitlines()]
    assert predicted == [int(p[1]) for p in images], f"labels: expected the taught ones, got {predicted}"
    proc = subprocess.run([*base, "status", *common, "--json"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    status = json.loads(proc.stdout)
    assert status["classes_seen"] == [0, 1] and status["precision"] == "int8"
    if EXPECTED is not None:
        assert status["runtime"] == EXPECTED, f"status runtime: expected {EXPECTED}, got {status['runtime']}"
