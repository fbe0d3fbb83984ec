"""Bad input, corrupt files and broken state dirs: a clear error, and the saved state unchanged."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from _edge_common import backbone, frames_for
from edge.agent import Agent, AgentConfig
from edge.checkpoint import HEADER_KEY, CheckpointStore, header_sha256
from edge.errors import CheckpointError, IncompatibleCheckpointError, InputError

FP = "ab" * 32


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file's bytes under a directory."""
    return {p.name: p.read_bytes() for p in sorted(Path(directory).iterdir()) if p.is_file()}


@pytest.fixture
def saved(tmp_path):
    """An agent on the real fp32 backbone with one learned batch, checkpointed twice."""
    bb = backbone("litert-fp32")
    agent = Agent(bb, AgentConfig(max_classes=5, buffer_capacity=32))
    labels = np.array([0, 1, 2, 0, 1, 2])
    frames = frames_for(labels, bb.manifest.input_shape)
    agent.learn_many(frames, labels)
    store = CheckpointStore(tmp_path / "state", bb.manifest.fingerprint)
    store.save(agent.state_dict(), agent.config.to_dict(), agent.step_)
    agent.learn_many(frames, labels)
    store.save(agent.state_dict(), agent.config.to_dict(), agent.step_)
    return agent, store, frames, labels


def _state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("make_bad, pattern", [
    (lambda f, y: (f[:, :, :, :2], y), "expected 1 \\(gray\\) or 3 \\(RGB\\) channels.*got 2"),
    (lambda f, y: (f[0, :, :, 0], y), "got ndim 2"),
    (lambda f, y: (f.astype(np.int32), y), "expected dtype uint8.*got int32"),
    (lambda f, y: (np.where(np.arange(f.size).reshape(f.shape) == 7, np.nan, f.astype(np.float32)), y),
     "NaN or inf"),
    (lambda f, y: (np.full(f.shape, np.inf, np.float32), y), "NaN or inf"),
    (lambda f, y: (f.astype(np.float32) + 300, y), "\\[0, 255\\], got range"),
    (lambda f, y: (f[:0], y[:0]), "empty batch"),
    (lambda f, y: (f, y + 10), "expected values in \\[0, 4\\].*got 10"),
    (lambda f, y: (f, y - 1), "got -1"),
    (lambda f, y: (f, y[:-1]), "expected 6 labels.*got 5"),
    (lambda f, y: (f, y.astype(np.float32) + 0.5), "expected integers"),
])
def test_bad_learn_input_raises_and_leaves_state_unchanged(saved, make_bad, pattern):
    agent, store, frames, labels = saved
    before_mem, before_disk = agent.state_dict(), snapshot(store.directory)
    bad_frames, bad_labels = make_bad(frames, labels)
    with pytest.raises(InputError, match=pattern):
        agent.learn_many(bad_frames, bad_labels)
    assert _state_equal(before_mem, agent.state_dict())
    assert snapshot(store.directory) == before_disk


def test_bad_embeddings_raise_and_leave_state_unchanged(saved):
    agent, _, _, labels = saved
    before = agent.state_dict()
    emb = np.zeros((6, agent.embedding_size), np.float32)
    emb[2, 3] = np.inf
    with pytest.raises(InputError, match="NaN or inf"):
        agent.learn_embeddings(emb, labels)
    with pytest.raises(InputError, match="empty batch"):
        agent.learn_embeddings(emb[:0], labels[:0])
    with pytest.raises(InputError, match="no backbone"):
        Agent(None, AgentConfig(), embedding_size=4).learn_many(np.zeros((1, 8, 8, 3), np.uint8), [0])
    assert _state_equal(before, agent.state_dict())


def test_truncated_newest_checkpoint_falls_back_to_previous(saved, caplog):
    agent, store, _, _ = saved
    newest, previous = store.paths()
    good_prev = previous.read_bytes()
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        store.load(newest)
    ckpt = store.latest()
    assert ckpt.path == previous and ckpt.step == 1 and "skipping" in caplog.text
    assert previous.read_bytes() == good_prev
    fresh = Agent(agent.backbone, agent.config)
    fresh.load_state_dict(ckpt.state)
    assert fresh.step_ == 1


