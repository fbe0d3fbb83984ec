"""The TFLite head backend (edge.tflite_head) on the shipped head files: no TensorFlow needed.

Parity tolerance: rtol 1e-4, atol 1e-5 on every weight, optimizer slot and probability.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _tflite_head_common import ATOL, RTOL, max_abs_diff, parity_run

from edge.agent import Agent, AgentConfig
from edge.errors import InputError, ManifestError, ModelLoadError, NotFittedError
from edge.heads import make_head
from edge.manifest import Manifest, load_manifest
from edge.tflite_head import TFLiteHead, find_head_file
from host.tflite_ops import non_builtin_ops, tflite_op_names

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "tiny"
SOFTMAX_SGD = MODEL / "head_softmax_sgd_b32_c50.tflite"
MLP_ADAM = MODEL / "head_mlp_adam_b32_c50_h128.tflite"
#: Manifest.fingerprint of models/tiny: it identifies the backbone and must not move with heads.
DEFAULT_FINGERPRINT = "dd0e9627dd53285d9416f763231537810ce1f9bfc9ec19066af7a90f74317907"
SHIPPED_HP = {"lr": 0.01, "weight_decay": 1e-4}

pytest.importorskip("ai_edge_litert")


def _assert_states_close(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for key, ref in want.items():
        assert got[key].dtype == ref.dtype and got[key].shape == ref.shape, key
        np.testing.assert_allclose(got[key], ref, rtol=RTOL, atol=ATOL, err_msg=key)


# ---------------------------------------------------------------------------------- manifest
def test_shipped_manifest_lists_heads_and_keeps_the_backbone_fingerprint() -> None:
    manifest = load_manifest(MODEL)  # verifies the head files' sha256 too
    assert {h.path for h in manifest.heads} == {SOFTMAX_SGD.name, MLP_ADAM.name}
    assert manifest.fingerprint == DEFAULT_FINGERPRINT
    data = json.loads((MODEL / "manifest.json").read_text())
    without = {k: v for k, v in data.items() if k != "heads"}
    assert Manifest.from_dict(without).fingerprint == DEFAULT_FINGERPRINT
    assert Manifest.from_dict(without).heads == ()
    assert Manifest.from_dict(manifest.to_dict()) == manifest
    assert "heads" not in Manifest.from_dict(without).to_dict()  # old manifests are written unchanged


def test_bad_head_entries_are_refused(tmp_path: Path) -> None:
    data = json.loads((MODEL / "manifest.json").read_text())
    for field, value, match in (("embedding_size", 0, "embedding_size: expected a positive int"),
                                ("path", "../x.tflite", "inside the model directory"),
                                ("optimizer", "rmsprop", "sgd/adam"), ("hidden", None, "positive int")):
        bad = copy.deepcopy(data)
        bad["heads"][1][field] = value
        with pytest.raises(ManifestError, match=match):
            Manifest.from_dict(bad)
    stale = copy.deepcopy(data)
    stale["heads"][0]["embedding_size"] = 128  # a stale head: the backbone still loads, the head is skipped
    with pytest.raises(ManifestError, match="no trainable head softmax/sgd"):
        find_head_file(MODEL, Manifest.from_dict(stale), AgentConfig())
    copy_dir = tmp_path / "m"
    copy_dir.mkdir()
    for f in MODEL.iterdir():
        (copy_dir / f.name).write_bytes(f.read_bytes())
    (copy_dir / SOFTMAX_SGD.name).write_bytes(b"not a model")
    with pytest.raises(ValueError, match="size expected"):
        load_manifest(copy_dir)
    same_size = bytearray(SOFTMAX_SGD.read_bytes())
    same_size[len(same_size) // 2] ^= 0xFF
    (copy_dir / SOFTMAX_SGD.name).write_bytes(bytes(same_size))
    with pytest.raises(ValueError, match="sha256 expected"):
        load_manifest(copy_dir)


@pytest.mark.parametrize("path", [SOFTMAX_SGD, MLP_ADAM], ids=lambda p: p.stem)
def test_shipped_head_files_use_builtin_ops_only(path: Path) -> None:
    ops = tflite_op_names(path)
    assert non_builtin_ops(ops) == []
    assert not any(op.startswith("Flex") for op in ops)
    assert {"ASSIGN_VARIABLE", "READ_VARIABLE", "VAR_HANDLE"} <= set(ops)  # trains in resource variables
    recorded = next(h for h in load_manifest(MODEL).heads if h.path == path.name).producer["ops"]
    assert recorded == ops
    assert non_builtin_ops(["ADD", "FlexReluGrad", "CUSTOM"]) == ["FlexReluGrad", "CUSTOM"]


# ---------------------------------------------------------------------------------- parity
def test_softmax_sgd_parity_after_200_steps() -> None:
    r = parity_run(str(SOFTMAX_SGD), "softmax", "sgd", 256, 50, 32, steps=200, momentum=0.9, **SHIPPED_HP)
    _assert_states_close(r["tflite_state"], r["numpy_state"])
    assert max_abs_diff(r["tflite_state"], r["numpy_state"]) < 1e-5
    np.testing.assert_allclose(r["losses"][:, 1], r["losses"][:, 0], rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(r["tfl"].predict(r["test"]), r["ref"].predict(r["test"]))
    np.testing.assert_allclose(r["tfl"].predict_proba(r["test"]), r["ref"].predict_proba(r["test"]),
                               rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(r["tfl"].decision_function(r["test"]), r["ref"].decision_function(r["test"]),
                               rtol=RTOL, atol=1e-4)


def test_mlp_adam_shipped_head_parity() -> None:
    # 40 steps: 200 steps of this 256-128-50 MLP with Adam at lr 0.01 are chaotic (two NumPy heads
    # whose initial weights differ by one ulp end 5e-2 apart); the 200-step MLP/Adam parity runs on
    # a smaller exported head in test_tflite_head_export.py.
    r = parity_run(str(MLP_ADAM), "mlp", "adam", 256, 50, 32, steps=40, hidden=128, **SHIPPED_HP)
    _assert_states_close(r["tflite_state"], r["numpy_state"])
    np.testing.assert_array_equal(r["tfl"].predict(r["test"]), r["ref"].predict(r["test"]))


def test_partial_batches_are_exact_and_oversized_ones_refused() -> None:
    rng = np.random.default_rng(3)
    ref = make_head("softmax", 256, 50, weight_decay=1e-4, seed=5)
    tfl = TFLiteHead(SOFTMAX_SGD, 256, 50, weight_decay=1e-4, seed=5)
    for n in (1, 7, 31, 32):
        x, y = rng.normal(size=(n, 256)).astype(np.float32), rng.integers(0, 4, n)
        assert tfl.step(x, y) == pytest.approx(ref.step(x, y), rel=1e-5)
    _assert_states_close(tfl.state_dict(), ref.state_dict())
    with pytest.raises(InputError, match="at most 32 rows"):
        tfl.step(np.zeros((33, 256), np.float32), np.zeros(33, np.int64))
    with pytest.raises(InputError, match="at most 32"):
        tfl.partial_fit(np.zeros((40, 256), np.float32), np.zeros(40, np.int64), batch_size=64)
    with pytest.raises(InputError, match="expected shape"):
        tfl.step(np.zeros((3, 10), np.float32), np.zeros(3, np.int64))
    # partial_fit draws the same permutations as the NumPy head
    x, y = rng.normal(size=(70, 256)).astype(np.float32), rng.integers(0, 9, 70)
    ref.partial_fit(x, y, epochs=2, batch_size=32, rng=np.random.default_rng(1))
    tfl.partial_fit(x, y, epochs=2, batch_size=32, rng=np.random.default_rng(1))
    _assert_states_close(tfl.state_dict(), ref.state_dict())


def test_unseen_classes_are_masked_exactly_as_numpy() -> None:
    tfl = TFLiteHead(SOFTMAX_SGD, 256, 50, weight_decay=1e-4)
    ref = make_head("softmax", 256, 50, weight_decay=1e-4)
    x = np.random.default_rng(0).normal(size=(5, 256)).astype(np.float32)
    with pytest.raises(NotFittedError):
        tfl.predict_proba(x)
    tfl.step(x, np.array([3, 3, 7, 3, 7]))
    ref.step(x, np.array([3, 3, 7, 3, 7]))
    proba = tfl.predict_proba(x)
    assert tfl.classes_.tolist() == [3, 7] == ref.classes_.tolist()
    assert np.all(proba[:, [c for c in range(50) if c not in (3, 7)]] == 0.0)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(proba, ref.predict_proba(x), rtol=RTOL, atol=ATOL)
    assert set(tfl.predict(x)) <= {3, 7}
    assert tfl.state_dict()["seen"].tolist() == ref.state_dict()["seen"].tolist()


# ---------------------------------------------------------------------------------- state
def test_checkpoints_move_between_backends() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(64, 256)).astype(np.float32), rng.integers(0, 6, 64)
    ref = make_head("mlp", 256, 50, hidden=128, optimizer="adam", weight_decay=1e-4, seed=2)
    ref.partial_fit(x, y, epochs=2, batch_size=32, rng=np.random.default_rng(0))
    tfl = TFLiteHead(MLP_ADAM, 256, 50, kind="mlp", hidden=128, optimizer="adam", weight_decay=1e-4)
    tfl.load_state_dict(ref.state_dict())
    _assert_states_close(tfl.state_dict(), ref.state_dict())
    assert tfl.t_ == ref.t_ == 4 and tfl.nbytes > 0
    for head in (ref, tfl):  # one more identical step on both
        head.step(x[:32], y[:32])
    back = make_head("mlp", 256, 50, hidden=128, optimizer="adam", weight_decay=1e-4)
    back.load_state_dict(tfl.state_dict())
    _assert_states_close(back.state_dict(), ref.state_dict())
    with pytest.raises(InputError, match="missing"):
        tfl.load_state_dict({"param.W1": np.zeros((256, 128), np.float32)})
    bad = tfl.state_dict()
    bad["param.W1"] = bad["param.W1"][:, :5]
    with pytest.raises(InputError, match="expected float32"):
        tfl.load_state_dict(bad)


def test_constructor_checks_the_file_against_what_the_caller_expects() -> None:
    with pytest.raises(ModelLoadError, match="lr expected 0.1"):
        TFLiteHead(SOFTMAX_SGD, 256, 50, lr=0.1, weight_decay=1e-4)
    with pytest.raises(ModelLoadError, match="optimizer expected 'adam'"):
        TFLiteHead(SOFTMAX_SGD, 256, 50, optimizer="adam", weight_decay=1e-4)
    with pytest.raises(ModelLoadError, match="max_classes expected 10"):
        TFLiteHead(SOFTMAX_SGD, 256, 10, weight_decay=1e-4)
    with pytest.raises(ModelLoadError, match="not found"):
        TFLiteHead(MODEL / "nope.tflite", 256, 50)
    with pytest.raises(NotImplementedError, match="head_backend='numpy'"):
        TFLiteHead(SOFTMAX_SGD, 256, 50, weight_decay=1e-4).step(
            np.ones((2, 256), np.float32), np.array([0, 1]), logit_grad=lambda z: z)


# ---------------------------------------------------------------------------------- agent
def test_agent_finds_the_head_in_the_manifest_and_matches_the_numpy_agent() -> None:
    from edge.runtimes import open_backbone

    frames = np.random.default_rng(0).integers(0, 255, size=(40, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(40) % 4
    preds = {}
    for backend in ("numpy", "tflite"):
        with open_backbone(MODEL, runtime="litert") as backbone:
            agent = Agent(backbone, AgentConfig(head_backend=backend, buffer_capacity=50, strategy="replay"))
            agent.learn_many(frames[:20], labels[:20])
            agent.learn_many(frames[20:], labels[20:])
            preds[backend] = agent.predict_proba_many(frames)
            state = agent.state_dict()
            if backend == "tflite":
                assert type(agent.head).__name__ == "TFLiteHead"
                assert agent.head.path == SOFTMAX_SGD
                restored = Agent(backbone, agent.config)
                restored.load_state_dict(state)
                np.testing.assert_allclose(restored.predict_proba_many(frames), preds[backend], atol=1e-6)
    np.testing.assert_allclose(preds["tflite"], preds["numpy"], rtol=RTOL, atol=ATOL)


def test_agent_config_and_strategy_checks() -> None:
    with pytest.raises(ValueError, match="head_backend"):
        AgentConfig(head_backend="onnx")
    with pytest.raises(ValueError, match="head_file"):
        Agent(None, AgentConfig(head_backend="tflite", strategy="replay"), embedding_size=256)
    with pytest.raises(ValueError, match="tflite head backend supports"):
        Agent(None, AgentConfig(head_backend="tflite", head_file=str(SOFTMAX_SGD), strategy="ewc"),
              embedding_size=256)
    config = AgentConfig(head_backend="tflite", head_file=str(SOFTMAX_SGD), strategy="naive")
    assert AgentConfig.from_dict(config.to_dict()) == config
    agent = Agent(None, config, embedding_size=256)
    agent.learn_embeddings(np.ones((50, 256), np.float32), np.zeros(50, np.int64))
    assert agent.classes_seen().tolist() == [0]
    with pytest.raises(ManifestError, match="no trainable head softmax/sgd, batch >= 64"):
        find_head_file(MODEL, load_manifest(MODEL), AgentConfig(batch_size=64))
    with pytest.raises(ManifestError, match="lr=0.5"):
        find_head_file(MODEL, load_manifest(MODEL), AgentConfig(lr=0.5))
    assert find_head_file(MODEL, load_manifest(MODEL), AgentConfig(batch_size=16)) == SOFTMAX_SGD
    assert find_head_file(MODEL, load_manifest(MODEL),
                          AgentConfig(head="mlp", optimizer="adam")) == MLP_ADAM


# ---------------------------------------------------------------------------------- no TF
NO_TF_SCRIPT = """
import sys
import numpy as np
from edge.agent import Agent, AgentConfig
cfg = AgentConfig(head_backend="tflite", head_file=sys.argv[1], buffer_capacity=40, strategy="replay")
agent = Agent(None, cfg, embedding_size=256)
rng = np.random.default_rng(0)
centers = rng.normal(size=(3, 256)).astype(np.float32) * 3
for c in range(3):
    agent.learn_embeddings(centers[c] + rng.normal(size=(20, 256)).astype(np.float32), np.full(20, c))
