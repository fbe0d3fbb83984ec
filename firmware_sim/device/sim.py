"""The parent of ``edge-sim device``: camera, teacher, frame clock, budgets and power cuts.

The parent owns the stream and time; the child (`firmware_sim.device.child`) is the device and runs
`edge.device.loop.DeviceLoop`. Under the simulated clock (default) frame ``k`` of the camera exists
at ``k / fps`` seconds; the device takes the newest frame that exists when it is free (older ones
are dropped, as a camera's latest-frame reader drops them), and is busy for the frame's *measured*
processing time. A frame whose processing exceeds the deadline (``frame_deadline_ms``, default the
frame period) is a deadline miss. Learning is modelled on its own core: the next frame is sent once
the learner is idle (so runs are reproducible), and learning time is reported, not charged to the
frame clock. With ``realtime`` the frames are sent at wall-clock pace and the loop's own grabber
drops what it cannot take.

A power cut SIGKILLs the child either between two frames or while it writes a checkpoint (the child
stops in the write and the parent kills it); the device stays off for ``outage_s`` seconds of stream
time (those frames are never seen), then a new child restores its state and the stream continues.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from firmware_sim.device.budgets import PRESETS, ram_limit
from firmware_sim.device.protocol import Channel
from firmware_sim.device.teacher import TeachPlan

log = logging.getLogger(__name__)

__all__ = ["DeviceOptions", "DeviceRun", "StreamFrames", "cut_plan", "simulate"]

#: The child's RSS is sampled every this many frames.
RSS_EVERY = 20


@dataclass(frozen=True)
class DeviceOptions:
    """The device, its clock, teacher, budgets and power cuts (defaults = ``edge-sim device``'s flags)."""

    fps: float = 20.0
    realtime: bool = False
    frame_deadline_ms: float | None = None
    label_share: float = 1.0
    label_delay_s: float = 0.0
    burst: int = 10
    device: str = "host"
    threads: int | None = None
    ram_budget_mb: float | None = None
    flash_budget_mb: float | None = None
    power_cuts: int = 0
    outage_s: float = 1.0
    seed: int = 0
    window: int = 1
    unknown_threshold: float = 0.0
    resize: str = "squash"
    eval_every: int = 1

    def __post_init__(self) -> None:
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"--fps: expected a positive number, got {self.fps}")
        if self.device not in PRESETS:
            raise ValueError(f"--device: expected one of {', '.join(PRESETS)}, got {self.device!r}")
        if self.power_cuts < 0:
            raise ValueError(f"--power-cuts: expected >= 0, got {self.power_cuts}")
        if self.outage_s < 0:
            raise ValueError(f"--outage: expected >= 0 seconds, got {self.outage_s}")
        for name in ("ram_budget_mb", "flash_budget_mb", "frame_deadline_ms"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name}: expected a positive number, got {value}")
        if self.eval_every < 1:
            raise ValueError(f"--eval-every: expected >= 1 burst, got {self.eval_every}")

    @property
    def period_s(self) -> float:
        return 1.0 / self.fps

    @property
    def deadline_ms(self) -> float:
        return self.frame_deadline_ms if self.frame_deadline_ms is not None else 1000.0 / self.fps

    def budgets(self) -> dict[str, Any]:
        """The preset with the explicit flags applied."""
        preset = PRESETS[self.device]
        return {"device": preset.name, "source": preset.source,
                "threads": self.threads if self.threads is not None else preset.threads,
                "ram_budget_mb": self.ram_budget_mb if self.ram_budget_mb is not None else preset.ram_mb,
                "flash_budget_mb": self.flash_budget_mb}


@dataclass
class StreamFrames:
    """The camera's frames in order: labels, batch starts, and the batches to read pixels from."""

    labels: np.ndarray
    batch_starts: list[int]
    batches: list[Any]
    _cache: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def image(self, i: int) -> np.ndarray:
        b = int(np.searchsorted(self.batch_starts, i, side="right")) - 1
        if self._cache is None or self._cache[0] != b:
            self._cache = (b, np.ascontiguousarray(self.batches[b].images()))
        return self._cache[1][i - self.batch_starts[b]]


@dataclass
class Cut:
    kind: str  # "frame" or "checkpoint-open" / "checkpoint-rename"
    at: int  # frame index, or the global checkpoint ordinal