def test_hash_mismatch_is_detected_expected_vs_got(saved):
    _, store, _, _ = saved
    newest = store.paths()[0]
    with np.load(newest, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["head.param.W"] = arrays["head.param.W"] + 1.0  # a tampered but well-formed file
    with open(newest, "wb") as handle:
        np.savez(handle, **arrays)
    with pytest.raises(CheckpointError, match=r"payload sha256 expected [0-9a-f]{64}, got [0-9a-f]{64}"):
        store.load(newest)
    assert store.latest().step == 1


def test_foreign_backbone_and_unknown_schema_are_refused(saved):
    agent, store, _, _ = saved
    before = snapshot(store.directory)
    foreign = CheckpointStore(store.directory, "cd" * 32)
    with pytest.raises(IncompatibleCheckpointError, match=f"fingerprint expected {'cd' * 32}, got"):
        foreign.latest()
    assert snapshot(store.directory) == before
    newest = store.paths()[0]
    with np.load(newest, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    header = json.loads(arrays[HEADER_KEY].tobytes())
    header["schema_version"] = 7
    header["header_sha256"] = header_sha256(header)  # a well-formed checkpoint of a future schema
    arrays[HEADER_KEY] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    with open(newest, "wb") as handle:
        np.savez(handle, **arrays)
    with pytest.raises(IncompatibleCheckpointError, match=r"schema_version expected one of \[1, 2\], got 7"):
        store.latest()
    assert store.load(store.paths()[1]).step == 1  # the previous state stays usable


def test_pickled_payload_is_never_loaded(tmp_path):
    store = CheckpointStore(tmp_path, FP)
    path = tmp_path / "state-000000000005.npz"
    np.savez(path, **{HEADER_KEY: np.frombuffer(b"{}", np.uint8), "x": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(CheckpointError, match="unreadable|expected"):
        store.load(path)
    with pytest.raises(CheckpointError, match="dtype object"):
        store.save({"x": np.array([{"a": 1}], dtype=object)}, {}, 1)


def test_all_checkpoints_corrupt_is_an_error_not_a_first_boot(tmp_path):
    store = CheckpointStore(tmp_path, FP)
    store.save({"a": np.ones(3)}, {}, 1)
    store.save({"a": np.ones(3)}, {}, 2)
    for p in store.paths():
        p.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no valid checkpoint"):
        store.latest()


def test_unwritable_state_dir_is_a_clear_error_and_nothing_changes(saved, tmp_path):
    agent, store, _, _ = saved
    before = snapshot(store.directory)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a directory should be")
    bad = CheckpointStore(blocker / "state", store.fingerprint)
    with pytest.raises(CheckpointError, match="expected a writable directory"):
        bad.save(agent.state_dict(), agent.config.to_dict(), 5)
    assert blocker.read_text() == "a file where a directory should be"
    if os.geteuid() != 0:  # root ignores permission bits; the file-as-parent case covers it
        os.chmod(store.directory, 0o500)
        try:
            with pytest.raises(CheckpointError, match="expected a writable directory"):
                store.save(agent.state_dict(), agent.config.to_dict(), 9)
        finally:
            os.chmod(store.directory, 0o700)
    assert snapshot(store.directory) == before
    assert store.latest().step == 2


def test_load_state_dict_rejects_a_mismatched_state_atomically(saved):
    agent, _, frames, _ = saved
    before = agent.state_dict()
    other = Agent(None, AgentConfig(max_classes=5, buffer_capacity=32), embedding_size=8)
    with pytest.raises(InputError, match="expected"):
        agent.load_state_dict(other.state_dict())
    broken = dict(before)
    broken["buffer.labels"] = broken["buffer.labels"] + 100
    with pytest.raises(InputError, match="labels"):
        agent.load_state_dict(broken)
    assert _state_equal(before, agent.state_dict())
    assert agent.predict_many(frames).shape == (len(frames),)
