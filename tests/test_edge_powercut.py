"""Power cut: a child learning + checkpointing in a tight loop is SIGKILLed at random points.

After every kill the newest checkpoint on disk must load and verify (never torn) and its step must
be the last one the child acknowledged (a save returned) or the one after it (the save finished
its rename but the child died before acknowledging). The next child resumes from it, as a device
does after a power cut. With the teach ledger on, every save also writes a ledger segment file
before the checkpoint that names it (edge/knowledge/segments.py): the newest checkpoint must still
load, its segments present and verified.
"""

from __future__ import annotations

import os
import select
import signal
import time

import numpy as np
import pytest

from edge.agent import Agent, AgentConfig
from edge.checkpoint import CheckpointStore

FINGERPRINT = "f0" * 32
DIM = 32
CONFIG = AgentConfig(max_classes=10, buffer_capacity=256, buffer_storage="float32", epochs=1,
                     batch_size=16, seed=0)

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")


def _child(directory: str, wfd: int, ledger: bool) -> None:
    """Resume from the newest checkpoint, then learn (teach, with ``ledger``) and save forever,
    acknowledging each save."""
    store = CheckpointStore(directory, FINGERPRINT)
    agent = Agent(None, CONFIG, embedding_size=DIM)
    ckpt = store.latest()
    if ckpt is not None:
        agent.load_state_dict(ckpt.state)
    if ledger:
        agent.enable_ledger()
    rng = np.random.default_rng(agent.step_)
    while True:
        x = rng.normal(size=(24, DIM)).astype(np.float32)
        y = rng.integers(0, CONFIG.max_classes, size=24)
        if ledger:
            agent.teach_embeddings(x, y, thumbnails=[rng.bytes(200) for _ in range(24)])
        else:
            agent.learn_embeddings(x, y)
        store.save(agent.state_dict(), CONFIG.to_dict(), agent.step_)
        os.write(wfd, f"{agent.step_}\n".encode())


def _run_kills(directory, kills: int, seed: int, ledger: bool = False) -> list[int]:
    rng = np.random.default_rng(seed)
    store = CheckpointStore(directory, FINGERPRINT)
    previous = 0
    steps = []
    for i in range(kills):
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            os.close(rfd)
            try:
                _child(str(directory), wfd, ledger)
            finally:
                os._exit(1)
        os.close(wfd)
        head = b""
        if i % 2:  # every other child is killed only after its first save: progress on a loaded machine
            ready, _, _ = select.select([rfd], [], [], 10.0)
            head = os.read(rfd, 64) if ready else b""
        time.sleep(float(rng.uniform(0.0, 0.04)))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        with os.fdopen(rfd, "rb") as pipe:
            acks = [int(v) for v in (head + pipe.read()).split()]
        last_ack = acks[-1] if acks else previous
        newest = store.paths()
        if not newest:
            assert last_ack == 0
            continue
        store.load(newest[0])  # never torn: the newest file itself verifies
        ckpt = store.latest()
        assert last_ack <= ckpt.step <= last_ack + 1, (acks[-3:], ckpt.step)
        assert ckpt.step >= previous
        agent = Agent(None, CONFIG, embedding_size=DIM)
        agent.load_state_dict(ckpt.state)  # a usable state, not just a readable file
        assert agent.step_ == ckpt.step
        if ledger and ckpt.step:
            assert agent.knowledge is not None and len(agent.knowledge) == 24 * ckpt.step
        previous = ckpt.step
        steps.append(ckpt.step)
    return steps


def test_sigkill_during_learn_and_checkpoint_never_tears_state(tmp_path):
    steps = _run_kills(tmp_path, kills=50, seed=0)
    # The loop really made progress between kills (loose bounds: CI machines may be loaded).
    assert len(steps) >= 40 and steps[-1] >= 10
    # Pruning runs after each save: a kill between the rename and the prune may leave one extra file.
    assert len(CheckpointStore(tmp_path, FINGERPRINT).paths()) <= CheckpointStore(tmp_path, FINGERPRINT).keep + 1


def test_sigkill_while_the_ledger_writes_segments_never_tears_state(tmp_path):
    steps = _run_kills(tmp_path, kills=50, seed=2, ledger=True)
    assert len(steps) >= 40 and steps[-1] >= 10
    store = CheckpointStore(tmp_path, FINGERPRINT)
    named = {ref["name"] for path in store.paths() for ref in store.load(path).header["segments"]}
    assert named <= {p.name for p in (tmp_path / "ledger").glob("seg-*.bin")}


# 200 kills each (500 before: 106 and 197 s under `make test`'s two workers, the ledger's growing with
# the square of the kills, as every check reloads every segment; all passed). Cut for CI time.
@pytest.mark.slow
def test_sigkill_many_times(tmp_path):
    steps = _run_kills(tmp_path, kills=200, seed=1)
    assert len(steps) >= 160 and steps[-1] >= 40


@pytest.mark.slow
def test_sigkill_many_times_with_the_ledger(tmp_path):
    steps = _run_kills(tmp_path, kills=200, seed=3, ledger=True)
    assert len(steps) >= 160 and steps[-1] >= 40
