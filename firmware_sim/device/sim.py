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
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from firmware_sim.device.budgets import PRESETS, RamLimit, ram_limit
from firmware_sim.device.flash import FlashWrites
from firmware_sim.device.protocol import Channel
from firmware_sim.device.teacher import TeachPlan

log = logging.getLogger(__name__)

__all__ = ["Cut", "DeviceError", "DeviceOptions", "DeviceRun", "DeviceSimulation", "Evaluation", "Failure",
           "FinalState", "Learned", "PlannedCut", "StreamFrames", "cut_plan", "simulate"]

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
    thumbnails: bool = True

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


@dataclass(frozen=True)
class PlannedCut:
    """A seeded power cut: between frames (``kind="frame"``, ``at`` the frame index) or during a checkpoint
    write (``"checkpoint-open"`` / ``"checkpoint-rename"``, ``at`` the run's checkpoint ordinal)."""

    kind: str
    at: int


def cut_plan(n_cuts: int, n_frames: int, n_bursts: int, seed: int) -> list[PlannedCut]:
    """Seeded power cuts: half between frames (random frame), half during a checkpoint write (random save).

    Fewer than ``n_cuts`` are planned (with a warning saying why) only when the stream has too few
    frames or checkpoint writes to place them; checkpoint cuts it cannot place become frame cuts."""
    rng = np.random.default_rng([seed, 14])
    n_ckpt = min(n_cuts // 2, max(n_bursts - 1, 0))
    n_frame = min(n_cuts - n_ckpt, max(n_frames - 2, 0))
    if n_ckpt + n_frame < n_cuts:
        log.warning("--power-cuts %d: planned %d (%d between frames: %d frames can be cut; %d during a "
                       "checkpoint write: %d teach bursts)", n_cuts, n_ckpt + n_frame, n_frame,
                       max(n_frames - 2, 0), n_ckpt, n_bursts)
    frames = sorted(rng.choice(np.arange(1, n_frames - 1), n_frame, replace=False).tolist()) if n_frame else []
    saves = sorted(rng.choice(np.arange(1, n_bursts), n_ckpt, replace=False).tolist()) if n_ckpt else []
    cuts = [PlannedCut("frame", int(f)) for f in frames]
    cuts += [PlannedCut("checkpoint-" + ("open" if j % 2 == 0 else "rename"), int(s)) for j, s in enumerate(saves)]
    return cuts


@dataclass(frozen=True)
class Cut:
    """A power cut as it happened: where, how long the device was off, and what it lost."""

    kind: str  # as `PlannedCut.kind`
    frame: int  # the camera's frame when the power went
    t: float  # stream time of the cut (s)
    recovery_s: float  # wall time from the kill to the restored device's "ready"
    frames_off: int  # frames shown while the device was off
    taught_lost: int  # taught frames the device received whose learning the restore lost
    bursts_lost: int  # teach bursts lost whole
    bursts_touched: int  # teach bursts with at least one lost frame
    updates_lost: int  # learned batches the restore rolled back
    restored_step: int  # the agent step of the checkpoint restored (0: none)
    torn_bytes: int  # bytes of the checkpoint the cut tore (written, then lost)


@dataclass(frozen=True)
class Learned:
    """A taught burst the device learned: stream time, agent step after it, frames, learn time, frame index."""

    t: float
    step: int
    frames: int
    ms: float
    frame: int


@dataclass(frozen=True)
class Evaluation:
    """The held-out test accuracy after a learned burst (every ``eval_every``)."""

    t: float
    frame: int
    step: int
    accuracy: float


@dataclass(frozen=True)
class DeviceError:
    """An error the device logged and survived (e.g. a failed learn), at stream time ``t``."""

    t: float
    where: str | None
    message: str | None


@dataclass(frozen=True)
class Failure:
    """Why a run stopped early: the device failed (``device``), went over its RAM budget (``ram_budget``),
    or its state folder outgrew the flash budget (``flash_budget``: only ``where`` and the disk figures)."""

    kind: str
    where: str
    reason: str | None = None
    message: str | None = None
    site: str | None = None
    frame: int | None = None
    peak_rss_bytes: int | None = None
    ram_budget_mb: float | None = None
    ram_mechanism: str | None = None
    exit_status: int | None = None
    disk_bytes: int | None = None
    flash_budget_mb: float | None = None


@dataclass(frozen=True)
class FinalState:
    """The device's last word at the end of the stream (its ``done`` message)."""

    step: int
    frames: int
    learned_batches: int
    learn_errors: int
    final_accuracy: float | None
    disk_bytes: int
    rss: int
    rss_peak: int
    memory: dict[str, int]

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> FinalState:
        return cls(**{f.name: message[f.name] for f in fields(cls)})


@dataclass
class DeviceRun:
    """What one simulated deployment recorded (`firmware_sim.device.report.run_entry` makes its ``report.json`` entry)."""

    n_frames: int
    pred: np.ndarray  # per frame: predicted class, -1 no answer, -2 never processed
    proc_ms: np.ndarray  # per frame: processing time (NaN: not processed)
    start_s: np.ndarray  # per frame: simulated time processing started (NaN: not processed)
    dropped: np.ndarray  # bool per frame: dropped by the camera (latest-frame)
    lost_off: np.ndarray  # bool per frame: arrived while the device was off
    wall_ms: np.ndarray  # per frame: wall-clock processing time as the loop measured it
    evals: list[Evaluation] = field(default_factory=list)
    learned: list[Learned] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)  # (stream time, child RSS bytes)
    cuts: list[Cut] = field(default_factory=list)
    errors: list[DeviceError] = field(default_factory=list)
    #: What the device wrote to flash, by part (`firmware_sim.device.flash`).
    flash: FlashWrites = field(default_factory=FlashWrites)
    final: FinalState | None = None
    failure: Failure | None = None
    ram: str = "none"  # how the RAM budget was enforced (`firmware_sim.device.budgets.RamLimit.mechanism`)
    boots: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    #: Planned cuts that did not happen, ``{"kind", "at", "reason"}`` (`DeviceSimulation.run` logs them).
    missed_cuts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def bytes_written(self) -> int:
        """Every byte written to the state folder: checkpoints, lock file, temp files torn by cuts."""
        return self.flash.total

    @property
    def checkpoints(self) -> int:
        return self.flash.checkpoints

    @classmethod
    def empty(cls, n_frames: int) -> DeviceRun:
        """Nothing recorded yet: no frame processed."""
        n = n_frames
        return cls(n, np.full(n, -2, np.int64), np.full(n, np.nan), np.full(n, np.nan), np.zeros(n, bool),
                   np.zeros(n, bool), np.full(n, np.nan))


