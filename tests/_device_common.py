"""Helpers of the device-runtime tests: a real `edge-agent run` child process and its HTTP API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OBJ_A, OBJ_B = 1, 11  # two generated CORe50 objects of different categories


def write_video(path: Path, segments: list[tuple[int, int, int]], fps: int = 20, size: int = 64) -> None:
    """A real video file (OpenCV VideoWriter, MJPG in AVI) of ``(object_id, n_frames, session)``
    segments of generated CORe50-style objects."""
    import cv2

    from firmware_sim.data.generator import render_object_session

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (size, size))
    assert writer.isOpened(), "OpenCV could not open a VideoWriter for MJPG/AVI"
    try:
        for obj, n, session in segments:
            for frame in render_object_session(obj, session, n_frames=n, image_size=size):
                writer.write(np.ascontiguousarray(frame[:, :, ::-1]))  # RGB -> BGR
    finally:
        writer.release()


def write_png(path: Path, image: np.ndarray) -> None:
    """Write a PNG atomically (temp name starting with '.', then rename), as a camera app would."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp"
    Image.fromarray(image).save(tmp, format="PNG")
    os.replace(tmp, path)


def object_frames(obj: int, n: int, session: int = 1, size: int = 64) -> np.ndarray:
    from firmware_sim.data.generator import render_object_session

    return render_object_session(obj, session, n_frames=n, image_size=size)


class RunningAgent:
    """``edge-agent run`` in a child process; its JSON-line events are collected as they come."""

    def __init__(self, state: Path, source: str, *extra: str, token: str | None = None) -> None:
        # The tiny backbone (fast); the default ImageNet one is exercised by test_packaging / test_real_photos.
        cmd = [sys.executable, "-m", "edge.cli", "run", "--model", str(ROOT / "models" / "tiny"), "--state",
               str(state), "--source", source, "--http", "127.0.0.1:0", *extra]
        env = dict(os.environ)
        env.pop("EDGE_AGENT_TOKEN", None)
        if token is not None:
            env["EDGE_AGENT_TOKEN"] = token
        self.token = token
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)
        self.events: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port: int | None = None

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.raw.append(line)
                self.events.append(json.loads(line))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 60.0,
                 count: int = 1) -> list[dict[str, Any]]:
        """Wait until ``count`` events satisfy ``pred``; returns them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [e for e in self.events if pred(e)]
                if len(found) >= count:
                    return found
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise AssertionError(f"agent exited ({self.proc.returncode}) before the event; "
                                         f"stderr: {self.stderr()}; events: {self.events[-5:]}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for an event; last events: {self.events[-5:]}")
                self._cond.wait(min(left, 0.2))

    def started(self, timeout: float = 60.0) -> dict[str, Any]:
        event = self.wait_for(lambda e: e["event"] == "started", timeout)[0]
        self.port = int(event["http"].rsplit(":", 1)[1])
        return event

    def http(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
             token: str | None | bool = True, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """One request; returns (status, parsed JSON or text)."""
        assert self.port is not None
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        use = self.token if token is True else (token or None)
        if use:
            hdrs["Authorization"] = f"Bearer {use}"
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, headers=hdrs, method=method)
        try:
            with urllib.request.urlopen(req, timeout=20) as resp:
                status, text = resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read().decode()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def finish(self, timeout: float = 60.0) -> int:
        """Wait for the process to exit; returns its status."""
        code = self.proc.wait(timeout)
        self._reader.join(10)
        return code

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return "(running)"
        assert self.proc.stderr is not None
        return self.proc.stderr.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def checkpoint_files(state: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(state.glob("state-*.npz"))}
