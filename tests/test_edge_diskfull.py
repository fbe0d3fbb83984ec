"""Full disk: space is reclaimed before writing and learning resumes once space is freed (issue 11.4).

Two kinds of disk: a real small tmpfs (mounted by the test when it runs as root and the kernel
allows it; skipped with the reason otherwise), and an injected ENOSPC from the file-system layer
(a wrapper around `edge.atomic.atomic_write` that fails like a full disk once the folder would hold
more than a quota), which runs everywhere.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import edge.checkpoint as checkpoint_module
from edge.agent import Agent, AgentConfig
from edge.checkpoint import CheckpointStore
from edge.config import validate_agent_config
from edge.errors import CheckpointError

FP = "cd" * 32
DIM = 64
CONFIG = AgentConfig(max_classes=4, buffer_capacity=400, buffer_storage="float32", epochs=1, batch_size=16)


def _agent() -> Agent:
    return Agent(None, CONFIG, embedding_size=DIM)


def _learn(agent: Agent, seed: int) -> None:
    rng = np.random.default_rng(seed)
    agent.learn_embeddings(rng.normal(size=(400, DIM)).astype(np.float32), rng.integers(0, 4, 400))  # fills the buffer


def _store(folder: Path, exclusive: bool = True) -> CheckpointStore:
    return CheckpointStore(folder, FP, validate_config=validate_agent_config, exclusive=exclusive)


def _checkpoint_size(tmp_path: Path) -> int:
    agent = _agent()
    for seed in range(4):
        _learn(agent, seed)
    store = _store(tmp_path / "probe")
    return store.save(agent.state_dict(), agent.config.to_dict(), agent.step_).stat().st_size


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


class _Quota:
    """atomic_write that fails with ENOSPC (after writing what fits) when the folder is over quota."""

    def __init__(self, folder: Path, quota: int) -> None:
        self.folder, self.quota, self.failures = folder, quota, 0
        self.good_at_failure: list[int] = []
        self._real = checkpoint_module.atomic_write

    def __call__(self, path, write, **kwargs):
        buffer = io.BytesIO()
        write(buffer)
        if _folder_bytes(self.folder) + buffer.tell() > self.quota:
            self.failures += 1
            ckpt = _store(self.folder, exclusive=False).latest()  # the invariant, checked at the worst moment
            self.good_at_failure.append(-1 if ckpt is None else ckpt.step)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return self._real(path, write, **kwargs)


def test_stale_temps_and_a_third_checkpoint_are_reclaimed_before_writing(tmp_path: Path, monkeypatch) -> None:
    size = _checkpoint_size(tmp_path)
    folder = tmp_path / "state"
    agent = _agent()
    killed_before_pruning = CheckpointStore(folder, FP, keep=3)  # leaves three checkpoints
    for seed in range(3):
        _learn(agent, seed)
        killed_before_pruning.save(agent.state_dict(), agent.config.to_dict(), agent.step_)
    assert len(killed_before_pruning.paths()) == 3
    store = _store(folder, exclusive=False)  # no lock held: only old or future-dated temps are stale
    old_tmp = folder / ".state-crashed1.tmp"
    old_tmp.write_bytes(b"\0" * size)
    os.utime(old_tmp, (time.time() - 3600, time.time() - 3600))
    future_tmp = folder / ".state-crashed2.tmp"
    future_tmp.write_bytes(b"\0" * size)
    os.utime(future_tmp, (time.time() + 86400, time.time() + 86400))  # a clock that jumped back
    quota = _Quota(folder, quota=int(2.9 * size))
    monkeypatch.setattr(checkpoint_module, "atomic_write", quota)
    _learn(agent, 9)
    store.save(agent.state_dict(), agent.config.to_dict(), agent.step_)
    assert not old_tmp.exists() and not future_tmp.exists()
    assert len(store.paths()) == 2 and store.latest().step == agent.step_


def test_a_full_disk_keeps_one_good_checkpoint_and_learning_resumes(tmp_path: Path, monkeypatch) -> None:
    size = _checkpoint_size(tmp_path)
    folder = tmp_path / "state"
    agent = _agent()
    store = _store(folder)
    for seed in range(2):
        _learn(agent, seed)
        store.save(agent.state_dict(), agent.config.to_dict(), agent.step_)
    # Room for two checkpoints only: the third write fails, the older one goes, the retry fits.
    quota = _Quota(folder, quota=int(2.5 * size))
    monkeypatch.setattr(checkpoint_module, "atomic_write", quota)
    _learn(agent, 2)
    store.save(agent.state_dict(), agent.config.to_dict(), agent.step_)
    assert quota.failures == 1 and quota.good_at_failure == [2]
    assert store.latest().step == 3
    # Disk full even for one more: a clear error, the good checkpoint stays.
    quota.quota = int(1.5 * size)
    _learn(agent, 3)
    with pytest.raises(CheckpointError, match="free space.*No space left"):
        store.save(agent.state_dict(), agent.config.to_dict(), agent.step_)
    assert min(quota.good_at_failure) >= 2 and store.latest().step == 3
    # Space freed: learning resumes from the last good checkpoint.
    quota.quota = 10 * size
    resumed = _agent()
    resumed.load_state_dict(store.latest().state)
    _learn(resumed, 4)
    store.save(resumed.state_dict(), resumed.config.to_dict(), resumed.step_)
    assert store.latest().step == 4


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    mount = shutil.which("mount")
    if os.geteuid() != 0 or mount is None:
        pytest.skip("mounting a tmpfs needs root and mount(8); the injected-ENOSPC tests cover the logic")
    point = tmp_path / "tmpfs"
    point.mkdir()
    size_kib = max(64, 3 * _checkpoint_size(tmp_path) // 1024)  # room for ~2.5 checkpoints + metadata
    done = subprocess.run([mount, "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", str(point)], capture_output=True)


def test_real_small_tmpfs_fills_and_learning_resumes(small_tmpfs: Path, tmp_path: Path) -> None:
    folder = small_tmpfs / "state"
    agent = _agent()
    store = _store(folder)
    steps_saved = []
    for seed in range(6):  # more checkpoints than the disk can hold at once
        _learn(agent, seed)
        store.save(agent.state_dict(), agent.config.to_dict(), agent.step_)
        steps_saved.append(store.latest().step)
    assert steps_saved == [1, 2, 3, 4, 5, 6]
    filler = small_tmpfs / "filler.bin"  # another program fills the disk, again and again
    for seed in range(7, 10):
        _fill(filler)
        _learn(agent, seed)
        store.save(agent.state_dict(), agent.config.to_dict(), agent.step_)  # the older one makes room
        assert store.latest().step == agent.step_
    # Only the newest good checkpoint left and no room at all: a clear error, nothing lost.
    for path in store.paths()[1:]:
        path.unlink()
    _fill(filler)
    _learn(agent, 10)
    with pytest.raises(CheckpointError, match="No space left"):
        store.save(agent.state_dict(), agent.config.to_dict(), agent.step_)
    assert store.latest().step == agent.step_ - 1 and not list(folder.glob(".state-*.tmp"))
    filler.unlink()  # space freed: learning resumes
    store.save(agent.state_dict(), agent.config.to_dict(), agent.step_)
    assert store.latest().step == agent.step_


def _fill(filler: Path) -> None:
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


class _FullFor:
    """atomic_write that fails with ENOSPC for checkpoint files (``state-*``) while ``full``, and records
    whether the newest good checkpoint loaded (its ledger segments present and verified) at each failure."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.full, self.good_at_failure = folder, True, []
        self._real = checkpoint_module.atomic_write

    def __call__(self, path, write, **kwargs):
        if self.full and Path(path).name.startswith("state-"):
            ckpt = _store(self.folder, exclusive=False).latest()
            self.good_at_failure.append(-1 if ckpt is None else ckpt.step)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return self._real(path, write, **kwargs)