class _Child:
    """One boot of the device: the process, its pipe, and a reader thread feeding a queue."""

    def __init__(self, config_path: Path, env: dict[str, str], limit: RamLimit) -> None:
        self.started = time.perf_counter()
        self.limit = limit
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

    def power_off(self) -> None:
        """Kill the process (if it still runs), reap it and release its RAM limit."""
        self.kill()
        self.limit.close()

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


def _child_config(base: dict[str, Any], state_dir: Path, cut: PlannedCut | None,
                  checkpoints_done: int) -> dict[str, Any]:
    config = dict(base, state_dir=str(state_dir))
    if cut is not None and cut.kind.startswith("checkpoint-"):
        ordinal = cut.at - checkpoints_done
        if ordinal >= 1:
            config["cut_save"] = {"at": cut.kind.split("-", 1)[1], "ordinal": ordinal}
    return config


class DeviceSimulation:
    """One deployment of a stream: boots the child device, shows it the camera's frames at the frame clock,
    cuts its power as planned (a new child restores the state after each cut), and records a `DeviceRun`.

    The camera's position (``k``, the next frame to show) and the device's clock (``free``, the simulated
    time it is next free) are the two variables every step moves.

    Example:
        >>> cuts = cut_plan(4, len(frames), plan.n_bursts, seed=0)                       # doctest: +SKIP
        >>> run = DeviceSimulation(frames, plan, base_config, DeviceOptions(), work, cuts).run()  # doctest: +SKIP
        >>> [cut.bursts_lost for cut in run.cuts]                                        # doctest: +SKIP
    """

    def __init__(self, frames: StreamFrames, plan: TeachPlan, base_config: dict[str, Any],
                 options: DeviceOptions, work: Path, cuts: list[PlannedCut]) -> None:
        self.frames, self.plan, self.base_config, self.options, self.work = frames, plan, base_config, options, work
        self.n = len(frames)
        self.record = DeviceRun.empty(self.n)
        self.budgets = options.budgets()
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.budgets["threads"]:
            self.env["OMP_NUM_THREADS"] = str(self.budgets["threads"])
        self.state_dir = Path(tempfile.mkdtemp(prefix="state-", dir=work))
        pending = sorted(cuts, key=lambda c: (c.kind != "frame", c.at))
        self.frame_cuts = [c.at for c in pending if c.kind == "frame"]
        self.save_cuts = [c for c in pending if c.kind != "frame"]
        flash_mb = self.budgets["flash_budget_mb"]
        self.flash_limit = None if flash_mb is None else int(flash_mb * 1024 * 1024)
        self.k = 0
        self.free = 0.0
        self.t0_wall = 0.0  # wall time the stream started (the realtime clock's zero)
        self.active: list[Learned] = []  # learned batches in the device's current state
        self.taught_delivered: list[int] = []  # burst id of every taught frame the device received
        self.boot_count = 0
        bursts = plan.bursts
        self.burst_end = {int(bid): int(np.flatnonzero(bursts == bid).max()) for bid in np.unique(bursts[bursts >= 0])}

    def run(self, progress: bool = False, desc: str = "device") -> DeviceRun:
        """Run the stream to its end (or the first failure); with ``progress``, the frames reached show on
        stderr (a bar on a terminal, plain lines in a log)."""
        from firmware_sim.loop.progress import Progress

        started_wall = time.perf_counter()
        child, msg = self._start_child()
        self.record.boots.append(time.perf_counter() - child.started)
        if msg is None or msg["kind"] != "ready":
            self._fail(child, msg, "boot")
        else:
            self.t0_wall = time.perf_counter()
            bar = Progress(self.n, desc, unit="frame", enabled=progress)
            last = self._stream(child, bar)
            self._finish(last)
            bar.update_to(self.k)
            bar.close()
        self.record.wall_s = time.perf_counter() - started_wall
        self._note_missed_cuts()
        return self.record

    def _note_missed_cuts(self) -> None:
        """Record and log the planned cuts that did not happen (the stream ended or failed first)."""
        record = self.record
        end = "the stream failed first" if record.failure is not None else "the stream ended first"
        record.missed_cuts += [{"kind": "frame", "at": at, "reason": end} for at in self.frame_cuts]
        record.missed_cuts += [{"kind": c.kind, "at": c.at, "reason": end} for c in self.save_cuts]
        self.frame_cuts, self.save_cuts = [], []
        if record.missed_cuts:
            planned = len(record.cuts) + len(record.missed_cuts)
            log.warning("power cuts: %d of %d planned happened; %s", len(record.cuts), planned,
                           "; ".join(f"{m['kind']} at {m['at']}: {m['reason']}" for m in record.missed_cuts[:10]))

    def _start_child(self) -> tuple[_Child, dict[str, Any] | None]:
        """Boot a device on the state folder; returns it and its first message (``ready`` or why not)."""
        import json

        self.boot_count += 1
        cut = self.save_cuts[0] if self.save_cuts else None
        config = _child_config(self.base_config, self.state_dir, cut, self.record.checkpoints)
        path = self.work / f"child-{self.boot_count}.json"
        path.write_text(json.dumps(config))
        limit = ram_limit(self.budgets["ram_budget_mb"], f"edge-sim-{os.getpid()}-{self.boot_count}")
        self.record.ram = limit.mechanism
        child = _Child(path, self.env, limit)
        msg = child.next()
        if msg is not None and msg["kind"] == "ready":
            self.record.flash.lock_bytes += int(msg["lock_bytes"])
        return child, msg

    def _stream(self, child: _Child, bar: Any) -> _Child | None:
        """Show frames until the stream ends or the device fails; returns the device still on, if any."""
        options, record, period = self.options, self.record, self.options.period_s
        current: _Child | None = child
        while self.k < self.n and record.failure is None:
            assert current is not None
            bar.update_to(self.k)
            if options.realtime:
                self.free = max(self.free, time.perf_counter() - self.t0_wall)
            newest = min(self.n - 1, int(math.floor(self.free * options.fps + 1e-9)))
            if newest > self.k:
                record.dropped[self.k:newest] = True
                self.k = newest
            if self.frame_cuts and self.frame_cuts[0] <= self.k:
                self.frame_cuts.pop(0)
                current = self._power_cut(current, "frame", max(self.free, self.k * period))
                self.free = max(self.free, self.k * period)
                if current is None:
                    break
                continue
            current = self._show_frame(current)
            if record.failure is not None or current is None:
                break
            self.k += 1
        return current

    def _show_frame(self, child: _Child) -> _Child | None:
        """Send frame ``k`` and read the device's messages up to its ack (or a cut during a checkpoint
        write, after which the restarted device is returned and ``k`` is the frame before the outage's end)."""
        options, k, period = self.options, self.k, self.options.period_s
        t_k = k * period
        if options.realtime:
            delay = self.t0_wall + t_k - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        label = int(self.plan.labels[k])
        image = self.frames.image(k)
        header = {"kind": "frame", "i": k, "t": t_k, "shape": list(image.shape), "label": None if label < 0 else label}
        if label >= 0:
            self.taught_delivered.append(int(self.plan.bursts[k]))
        if not child.send(header, image.tobytes()):
            self._fail(child, child.next(5.0), f"frame {k}")
            return child
        start = max(self.free, t_k, time.perf_counter() - self.t0_wall if options.realtime else 0.0)
        while True:  # until this frame's ack (simulated) / the next frame's time (realtime)
            msg = child.next()
            if msg is None or msg["kind"] == "failed":
                self._fail(child, msg, f"frame {k}")
                return child
            if msg["kind"] == "cut_point":
                self.save_cuts.pop(0)
                restarted = self._power_cut(child, "checkpoint-" + msg["at"], start)
                self.free = max(self.free, self.k * period)
                self.k -= 1  # the stream's k += 1 resumes at the first frame after the outage
                return restarted
            self._handle(msg, start)
            if msg["kind"] == "ack":
                self._record_ack(msg, start)
                return child

    def _record_ack(self, msg: dict[str, Any], start: float) -> None:
        """A processed frame: its time, answer, evaluation and RSS; the device is busy until it is done."""
        record, i = self.record, int(msg["i"])
        wall_ms = float(msg["ms"])
        # simulated clock: the frame's wall time, less any time the shared host gave the CPU to
        # other processes (wall - CPU of the device); realtime: the wall time
        ms = wall_ms if self.options.realtime else min(wall_ms, float(msg.get("cpu_ms", wall_ms)))
        record.wall_ms[i] = wall_ms
        record.proc_ms[i], record.start_s[i] = ms, start
        record.pred[i] = -1 if msg["pred"] is None else int(msg["pred"])
        if msg.get("test_accuracy") is not None:
            record.evals.append(Evaluation(i * self.options.period_s, i, msg["step"], msg["test_accuracy"]))
        if "rss" in msg:
            record.rss.append((start, int(msg["rss"])))
        self.free = start + ms / 1000.0

    def _handle(self, msg: dict[str, Any], now: float) -> None:
        """The device's events: a learned burst, a checkpoint written, an error it survived."""
        kind, record = msg["kind"], self.record
        if kind == "learned":
            learned = Learned(now, msg["step"], msg["frames"], msg["ms"], msg["frame"])
            self.active.append(learned)
            record.learned.append(learned)
        elif kind == "checkpoint":
            record.flash.add_checkpoint(msg["parts"], msg["step"])
            if self.save_cuts and self.save_cuts[0].at <= record.checkpoints:
                missed = self.save_cuts.pop(0)  # passed without landing (e.g. the final save came first)
                record.missed_cuts.append({"kind": missed.kind, "at": missed.at,
                                           "reason": f"checkpoint write {missed.at} passed without reaching "
                                                     "the cut point (e.g. the final save came first)"})
            if self.flash_limit is not None and msg["disk_bytes"] > self.flash_limit:
                record.failure = Failure("flash_budget", where=f"checkpoint after frame {self.k}",
                                         disk_bytes=msg["disk_bytes"], flash_budget_mb=self.budgets["flash_budget_mb"])
        elif kind == "error":
            record.errors.append(DeviceError(now, msg.get("where"), msg.get("message")))

    def _power_cut(self, child: _Child, kind: str, t_cut: float) -> _Child | None:
        """Kill, stay off, restart; returns the new device (None: it failed to restore) and moves ``k`` to
        the next frame the camera shows."""
        record = self.record
        kill_wall = time.perf_counter()
        child.power_off()
        torn = sum(p.stat().st_size for p in self.state_dir.glob(".state-*"))
        record.flash.torn_bytes += torn
        learned_before = len(self.active)
        first_off = self.k if kind == "frame" else self.k + 1  # a checkpoint cut comes after frame k was received
        next_k = min(self.n, max(first_off, int(math.ceil((t_cut + self.options.outage_s) * self.options.fps - 1e-9))))
        lost_idx = np.arange(first_off, next_k)
        record.lost_off[lost_idx] = True
        new, msg = self._start_child()
        recovery = time.perf_counter() - kill_wall
        if msg is None or msg["kind"] != "ready":
            self._fail(new, msg, "restore after a power cut")
            self.k = next_k
            return None
        restored = msg["restored_step"] or 0
        while self.active and self.active[-1].step > restored:
            self.active.pop()
        kept = sum(a.frames for a in self.active)
        delivered = self.taught_delivered
        lost_taught = max(0, len(delivered) - kept - sum(c.taught_lost for c in record.cuts))
        start = len(delivered) - lost_taught
        bursts_lost = sorted(set(delivered[start:]))
        # a burst is lost whole when it had ended by the cut and none of the frames the device received
        # of it survived (a burst the cut interrupts goes on after the restart)
        kept_ids = set(delivered[:start])
        whole = [bid for bid in bursts_lost if bid not in kept_ids and self.burst_end[bid] < first_off]
        record.cuts.append(Cut(kind, self.k, round(t_cut, 6), recovery, int(lost_idx.size), lost_taught, len(whole),
                               len(bursts_lost), learned_before - len(self.active), restored, torn))
        self.k = next_k
        return new

    def _finish(self, child: _Child | None) -> None:
        """End of stream: the device's final save and evaluation, or power off the one a failure left on."""
        if child is None:
            return
        if self.record.failure is not None:
            child.power_off()
            return
        child.send({"kind": "end"})
        while True:
            msg = child.next()
            if msg is None or msg["kind"] == "failed":
                self._fail(child, msg, "end of stream")
                return
            if msg["kind"] == "cut_point":  # a planned cut on the final save: ignore it, finish
                child.power_off()
                return
            self._handle(msg, self.free)
            if msg["kind"] == "done":
                self.record.final = FinalState.from_message(msg)
                child.wait()  # it exits on its own after "done"
                child.limit.close()
                return

    def _fail(self, child: _Child, msg: dict[str, Any] | None, where: str) -> None:
        """Record why the device stopped (a RAM budget or another failure), with its peak RSS."""
        child.power_off()
        code = child.proc.returncode
        info = msg or {}
        reason = info.get("reason") or f"exit status {code}"
        text = info.get("message") or child.stderr_tail()
        ram = self.budgets["ram_budget_mb"]
        memory = ram is not None and (reason == "MemoryError" or "memory" in text.lower() or "alloc" in text.lower()
                                      or code in (-signal.SIGKILL, -signal.SIGABRT, -signal.SIGSEGV) or msg is None)
        self.record.failure = Failure("ram_budget" if memory else "device", where=info.get("where") or where,
                                      reason=reason, message=text[:300], site=info.get("site"), frame=self.k,
                                      peak_rss_bytes=info.get("rss_peak") or child.peak_rss, ram_budget_mb=ram,
                                      ram_mechanism=self.record.ram, exit_status=code)


def simulate(frames: StreamFrames, plan: TeachPlan, base_config: dict[str, Any], options: DeviceOptions,
             work: Path, cuts: list[PlannedCut], progress: bool = False, desc: str = "device") -> DeviceRun:
    """Run the stream through child devices (restarted after each cut); returns what happened.

    With ``progress``, the frames reached show on stderr (a bar on a terminal, plain lines in a log).
    """
    return DeviceSimulation(frames, plan, base_config, options, work, cuts).run(progress, desc)