def cut_plan(n_cuts: int, n_frames: int, n_bursts: int, seed: int) -> list[Cut]:
    """Seeded power cuts: half between frames (random frame), half during a checkpoint write (random save)."""
    rng = np.random.default_rng([seed, 14])
    n_ckpt = min(n_cuts // 2, max(n_bursts - 1, 0))
    n_frame = min(n_cuts - n_ckpt, max(n_frames - 2, 0))
    frames = sorted(rng.choice(np.arange(1, n_frames - 1), n_frame, replace=False).tolist()) if n_frame else []
    saves = sorted(rng.choice(np.arange(1, n_bursts), n_ckpt, replace=False).tolist()) if n_ckpt else []
    cuts = [Cut("frame", int(f)) for f in frames]
    cuts += [Cut("checkpoint-" + ("open" if j % 2 == 0 else "rename"), int(s)) for j, s in enumerate(saves)]
    return cuts


@dataclass
class DeviceRun:
    """What one simulated deployment recorded (``to_dict`` is its ``report.json`` entry)."""

    n_frames: int
    pred: np.ndarray  # per frame: predicted class, -1 no answer, -2 never processed
    proc_ms: np.ndarray  # per frame: processing time (NaN: not processed)
    start_s: np.ndarray  # per frame: simulated time processing started (NaN: not processed)
    dropped: np.ndarray  # bool per frame: dropped by the camera (latest-frame)
    lost_off: np.ndarray  # bool per frame: arrived while the device was off
    wall_ms: np.ndarray  # per frame: wall-clock processing time as the loop measured it
    evals: list[dict[str, Any]] = field(default_factory=list)
    learned: list[dict[str, Any]] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)
    cuts: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    bytes_written: int = 0
    checkpoints: int = 0
    final: dict[str, Any] | None = None
    failure: dict[str, Any] | None = None
    ram: str = "none"
    boots: list[float] = field(default_factory=list)
    wall_s: float = 0.0


