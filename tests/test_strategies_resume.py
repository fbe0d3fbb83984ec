"""Every strategy survives save -> kill -> restore in the middle of a stream, bit for bit.

In-process for every strategy (the agent object is dropped and rebuilt from the newest checkpoint
in a `CheckpointStore`), and with a real SIGKILL of a forked child for two strategies with very
different state (SLDA's statistics, EWC's Fisher and anchor).
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from edge.agent import Agent, AgentConfig
from edge.checkpoint import CheckpointStore
from edge.strategies import STRATEGIES

FINGERPRINT = "5e" * 32
DIM, K, N_BATCHES = 12, 6, 10


def config(name: str, head: str = "softmax") -> AgentConfig:
    return AgentConfig(strategy=name, head=head, hidden=16, max_classes=K, buffer_capacity=24,
                       buffer_storage="int8", epochs=2, batch_size=8, seed=11,
                       strategy_params={"dims": 128} if name == "ridge" else {})   # a fast projection


def batch(step: int) -> tuple[np.ndarray, np.ndarray]:
    """Batch ``step`` of a fixed class-incremental-ish stream (a pure function of the step)."""
    centers = np.random.default_rng(99).normal(0, 3, size=(K, DIM))
    rng = np.random.default_rng(step)
    y = rng.choice([step % K, (step + 1) % K], size=15)
    return (centers[y] + rng.normal(size=(15, DIM))).astype(np.float32), y.astype(np.int64)


def probe() -> np.ndarray:
    return np.random.default_rng(7).normal(0, 3, size=(40, DIM)).astype(np.float32)


def uninterrupted(cfg: AgentConfig, steps: int = N_BATCHES) -> Agent:
    agent = Agent(None, cfg, embedding_size=DIM)
    for step in range(steps):
        agent.learn_embeddings(*batch(step))
    return agent


def assert_same(a: Agent, b: Agent) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert np.array_equal(sa[key], sb[key]), key
    assert np.array_equal(a.predict_proba_embeddings(probe()), b.predict_proba_embeddings(probe()))


CASES = [(name, "mlp" if name == "ar1_head" else "softmax") for name in sorted(STRATEGIES)]
CASES += [("cwr_star", "mlp"), ("ewc", "mlp"), ("lwf", "mlp")]


@pytest.mark.parametrize("name,head", CASES, ids=[f"{n}-{h}" for n, h in CASES])
def test_save_kill_restore_mid_stream_equals_an_uninterrupted_run(tmp_path, name, head):
    cfg = config(name, head)
    reference = uninterrupted(cfg)
    store = CheckpointStore(tmp_path, FINGERPRINT)
    agent = Agent(None, cfg, embedding_size=DIM)
    for step in range(N_BATCHES // 2):
        agent.learn_embeddings(*batch(step))
        store.save(agent.state_dict(), cfg.to_dict(), agent.step_)
    del agent  # "power cut": nothing survives but the files
    ckpt = store.latest()
    resumed = Agent(None, AgentConfig.from_dict(ckpt.config), embedding_size=DIM)
    resumed.load_state_dict(ckpt.state)
    for step in range(resumed.step_, N_BATCHES):
        resumed.learn_embeddings(*batch(step))
    assert_same(reference, resumed)


def _child(directory: str, cfg: AgentConfig, wfd: int) -> None:
    store = CheckpointStore(directory, FINGERPRINT)
    agent = Agent(None, cfg, embedding_size=DIM)
    ckpt = store.latest()
    if ckpt is not None:
        agent.load_state_dict(ckpt.state)
    for step in range(agent.step_, N_BATCHES):
        agent.learn_embeddings(*batch(step))
        store.save(agent.state_dict(), cfg.to_dict(), agent.step_)
        os.write(wfd, f"{agent.step_}\n".encode())
        time.sleep(0.005)  # leave the parent time to kill us mid-stream
    time.sleep(60)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")
@pytest.mark.parametrize("name", ["slda", "ewc"])
def test_sigkill_mid_stream_then_resume_equals_an_uninterrupted_run(tmp_path, name):
    cfg = config(name)
    reference = uninterrupted(cfg)
    rng = np.random.default_rng(3)
    killed_at: list[int] = []
    for _ in range(3):  # kill three children at random points, each resuming the previous one
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(rfd)
            try:
                _child(str(tmp_path), cfg, wfd)
            finally:
                os._exit(1)
        os.close(wfd)
        os.read(rfd, 64)  # the child saved at least once (or ended: empty read) ...
        time.sleep(float(rng.uniform(0.0, 0.01)))  # ... then dies at a random point after it
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(rfd)
        newest = CheckpointStore(tmp_path, FINGERPRINT).latest()
        killed_at.append(0 if newest is None else newest.step)
    assert any(0 < s < N_BATCHES for s in killed_at), killed_at  # really killed mid-stream
    ckpt = CheckpointStore(tmp_path, FINGERPRINT).latest()
    resumed = Agent(None, cfg, embedding_size=DIM)
    if ckpt is not None:
        resumed.load_state_dict(ckpt.state)
    for step in range(resumed.step_, N_BATCHES):
        resumed.learn_embeddings(*batch(step))
    assert_same(reference, resumed)
