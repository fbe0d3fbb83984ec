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
    learned = next(k for k in arrays if k.startswith(("head.", "strategy.")) and arrays[k].dtype.kind == "f")
    arrays[learned] = arrays[learned] + 1.0  # a tampered but well-formed file
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
    with pytest.raises(IncompatibleCheckpointError, match=r"schema_version expected one of \[1, 2, 3\], got 7"):
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


# ----------------------------------------------------------------- issue 11: crafted checkpoints
def _two_checkpoints(tmp_path, **store_kwargs):
    from edge.config import validate_agent_config

    store = CheckpointStore(tmp_path / "st", FP, validate_config=validate_agent_config, **store_kwargs)
    agent = Agent(None, AgentConfig(max_classes=4, buffer_capacity=8), embedding_size=4)
    rng = np.random.default_rng(0)
    for _ in range(2):
        agent.learn_embeddings(rng.normal(size=(6, 4)).astype(np.float32), rng.integers(0, 4, 6))
        store.save(agent.state_dict(), agent.config.to_dict(), agent.step_)
    return store, store.paths()[0]


def _npy(header: str, data: bytes = b"") -> bytes:
    text = header.encode("latin1")
    text += b" " * (63 - (len(text) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + data


def _zip(path, members, method=None):
    import zipfile

    with zipfile.ZipFile(path, "w", compression=method or zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _patch_zip_field(path, signature: bytes, offset: int, value: int) -> None:
    data = bytearray(path.read_bytes())
    start = 0
    while (i := data.find(signature, start)) >= 0:
        data[i + offset:i + offset + 2] = value.to_bytes(2, "little")
        start = i + 4
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("craft", ["encrypted", "compression", "huge_shape", "inflates", "tokenize",
                                   "object", "directory_member", "empty"])
def test_every_crafted_newest_checkpoint_falls_back_with_a_warning(tmp_path, caplog, craft):
    import zipfile

    store, newest = _two_checkpoints(tmp_path, max_bytes=4 << 20)
    if craft == "encrypted":
        _patch_zip_field(newest, b"PK\x01\x02", 8, 0x1)
        _patch_zip_field(newest, b"PK\x03\x04", 6, 0x1)
    elif craft == "compression":
        _patch_zip_field(newest, b"PK\x01\x02", 10, 99)
        _patch_zip_field(newest, b"PK\x03\x04", 8, 99)
    elif craft == "huge_shape":
        _zip(newest, {"__header__.npy": _npy("{'descr': '|u1', 'fortran_order': False, 'shape': (10, 100000000000), }"),
                      "x.npy": _npy("{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000000,), }")})
    elif craft == "inflates":  # 64 MiB of zeros in a ~64 KiB member, over the 4 MiB budget
        _zip(newest, {"x.npy": _npy("{'descr': '|u1', 'fortran_order': False, 'shape': (67108864,), }",
                                    bytes(64 << 20))}, method=zipfile.ZIP_DEFLATED)
        assert newest.stat().st_size < 1 << 20
    elif craft == "tokenize":
        _zip(newest, {"__header__.npy": _npy("{'descr': '|u1\n, 'shape': (3,), }", b"abc")})
    elif craft == "object":
        _zip(newest, {"__header__.npy": _npy("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }",
                                             b"\x80\x04N.")})
    elif craft == "directory_member":
        _zip(newest, {"sub/": b""})
    elif craft == "empty":
        newest.write_bytes(b"")
    ckpt = store.latest()
    assert ckpt.step == 1 and ckpt.path != newest
    assert "skipping" in caplog.text and "falling back" in caplog.text


def test_stray_high_numbered_copy_does_not_eat_later_updates(tmp_path):
    store, newest = _two_checkpoints(tmp_path)
    stray = store.directory / "state-000000000099.npz"
    stray.write_bytes(store.paths()[1].read_bytes())  # a copy of the step-1 checkpoint
    (store.directory / "state-000000000500.npz").mkdir()  # and a directory: ignored
    assert store.latest().step == 2 and store.latest().path == newest
    agent = Agent(None, AgentConfig.from_dict(store.latest().config), embedding_size=4)
    agent.load_state_dict(store.latest().state)
    agent.learn_embeddings(np.ones((2, 4), np.float32), [0, 1])
    saved = store.save(agent.state_dict(), agent.config.to_dict(), agent.step_)
    assert store.latest().step == 3 and store.latest().path == saved
    assert not stray.exists()  # ranked by its real step (1), it was pruned


@pytest.mark.parametrize(("key", "value", "pattern"), [
    ("max_classes", "50", "config.max_classes: expected int, got str"),
    ("max_classes", 100_000_000, r"config.max_classes: expected an int in \[2, 100000\]"),
    ("buffer_capacity", 10_000_000_000, "config.buffer_capacity: expected an int in"),
    ("lr", float("nan"), "config.lr: expected float"),
    ("lr", 1e300, r"config.lr: expected a finite number in"),
    ("epochs", 10**9, "config.epochs: expected an int in"),
    ("epochs", True, "config.epochs: expected int, got bool"),
    ("strategy_params", {"shrinkage": [1]}, "config.strategy_params: expected an object of finite"),
    ("bogus", 1, "config: expected keys among"),
])
def test_crafted_config_is_refused_and_skipped(tmp_path, key, value, pattern):
    from edge.config import validate_agent_config

    config = AgentConfig(max_classes=4, buffer_capacity=8).to_dict()
    config[key] = value
    with pytest.raises(CheckpointError, match=pattern):
        validate_agent_config(config)


def test_config_is_covered_by_the_header_hash_and_nan_weights_are_refused(tmp_path, caplog):
    store, newest = _two_checkpoints(tmp_path)
    with np.load(newest, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    header = json.loads(arrays[HEADER_KEY].tobytes())
    header["config"]["lr"] = 5.0  # a well-formed file whose config was edited
    arrays[HEADER_KEY] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(newest, **arrays)
    with pytest.raises(CheckpointError, match="header sha256 expected"):
        store.load(newest)
    assert store.latest().step == 1
    weights = next(k for k in arrays if k.startswith(("head.", "strategy.")) and arrays[k].dtype.kind == "f")
    arrays[weights] = arrays[weights].copy()
    arrays[weights].flat[0] = np.nan
    header["config"]["lr"] = 0.01
    from edge.checkpoint import header_sha256, payload_sha256

    state = {k: v for k, v in arrays.items() if k != HEADER_KEY}
    header["payload_sha256"] = payload_sha256(state)
    header["header_sha256"] = header_sha256(header)
    arrays[HEADER_KEY] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(newest, **arrays)
    with pytest.raises(CheckpointError, match="expected finite values, got NaN"):
        store.load(newest)
    assert store.latest().step == 1
    with pytest.raises(CheckpointError, match="expected finite values"):
        store.save(state, header["config"], 3)


def test_status_counts_every_byte_in_the_state_folder(tmp_path):
    store, _ = _two_checkpoints(tmp_path)
    (store.directory / ".state-leftover.tmp").write_bytes(b"x" * 1000)
    (store.directory / "notes.txt").write_bytes(b"y" * 10)
    (store.directory / "sub").mkdir()
    (store.directory / "sub" / "z.bin").write_bytes(b"z" * 7)
    expected = sum(p.stat().st_size for p in store.directory.rglob("*") if p.is_file())
    assert store.disk_bytes() == expected and expected > sum(p.stat().st_size for p in store.paths())
