"""The simulated device: ``python -m firmware_sim.device.child CONFIG.json``, started by ``edge-sim device``.

It is firmware, not a simulator: it holds the state folder's lock, restores the newest checkpoint
(or starts fresh), and runs the SAME `edge.device.loop.DeviceLoop` as ``edge-agent run`` over a
`PipeCamera` (frames from its stdin). After every frame a listener reports the frame's processing
time and the loop's answer on stdout (`firmware_sim.device.protocol`); learned batches, checkpoints
(with their bytes by part, measured on the file: `firmware_sim.device.flash`) and errors are forwarded
from the loop's events. The loop keeps a JPEG thumbnail of every taught frame in its teach ledger, as
on a real device; with ``thumbnails: false`` in the config the agent's ledger is made with thumbnail
size 0 before the loop starts (the loop then encodes none). Under the simulated clock the listener waits for
the learner to be idle before acknowledging a frame, so a taught burst is learned (and saved) before
the next frame arrives and the run is reproducible; with ``realtime`` nothing waits.

Power cuts during a checkpoint write: with ``cut_save`` in the config, an audit hook
(`sys.addaudithook`) stops the learner thread when the N-th checkpoint of this boot opens its temp
file (``at: "open"``) or is about to rename it into place (``at: "rename"``), tells the parent, and
waits for its SIGKILL. Nothing of the checkpoint code is replaced.

A `MemoryError` anywhere (a RAM budget, RLIMIT_AS) is reported with the phase it happened in and
the process's peak RSS, then the process exits with status 3.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

EXIT_FAILED = 3


def _peak_rss_bytes() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class PipeCamera:
    """A `edge.device.sources.Source` over the device pipe: ``frame`` messages until ``end``."""

    def __init__(self, channel: Any, phase: list[str], realtime: bool) -> None:
        self.channel = channel
        self.phase = phase
        self.realtime = bool(realtime)
        self.index = -1
        self.sim_time = 0.0
        self.cpu_at_delivery = time.process_time()

    def read(self) -> Any:
        from edge.device.sources import Frame

        message = self.channel.recv()
        if message is None or message[0]["kind"] != "frame":
            return None
        header, payload = message
        image = np.frombuffer(payload, dtype=np.uint8).reshape(header["shape"])
        self.index, self.sim_time = int(header["i"]), float(header["t"])
        self.cpu_at_delivery = time.process_time()
        self.phase[0] = f"frame {self.index}"
        label = header.get("label")
        return Frame(image, self.sim_time, label=None if label is None else str(label))

    def close(self) -> None:
        return None


def _install_cut_hook(state_dir: str, cut: dict[str, Any], channel: Any) -> None:
    """Block the thread writing the ``cut["ordinal"]``-th checkpoint of this boot (see the module doc)."""
    from edge.checkpoint import _TMP_PREFIX

    prefix = os.path.join(os.path.abspath(state_dir), _TMP_PREFIX)
    seen = {"open": 0, "rename": 0}

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "open" and cut["at"] == "open":
            path = args[0]
        elif event == "os.rename" and cut["at"] == "rename":
            path = args[0]
        else:
            return
        if not isinstance(path, str) or not os.path.abspath(path).startswith(prefix):
            return
        seen[cut["at"]] += 1
        if seen[cut["at"]] == int(cut["ordinal"]):
            channel.send({"kind": "cut_point", "at": cut["at"], "path": os.path.basename(path)})
            while True:  # the parent's SIGKILL ends this
                time.sleep(1.0)

    sys.addaudithook(hook)


def run(config: dict[str, Any], channel: Any, phase: list[str]) -> int:
    """Boot, restore, run the loop to the end of the stream; returns the exit status."""
    phase[0] = "import"
    from edge.agent import Agent, AgentConfig
    from edge.checkpoint import CheckpointStore, resume
    from edge.config import validate_agent_config
    from edge.device.events import EventWriter
    from edge.device.labels import LabelMap
    from edge.device.loop import DeviceLoop, LoopOptions, restore_agent, rss_bytes
    from edge.lock import StateLock
    from edge.runtimes import open_backbone
    from firmware_sim.device.flash import checkpoint_parts

    realtime = bool(config["realtime"])
    state_dir = config["state_dir"]
    phase[0] = "model load"
    backbone = open_backbone(config["model"], runtime=config["runtime"], precision=config["precision"],
                             num_threads=config["threads"])
    with StateLock(state_dir, timeout_s=10.0) as lock:
        lock_bytes = lock.path.stat().st_size  # the holder's pid, written at every boot
        phase[0] = "restore"
        store = CheckpointStore(state_dir, backbone.manifest.fingerprint, validate_config=validate_agent_config,
                                exclusive=True)
        resumed = resume(store, lambda ckpt: restore_agent(backbone, ckpt))
        if resumed is not None:
            (agent, labels), ckpt = resumed
            restored_step: int | None = ckpt.step
        else:
            agent_config = AgentConfig.from_dict(config["agent"])
            agent, labels, restored_step = Agent(backbone, agent_config), LabelMap(agent_config.max_classes), None
        if not config.get("thumbnails", True):  # a ledger without thumbnails: the loop's own is a no-op then
            agent.enable_ledger(thumbnail_size=0)
        test_x = np.load(config["test_embeddings"]) if config.get("test_embeddings") else None
        test_y = np.load(config["test_labels"]) if config.get("test_labels") else None
        if config.get("cut_save"):
            _install_cut_hook(state_dir, config["cut_save"], channel)
        camera = PipeCamera(channel, phase, realtime)
        options = LoopOptions(window=config["window"], unknown_threshold=config["unknown_threshold"],
                              resize=config["resize"], exit_at_end=True, teach_batch=config["teach_batch"],
                              predict_labelled=True, poll_s=5.0)  # an idle poll flushes a partial burst: rare
        loop = DeviceLoop(agent, camera, store=store, labels=labels, options=options,
                          events=EventWriter(None), clock=lambda: camera.sim_time)

        def on_event(record: dict[str, Any]) -> None:
            kind = record["event"]
            if kind == "learned":
                channel.send({"kind": "learned", "step": record["step"], "frames": record["frames"],
                              "label": record["label"], "ms": record["ms"], "frame": camera.index})
            elif kind == "checkpoint":
                parts = checkpoint_parts(record["path"])  # measured on the file just written
                channel.send({"kind": "checkpoint", "step": record["step"], "parts": parts, "bytes": parts["bytes"],
                              "disk_bytes": store.disk_bytes(), "reason": record["reason"]})
            elif kind == "error":
                exc = sys.exc_info()[1]
                if isinstance(exc, MemoryError):  # a learn that ran out of memory: the device has failed
                    _fail(channel, f"{record.get('where')} at frame {camera.index}", exc)
                channel.send({"kind": "error", "where": record.get("where"), "message": record.get("message")})

        loop.events.listeners.append(on_event)
        state = {"learned": loop.learned_batches, "since_eval": 0}

        def evaluate() -> float | None:
            if test_x is None or test_y is None or not loop.agent.classes_seen().size:
                return None
            return float(np.mean(loop.agent.predict_embeddings(test_x) == test_y))

        def on_frame(frame: Any, seconds: float) -> None:
            cpu_ms = (time.process_time() - camera.cpu_at_delivery) * 1000.0
            if not realtime:
                while loop.learning:
                    time.sleep(0.0002)
            latest = loop.latest_prediction()
            pred = latest["index"] if latest is not None and latest["frame"] == loop.frames else None
            ack: dict[str, Any] = {"kind": "ack", "i": camera.index, "ms": seconds * 1000.0, "cpu_ms": cpu_ms,
                                   "pred": pred,
                                   "step": loop.agent.step_, "dropped": loop.grabber.dropped}
            if loop.learned_batches != state["learned"]:
                state["since_eval"] += loop.learned_batches - state["learned"]
                state["learned"] = loop.learned_batches
                if state["since_eval"] >= config["eval_every"]:
                    state["since_eval"] = 0
                    ack["test_accuracy"] = evaluate()
            if loop.frames % config["rss_every"] == 0:
                ack["rss"] = rss_bytes()
            channel.send(ack)

        loop.frame_listeners.append(on_frame)
        channel.send({"kind": "ready", "step": agent.step_, "restored_step": restored_step,
                      "rss": rss_bytes(), "pid": os.getpid(), "lock_bytes": lock_bytes})
        phase[0] = "loop"
        loop.run()
        phase[0] = "final evaluation"
        channel.send({"kind": "done", "step": loop.agent.step_, "frames": loop.frames,
                      "learned_batches": loop.learned_batches, "learn_errors": loop.learn_errors,
                      "final_accuracy": evaluate(), "disk_bytes": store.disk_bytes(), "rss": rss_bytes(),
                      "rss_peak": _peak_rss_bytes(), "memory": loop.agent.memory_bytes()})
    return 0


def _fail(channel: Any, where: str, exc: BaseException) -> None:
    tb = traceback.extract_tb(exc.__traceback__)
    site = f"{tb[-1].filename}:{tb[-1].lineno} in {tb[-1].name}" if tb else ""
    try:
        channel.send({"kind": "failed", "reason": type(exc).__name__, "message": str(exc)[:500], "where": where,
                      "site": site, "rss_peak": _peak_rss_bytes()})
    finally:
        os._exit(EXIT_FAILED)


def main(argv: list[str]) -> int:
    """Entry point: ``CONFIG.json``; the protocol runs on stdin/stdout, logs go to stderr."""
    config = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # anything printed by a library goes to stderr, never into the pipe
    sys.stdout = sys.stderr
    from firmware_sim.device.protocol import Channel

    channel = Channel(sys.stdin.buffer, out)
    phase = ["boot"]
    try:
        return run(config, channel, phase)
    except MemoryError as exc:
        _fail(channel, phase[0], exc)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which writes it to the report
        _fail(channel, phase[0], exc)
    return EXIT_FAILED  # pragma: no cover - _fail exits


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