acc = agent.evaluate_embeddings(centers, np.arange(3))
assert acc == 1.0, acc
assert type(agent.head).__name__ == "TFLiteHead"
assert "tensorflow" not in sys.modules, sorted(m for m in sys.modules if "tensorflow" in m)
print("ok", agent.head.t_)
"""


def test_tflite_head_trains_in_a_process_without_tensorflow() -> None:
    proc = subprocess.run([sys.executable, "-c", NO_TF_SCRIPT, str(SOFTMAX_SGD)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("ok ")


@pytest.mark.parametrize("path,kind,optimizer", [(SOFTMAX_SGD, "softmax", "sgd"), (MLP_ADAM, "mlp", "adam")],
                         ids=["softmax-sgd", "mlp-adam"])
def test_both_backends_implement_the_head_protocol_alike(path: Path, kind: str, optimizer: str) -> None:
    from edge.base import Head

    kw = dict(optimizer=optimizer, weight_decay=1e-4, seed=4)
    ref = make_head(kind, 256, 50, **kw)
    tfl = TFLiteHead(path, 256, 50, kind=kind, **kw)
    assert isinstance(ref, Head) and isinstance(tfl, Head)
    assert tfl.output_layer == ref.output_layer
    x = np.random.default_rng(0).normal(size=(8, 256)).astype(np.float32)
    y = np.arange(8) % 3
    ref.step(x, y)
    tfl.step(x, y)
    np.testing.assert_allclose(tfl.get_output_weights(), ref.get_output_weights(), rtol=RTOL, atol=ATOL)
    # Writing the output layer (and zeroing its optimizer slots) does the same on both backends.
    vectors = np.random.default_rng(1).normal(size=ref.get_output_weights().shape).astype(np.float32)
    for head in (ref, tfl):
        head.set_output_weights(vectors, reset_optimizer=True)
        np.testing.assert_array_equal(head.get_output_weights(), vectors)
    w, b = ref.output_layer
    assert all(not tfl.state_dict()[k].any() for k in tfl.state_dict() if k.startswith("opt.") and
               k.rsplit(".", 1)[1] in (w, b))
    with pytest.raises(InputError, match="expected shape"):
        tfl.set_output_weights(vectors[:, :-1])
    # reset(seed): the initial weights the NumPy head draws for that seed (cumulative relies on it).
    tfl.reset(11)
    fresh = make_head(kind, 256, 50, **{**kw, "seed": 11})
    for key, value in fresh.state_dict().items():
        np.testing.assert_array_equal(tfl.state_dict()[key], value, err_msg=key)
    assert tfl.seed == 4 and tfl.classes_.tolist() == []