class _Child:
    """One boot of the device: the process, its pipe, and a reader thread feeding a queue."""

    def __init__(self, config_path: Path, env: dict[str, str], limit: Any) -> None:
        self.started = time.perf_counter()
        self.stderr_path = config_path.with_suffix(".stderr")
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "firmware_sim.device.child", str(config_path)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env,
                                         preexec_fn=limit.preexec)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.channel = Channel(self.proc.stdout, self.proc.stdin)
        self.messages: queue.Queue[tuple[dict[str, Any], bytes] | None] = queue.Queue()
        self.rusage: Any = None
        self.status: int | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            while True:
                message = self.channel.recv()
                self.messages.put(message)
                if message is None:
                    return
        except (OSError, ValueError):
            self.messages.put(None)

    def next(self, timeout: float = 600.0) -> dict[str, Any] | None:
        try:
            message = self.messages.get(timeout=timeout)
        except queue.Empty:
            return {"kind": "failed", "reason": "timeout", "message": f"no message for {timeout:.0f} s", "where": "?"}
        return None if message is None else message[0]

    def send(self, header: dict[str, Any], payload: bytes = b"") -> bool:
        try:
            self.channel.send(header, payload)
            return True
        except (BrokenPipeError, OSError):
            return False

    def kill(self) -> None:
        if self.status is None:  # never poll(): it would reap the child before wait4 reads its rusage
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.wait()

    def stderr_tail(self) -> str:
        """The last line the child wrote to stderr (e.g. an import that ran out of address space)."""
        try:
            lines = [ln for ln in self.stderr_path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return lines[-1] if lines else ""

    def wait(self) -> None:
        if self.status is None:
            _, status, rusage = os.wait4(self.proc.pid, 0)
            self.status, self.rusage = status, rusage
            self.proc.returncode = os.waitstatus_to_exitcode(status)
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass

    @property
    def peak_rss(self) -> int | None:
        return None if self.rusage is None else int(self.rusage.ru_maxrss) * 1024


def _child_config(base: dict[str, Any], state_dir: Path, cut: Cut | None, checkpoints_done: int) -> dict[str, Any]:
    config = dict(base, state_dir=str(state_dir))
    if cut is not None and cut.kind.startswith("checkpoint-"):
        ordinal = cut.at - checkpoints_done
        if ordinal >= 1:
            config["cut_save"] = {"at": cut.kind.split("-", 1)[1], "ordinal": ordinal}
    return config


def simulate(frames: StreamFrames, plan: TeachPlan, base_config: dict[str, Any], options: DeviceOptions,
             work: Path, cuts: list[Cut], progress: bool = False, desc: str = "device") -> DeviceRun:
    """Run the stream through child devices (restarted after each cut); returns what happened.

    With ``progress``, the frames reached show on stderr (a bar on a terminal, plain lines in a log).
    """
    import json

    from firmware_sim.loop.progress import Progress

    n = len(frames)
    run = DeviceRun(n, np.full(n, -2, np.int64), np.full(n, np.nan), np.full(n, np.nan), np.zeros(n, bool),
                    np.zeros(n, bool), np.full(n, np.nan))
    budgets = options.budgets()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if budgets["threads"]:
        env["OMP_NUM_THREADS"] = str(budgets["threads"])
    state_dir = Path(tempfile.mkdtemp(prefix="state-", dir=work))
    pending = sorted(cuts, key=lambda c: (c.kind != "frame", c.at))
    frame_cuts = [c.at for c in pending if c.kind == "frame"]
    save_cuts = [c for c in pending if c.kind != "frame"]
    flash_limit = None if budgets["flash_budget_mb"] is None else int(budgets["flash_budget_mb"] * 1024 * 1024)
    period = options.period_s
    started_wall = time.perf_counter()
    k, free = 0, 0.0
    active: list[dict[str, Any]] = []  # learned batches in the device's current state
    taught_delivered: list[int] = []  # burst id of every taught frame the device received
    boot = 0
    child: _Child | None = None
    burst_end = {int(bid): int(np.flatnonzero(plan.bursts == bid).max()) for bid in np.unique(plan.bursts[plan.bursts >= 0])}

    def start_child() -> tuple[_Child, dict[str, Any] | None]:
        nonlocal boot
        boot += 1
        cut = save_cuts[0] if save_cuts else None
        config = _child_config(base_config, state_dir, cut, run.checkpoints)
        path = work / f"child-{boot}.json"
        path.write_text(json.dumps(config))
        limit = ram_limit(budgets["ram_budget_mb"], f"edge-sim-{os.getpid()}-{boot}")
        run.ram = limit.mechanism
        c = _Child(path, env, limit)
        c.limit = limit  # type: ignore[attr-defined]
        msg = c.next()
        return c, msg

    def fail(c: _Child, msg: dict[str, Any] | None, where: str) -> None:
        c.kill()
        c.limit.close()  # type: ignore[attr-defined]
        code = c.proc.returncode
        reason = (msg or {}).get("reason") or f"exit status {code}"
        text = (msg or {}).get("message") or c.stderr_tail()
        ram = budgets["ram_budget_mb"]
        memory = ram is not None and (reason == "MemoryError" or "memory" in text.lower() or "alloc" in text.lower()
                                      or code in (-signal.SIGKILL, -signal.SIGABRT, -signal.SIGSEGV) or msg is None)
        run.failure = {"kind": "ram_budget" if memory else "device", "reason": reason, "message": text[:300],
                       "where": (msg or {}).get("where") or where, "site": (msg or {}).get("site"),
                       "frame": k, "peak_rss_bytes": (msg or {}).get("rss_peak") or c.peak_rss,
                       "ram_budget_mb": ram, "ram_mechanism": run.ram, "exit_status": code}

    def handle(msg: dict[str, Any], now: float) -> None:
        kind = msg["kind"]
        if kind == "learned":
            active.append({"step": msg["step"], "frames": msg["frames"]})
            run.learned.append({"t": now, "step": msg["step"], "frames": msg["frames"], "ms": msg["ms"],
                                "frame": msg["frame"]})
        elif kind == "checkpoint":
            run.checkpoints += 1
            run.bytes_written += int(msg["bytes"])
            if save_cuts and save_cuts[0].at <= run.checkpoints:
                save_cuts.pop(0)  # passed without landing (e.g. the final save came first)
            if flash_limit is not None and msg["disk_bytes"] > flash_limit:
                run.failure = {"kind": "flash_budget", "where": f"checkpoint after frame {k}",
                               "disk_bytes": msg["disk_bytes"], "flash_budget_mb": budgets["flash_budget_mb"]}
        elif kind == "error":
            run.errors.append({"t": now, **{key: msg.get(key) for key in ("where", "message")}})

    def power_cut(c: _Child, kind: str, t_cut: float) -> tuple[_Child | None, int]:
        """Kill, stay off, restart; returns the new child and the next frame the camera shows."""
        kill_wall = time.perf_counter()
        c.kill()
        c.limit.close()  # type: ignore[attr-defined]
        torn = sum(p.stat().st_size for p in state_dir.glob(".state-*"))
        run.bytes_written += torn
        learned_before = len(active)
        first_off = k if kind == "frame" else k + 1  # a checkpoint cut comes after frame k was received
        next_k = min(n, max(first_off, int(math.ceil((t_cut + options.outage_s) * options.fps - 1e-9))))
        lost_idx = np.arange(first_off, next_k)
        run.lost_off[lost_idx] = True
        new, msg = start_child()
        recovery = time.perf_counter() - kill_wall
        if msg is None or msg["kind"] != "ready":
            fail(new, msg, "restore after a power cut")
            return None, next_k
        restored = msg["restored_step"] or 0
        while active and active[-1]["step"] > restored:
            active.pop()
        kept = sum(a["frames"] for a in active)
        lost_taught = max(0, len(taught_delivered) - kept - sum(c_["taught_lost"] for c_ in run.cuts))
        start = len(taught_delivered) - lost_taught
        bursts_lost = sorted(set(taught_delivered[start:]))
        # a burst is lost whole when it had ended by the cut and none of the frames the device received
        # of it survived (a burst the cut interrupts goes on after the restart)
        kept_ids = set(taught_delivered[:start])
        whole = [bid for bid in bursts_lost if bid not in kept_ids and burst_end[bid] < first_off]
        run.cuts.append({"kind": kind, "frame": k, "t": round(t_cut, 6), "recovery_s": recovery,
                         "frames_off": int(lost_idx.size), "taught_lost": lost_taught, "bursts_lost": len(whole), "bursts_touched": len(bursts_lost),
                         "updates_lost": learned_before - len(active), "restored_step": restored,
                         "torn_bytes": torn})
        return new, next_k

    child, msg = start_child()
    run.boots.append(time.perf_counter() - child.started)
    if msg is None or msg["kind"] != "ready":
        fail(child, msg, "boot")
        run.wall_s = time.perf_counter() - started_wall
        return run
    t0_wall = time.perf_counter()
    bar = Progress(n, desc, unit="frame", enabled=progress)
    while k < n and run.failure is None:
        assert child is not None
        bar.update_to(k)
        if options.realtime:
            free = max(free, time.perf_counter() - t0_wall)
        newest = min(n - 1, int(math.floor(free * options.fps + 1e-9)))
        if newest > k:
            run.dropped[k:newest] = True
            k = newest
        if frame_cuts and frame_cuts[0] <= k:
            frame_cuts.pop(0)
            t_cut = max(free, k * period)
            child, k = power_cut(child, "frame", t_cut)
            free = max(free, k * period)
            if child is None:
                break
            continue
        t_k = k * period
        if options.realtime:
            delay = t0_wall + t_k - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        label = int(plan.labels[k])
        header = {"kind": "frame", "i": k, "t": t_k, "shape": list(frames.image(k).shape),
                  "label": None if label < 0 else label}
        if label >= 0:
            taught_delivered.append(int(plan.bursts[k]))
        if not child.send(header, frames.image(k).tobytes()):
            fail(child, child.next(5.0), f"frame {k}")
            break
        start = max(free, t_k, time.perf_counter() - t0_wall if options.realtime else 0.0)
        while True:  # until this frame's ack (simulated) / the next frame's time (realtime)
            msg = child.next()
            if msg is None or msg["kind"] == "failed":
                fail(child, msg, f"frame {k}")
                break
            if msg["kind"] == "cut_point":
                save_cuts.pop(0)
                child, k = power_cut(child, "checkpoint-" + msg["at"], start)
                free = max(free, k * period)
                k -= 1  # the loop's k += 1 below resumes at the first frame after the outage
                break
            handle(msg, start)
            if msg["kind"] == "ack":
                i = int(msg["i"])
                wall_ms = float(msg["ms"])
                # simulated clock: the frame's wall time, less any time the shared host gave the CPU to
                # other processes (wall - CPU of the device); realtime: the wall time
                ms = wall_ms if options.realtime else min(wall_ms, float(msg.get("cpu_ms", wall_ms)))
                run.wall_ms[i] = wall_ms
                run.proc_ms[i], run.start_s[i] = ms, start
                run.pred[i] = -1 if msg["pred"] is None else int(msg["pred"])
                if "test_accuracy" in msg and msg["test_accuracy"] is not None:
                    run.evals.append({"t": i * period, "frame": i, "step": msg["step"],
                                      "accuracy": msg["test_accuracy"]})
                if "rss" in msg:
                    run.rss.append((start, int(msg["rss"])))
                free = start + ms / 1000.0
                break
        if run.failure is not None or child is None:
            break
        k += 1
    if child is not None and run.failure is None:
        child.send({"kind": "end"})
        while True:
            msg = child.next()
            if msg is None or msg["kind"] == "failed":
                fail(child, msg, "end of stream")
                break
            if msg["kind"] == "cut_point":  # a planned cut on the final save: ignore it, finish
                child.kill()
                break
            handle(msg, free)
            if msg["kind"] == "done":
                run.final = msg
                child.wait()
                child.limit.close()  # type: ignore[attr-defined]
                break
    elif child is not None:
        child.kill()
    bar.update_to(k)
    bar.close()
    run.wall_s = time.perf_counter() - started_wall
    return run