def test_a_full_disk_with_the_teach_ledger_keeps_a_good_checkpoint_and_its_segments(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    folder = tmp_path / "state"
    agent = _agent()
    agent.enable_ledger()
    store = _store(folder)

    def teach(seed: int) -> None:
        rng = np.random.default_rng(seed)
        agent.teach_embeddings(rng.normal(size=(100, DIM)).astype(np.float32), rng.integers(0, 4, 100),
                               thumbnails=[rng.bytes(300) for _ in range(100)])

    for seed in range(3):
        teach(seed)
        store.save(agent.state_dict(), agent.config.to_dict(), agent.step_)
    agent.undo_last()                      # the newest segment is now named only by older checkpoints
    teach(3)
    full = _FullFor(folder)
    monkeypatch.setattr(checkpoint_module, "atomic_write", full)
    with pytest.raises(CheckpointError, match="No space left"):
        store.save(agent.state_dict(), agent.config.to_dict(), agent.step_)
    # The retry ran after removing every checkpoint but the newest good one (and segments only they
    # named): that one still loads, with its segments, at every failure and after.
    assert full.good_at_failure == [3, 3]
    assert [p.name for p in store.paths()] == ["state-000000000003.npz"]
    good = store.latest()
    assert good.step == 3 and len(good.state["knowledge.sample_id"]) == 300
    named = {ref["name"] for ref in good.header["segments"]}
    on_disk = {p.name for p in (folder / "ledger").glob("seg-*.bin")}
    assert named <= on_disk
    # Space freed: the save goes through and nothing is left that no checkpoint names.
    full.full = False
    store.save(agent.state_dict(), agent.config.to_dict(), agent.step_)
    loaded = store.latest()
    assert loaded.step == agent.step_ and np.array_equal(loaded.state["knowledge.rows"], agent.knowledge.rows)
    named = {ref["name"] for p in store.paths() for ref in store.load(p).header["segments"]}
    assert {p.name for p in (folder / "ledger").glob("seg-*.bin")} == named
