"""One writer per state folder: `edge.lock.StateLock` and ``edge-agent learn`` under concurrency."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from _edge_common import ROOT, frames_for, need_model
from edge.lock import StateLock, StateLockedError

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork and fcntl (POSIX)")
PAIRS = 20


def test_second_holder_waits_then_fails_with_a_clear_message(tmp_path: Path) -> None:
    folder = tmp_path / "new" / "state"  # created on first use
    with StateLock(folder, timeout_s=1.0) as first:
        assert first.held and folder.is_dir()
        start = time.monotonic()
        with pytest.raises(StateLockedError, match=rf"locked by another writer \(pid {os.getpid()}\).*0.2 s"):
            StateLock(folder, timeout_s=0.2).acquire()
        assert time.monotonic() - start >= 0.2
    with StateLock(folder, timeout_s=0.0):  # released on exit
        pass
    with pytest.raises(ValueError, match="finite number of seconds"):
        StateLock(folder, timeout_s=float("nan"))


def test_lock_is_released_when_the_holder_is_killed(tmp_path: Path) -> None:
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: take the lock, say so, then hang until killed
        try:
            StateLock(tmp_path, timeout_s=1.0).acquire()
            os.write(wfd, b"held")
            time.sleep(60)
        finally:
            os._exit(0)
    os.close(wfd)
    assert os.read(rfd, 4) == b"held"
    with pytest.raises(StateLockedError):
        StateLock(tmp_path, timeout_s=0.1).acquire()
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    with StateLock(tmp_path, timeout_s=2.0) as lock:
        assert lock.held


@pytest.fixture
def png(tmp_path: Path) -> str:
    from PIL import Image

    path = tmp_path / "img.png"
    Image.fromarray(frames_for(np.array([1]), (32, 32, 3))[0]).save(path)
    return str(path)


def _learn_in_child(args: list[str]) -> int:
    """Fork a child that runs ``edge-agent`` in-process (imports shared: fast) and returns its pid."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            from edge.cli import main

            code = main(args)
        finally:
            os._exit(code)
    return pid


@pytest.mark.slow
def test_twenty_pairs_of_simultaneous_learns_lose_no_update(tmp_path: Path, png: str) -> None:
    import edge.cli  # noqa: F401 - import once in the parent, children inherit it

    model, state = str(need_model()), str(tmp_path / "state")
    common = ["learn", "--model", model, "--state", state, "--buffer-capacity", "50", "--lock-timeout", "60"]
    codes = []
    for pair in range(PAIRS):
        pids = [_learn_in_child([*common, "--label", str(pair % 3), png]) for _ in range(2)]
        codes += [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    assert codes == [0] * (2 * PAIRS)
    out = subprocess.run([sys.executable, "-m", "edge.cli", "status", "--model", model, "--state", state,
                          "--json"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["step"] == 2 * PAIRS, status  # every learn resumed from the one before it
    assert status["buffer_fill"] == 2 * PAIRS


def test_cli_fails_with_one_line_when_the_lock_stays_held(tmp_path: Path, png: str) -> None:
    state = tmp_path / "state"
    with StateLock(state):
        out = subprocess.run([sys.executable, "-m", "edge.cli", "learn", "--model", str(need_model()),
                              "--state", str(state), "--label", "0", "--lock-timeout", "0.3", png],
                             capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "locked by another writer" in out.stderr, out.stderr
    assert not any(p.name.startswith("state-") for p in state.iterdir())
