"""`DeviceLoop`: predict on every frame, learn when taught, checkpoint after every learned batch.

Threads: the source is read by a `FrameGrabber` (latest-frame semantics for cameras); the loop
itself (``run``, the caller's thread) fits each frame to the model input, embeds it once, predicts
every ``every``-th frame and collects the embeddings of taught frames; one learner thread trains on
a *copy* of the agent and swaps it in with one assignment, so prediction keeps using the current
head while a batch trains and never sees a half-updated one. After each learned batch the state is
checkpointed (`edge.checkpoint.CheckpointStore`); `stop` (SIGTERM/SIGINT in ``edge-agent run``)
finishes the batch in flight and writes a final checkpoint. The caller holds the state folder's
`edge.lock.StateLock`.

Teaching: `teach` (HTTP ``POST /teach``) queues a request; the next ``frames`` frames (or the frames
of the next ``seconds`` of source time) are learned as that label. Frames that carry a label (a
folder's ``DIR/<label>/`` files, a simulated teacher) are learned in batches of ``teach_batch``.

The loop depends on nothing but an `edge.agent.Agent`, a `Source` and a clock, so ``edge-sim
device`` drives this same loop with a simulated camera, teacher and frame clock.

Example (a two-class stream, taught from labelled frames):
    >>> import numpy as np, io
    >>> from edge.agent import Agent
    >>> from edge.runtimes import open_backbone
    >>> from edge.device.sources import Frame, IterableSource
    >>> agent = Agent(open_backbone("models/tiny"))
    >>> red, blue = np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32, 3), np.uint8)
    >>> red[..., 0], blue[..., 2] = 200, 200
    >>> frames = [Frame(red, i / 30, label="red") for i in range(20)]
    >>> frames += [Frame(blue, 1 + i / 30, label="blue") for i in range(20)]
    >>> frames += [Frame(red, 2.0, name="a.png"), Frame(blue, 2.1, name="b.png")]
    >>> loop = DeviceLoop(agent, IterableSource(frames), events=EventWriter(None),
    ...                   options=LoopOptions(exit_at_end=True))
    >>> loop.run()
    >>> loop.learned_batches, loop.latest_prediction()["label"]
    (2, 'blue')
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from edge.agent import Agent
from edge.checkpoint import CheckpointStore
from edge.device.events import EventWriter
from edge.device.labels import TOP_CLASSES, UNKNOWN_NAME, LabelMap, UnknownClassError, split_state
from edge.device.sources import Frame, FrameGrabber, Source
from edge.errors import ConfigError, EdgeError, InputError
from edge.openset import FALSE_REJECT, MIN_PROBABILITY, OpenSetPolicy, check_rate, decide
from edge.manifest import FIT_POLICIES
from edge.preprocess import decode_size, fit_frame

logger = logging.getLogger(__name__)

#: Most frames one teach request may collect, and its longest duration in seconds.
MAX_TEACH_FRAMES = 1000
MAX_TEACH_SECONDS = 60.0
#: Teach requests waiting to collect frames at most (more: `TeachQueueFull`).
MAX_PENDING_TEACH = 8
__all__ = ["DeviceLoop", "LoopOptions", "TeachQueueFull", "TOP_CLASSES", "copy_agent", "restore_agent", "rss_bytes"]


class TeachQueueFull(EdgeError, RuntimeError):
    """Too many teach requests are waiting; retry once some are learned."""


@dataclass(frozen=True)
class LoopOptions:
    """How the loop predicts and teaches.

    Args:
        every: predict every K-th frame (every frame is still embedded while a teach collects).
        window: predictions averaged (probabilities and novelty) for the answer of a stream; a
            file of a folder source stands alone (as in ``edge-agent predict``).
        unknown_threshold: a smoothed top probability below this is ``unknown`` (0 disables;
            `edge.openset.OpenSetPolicy.min_probability`, the same default as ``edge-agent predict``).
        resize: ``squash``, ``crop`` or ``letterbox`` to override the model's own policy
            (``preprocessing.fit`` of its manifest, `edge.preprocess.fit_frame`); None: the model's.
        exit_at_end: `DeviceLoop.run` returns once the source is exhausted and every teach is learned.
        teach_batch: frames per learned batch for frames that carry their own label.
        checkpoint: save after every learned batch and at the end (needs a store).
        poll_s: how long the loop waits for a frame before checking for stop/exhaustion.
        predict_labelled: also predict frames that carry a label, before learning them (prequential
            evaluation in ``edge-sim device``).
        reject_novel: also answer ``unknown`` when the agent's calibrated open-set score
            (`edge.openset`) marks the frame as novel (`edge.openset.OpenSetPolicy.reject_novel`; off
            by default there and in ``edge-agent predict``, the module docstring says why).
        unknown_rate: the target false-reject rate of that score's threshold (``--unknown-rate``,
            `edge.openset.OpenSetPolicy.unknown_rate`).
    """

    every: int = 1
    window: int = 5
    unknown_threshold: float = MIN_PROBABILITY
    resize: str | None = None
    exit_at_end: bool = False
    teach_batch: int = 32
    checkpoint: bool = True
    poll_s: float = 0.05
    predict_labelled: bool = False
    reject_novel: bool = False
    unknown_rate: float = FALSE_REJECT

    def __post_init__(self) -> None:
        check_rate(self.unknown_rate, "LoopOptions.unknown_rate")
        checks = [
            (1 <= self.every <= 10_000, "every", "an int in [1, 10000]", self.every),
            (1 <= self.window <= 1_000, "window", "an int in [1, 1000]", self.window),
            (0.0 <= self.unknown_threshold <= 1.0, "unknown_threshold", "in [0, 1]", self.unknown_threshold),
            (self.resize is None or self.resize in FIT_POLICIES, "resize", f"None or one of {FIT_POLICIES}",
             self.resize),
            (1 <= self.teach_batch <= MAX_TEACH_FRAMES, "teach_batch", f"in [1, {MAX_TEACH_FRAMES}]",
             self.teach_batch),
            (0.0 < self.poll_s <= 5.0, "poll_s", "in (0, 5]", self.poll_s),
        ]
        for ok, name, expected, got in checks:
            if not ok:
                raise ConfigError(f"LoopOptions.{name}: expected {expected}, got {got!r}")

    @property
    def policy(self) -> OpenSetPolicy:
        """The "unknown" rule's knobs (`edge.openset.OpenSetPolicy`) these options ask for."""
        return OpenSetPolicy(reject_novel=self.reject_novel, min_probability=self.unknown_threshold,
                             unknown_rate=self.unknown_rate)


@dataclass
class _Teach:
    index: int
    name: str
    frames: int | None
    seconds: float | None
    started: float | None = None
    collected: list[np.ndarray] | None = None
    finished: bool = False  # learned or ended (`DeviceLoop.finish_teach`): collects no more


def rss_bytes() -> int:
    """Resident set size of this process (psutil)."""
    import psutil

    return int(psutil.Process(os.getpid()).memory_info().rss)


def copy_agent(agent: Agent) -> Agent:
    """A new agent with the same backbone, config and (copied) state."""
    clone = Agent(agent.backbone, agent.config)
    clone.load_state_dict(agent.state_dict())
    return clone


class DeviceLoop:
    """The device runtime: one source, one agent, a learner thread, checkpoints.

    Args:
        agent: the `Agent` (with a backbone: frames are embedded by it).
        source: a `edge.device.sources.Source`.
        store: where checkpoints go (None: none are written).
        labels: the names of the agent's classes (a fresh map when None).
        options: `LoopOptions`.
        events: an `EventWriter` (stdout in ``edge-agent run``).
        clock: monotonic seconds (injectable: the simulator runs a frame clock).
    """

    def __init__(self, agent: Agent, source: Source, *, store: CheckpointStore | None = None,
                 labels: LabelMap | None = None, options: LoopOptions | None = None,
                 events: EventWriter | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if agent.backbone is None:
            raise ConfigError("DeviceLoop: expected an agent with a backbone (frames are embedded), got none")
        self.options = options if options is not None else LoopOptions()
        self.source = source
        self.store = store
        self.labels = labels if labels is not None else LabelMap(agent.config.max_classes)
        if self.labels.max_classes != agent.config.max_classes:
            raise ConfigError(f"labels: expected max_classes {agent.config.max_classes}, got {self.labels.max_classes}")
        seen = set(agent.classes_seen().tolist())
        for index in [i for i in self.labels.names if not self.labels.counts[i] and i not in seen]:
            self.labels.release(index)  # named for a teach that a restart interrupted: nothing learned
        self.events = events if events is not None else EventWriter(None)
        self.clock = clock
        self._agent = agent
        agent.enable_ledger()  # every teach becomes a ledger event (edge.knowledge): undo, export
        self._thumbnails: dict[bytes, bytes] = {}  # a taught frame's embedding -> its JPEG thumbnail
        self._thumbnail_lock = threading.Lock()  # capture thread adds, learner thread takes
        self.input_hw = tuple(agent.backbone.manifest.input_shape[:2])
        self._manifest = agent.backbone.manifest  # its size and fit policy: `edge.preprocess.fit_frame`
        if hasattr(source, "decode_size"):  # files decode as `edge.preprocess.load_frame` decodes them
            source.decode_size = decode_size(self._manifest)
        if hasattr(source, "on_event"):  # skipped files, waiting for the source
            source.on_event = self.events.emit
        if callable(getattr(source, "note_event", None)):  # a folder remembers the files a checkpoint holds
            self.events.listeners.append(source.note_event)  # type: ignore[attr-defined]
        self.grabber = FrameGrabber(source)
        #: The source is exhausted (a file or folder source at its end, or a source that failed).
        self.source_ended = False
        self._state_lock = threading.RLock()  # learner swap, rename, forget, checkpoint
        #: Held around every use of the backbone (it is not thread-safe): the loop's frames, and an
        #: import over HTTP that re-embeds thumbnails (`replace_agent`).
        self.backbone_lock = threading.Lock()
        #: Guards the teach requests; the frame loop takes it on every frame, so nothing waits for
        #: the state lock (held by a learn for its whole fit) while holding it: where both are
        #: needed the state lock is taken first.
        self._teach_lock = threading.Lock()
        self._pending: deque[_Teach] = deque()
        self._learn_q: queue.Queue[tuple[int, np.ndarray, list[str] | None] | None] = queue.Queue(
            maxsize=2 * MAX_PENDING_TEACH)
        self._learning = 0  # batches queued or training
        self._count_lock = threading.Lock()  # _learning is changed by the loop, HTTP and learner threads
        self._stop = threading.Event()
        self._labelled: list[np.ndarray] = []
        self._labelled_files: list[str] = []  # the file names of ``_labelled`` (a folder's label files)
        self._labelled_index: int | None = None
        self._window: deque[np.ndarray] = deque(maxlen=self.options.window)
        self._novelty_window: deque[float] = deque(maxlen=self.options.window)
        self._latest: dict[str, Any] | None = None
        self._latest_frame: tuple[np.ndarray, int, float] | None = None
        self._last_answer: tuple[Any, bool] | None = None
        self._latency_ms: deque[float] = deque(maxlen=1000)
        self._frame_times: deque[float] = deque(maxlen=120)
        self.frames = 0
        self.predictions = 0
        self.learned_batches = 0
        self.learn_errors = 0
        self._reported_drops = 0
        self.last_checkpoint: dict[str, Any] | None = None
        #: Why the final checkpoint (at `stop` or the source's end) failed; None when it did not.
        self.final_checkpoint_error: str | None = None
        self.unknown_answers = 0  # answers that were "unknown" (``/metrics``)
        self._answers: dict[int, int] = {}  # answers per class index (``/metrics``)
        self._inflight: dict[int, int] = {}  # per class index: batches queued or training
        self._drop: dict[int, int] = {}  # per class index: queued batches to drop (their class was forgotten)
        #: Called after every frame with the frame and its processing seconds (the simulator's frame clock).
        self.frame_listeners: list[Callable[[Frame, float], None]] = []
        self._learner = threading.Thread(target=self._learn_worker, name="edge-learner", daemon=True)

    # --------------------------------------------------------------- public
    @property
    def agent(self) -> Agent:
        """The current agent (replaced, never mutated, when a batch is learned)."""
        return self._agent

    @property
    def learning(self) -> int:
        """Batches queued or training now (0: the learner is idle and every learned batch is saved)."""
        return self._learning

    def stop(self) -> None:
        """Ask `run` to finish (thread- and signal-safe)."""
        self._stop.set()

    def teach(self, label: str | int, frames: int | None = None, seconds: float | None = None) -> dict[str, Any]:
        """Learn the next ``frames`` frames (or ``seconds`` of frames) as ``label``; returns the request."""
        if (frames is None) == (seconds is None):
            raise InputError("teach: expected exactly one of frames or seconds, got "
                             + ("both" if frames is not None else "neither"))
        if frames is not None:
            if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) \
                    or not 1 <= frames <= MAX_TEACH_FRAMES:
                raise InputError(f"teach frames: expected an int in [1, {MAX_TEACH_FRAMES}], got {frames!r:.40}")
            frames = int(frames)
        if seconds is not None:
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) \
                    or not (math.isfinite(seconds) and 0.0 < seconds <= MAX_TEACH_SECONDS):
                raise InputError(f"teach seconds: expected a number in (0, {MAX_TEACH_SECONDS:g}], "
                                 f"got {seconds!r:.40}")
            seconds = float(seconds)
        with self._state_lock, self._teach_lock:   # state first: see `_teach_lock`
            if len(self._pending) >= MAX_PENDING_TEACH:
                raise TeachQueueFull(f"teach: expected at most {MAX_PENDING_TEACH} waiting requests, got "
                                     f"{len(self._pending)} already waiting (retry after they are learned)")
            index = self.labels.index_for(label, create=True, used=self._agent.classes_seen().tolist())
            name = self.labels.name_of(index)
            request = _Teach(index, name, frames, seconds)
            self._pending.append(request)
            position = len(self._pending)
        self.events.emit("teach", label=name, index=index, frames=frames, seconds=seconds, queued=position)
        return {"label": name, "index": index, "frames": frames, "seconds": seconds, "queued": position}

    def rename(self, name: str, to: str) -> dict[str, Any]:
        """Rename a class (checkpointed); returns ``{"index", "label"}``."""
        with self._state_lock:
            index = self.labels.rename(name, to)
            self._save(reason="rename")
        return {"index": index, "label": to}

    def forget(self, name: str) -> dict[str, Any]:
        """Forget a class: a teach still collecting for it is cancelled and batches of it not learned
        yet are dropped; a learned class loses its replay rows and seen mark and its index is retired
        (checkpointed), a class that was only named (nothing learned) frees its index. The latest
        prediction is cleared. A name or index never taught: `UnknownClassError` (404)."""
        with self._state_lock, self._teach_lock:
            index = self.labels.find(name)
            seen = set(self._agent.classes_seen().tolist())
            if index is None or not (index in seen or index in self.labels.names or self._inflight.get(index)):
                raise UnknownClassError(f"class {name!r}: expected one of {self.labels.known()} (a taught class), "
                                        "got " + ("an unknown name" if index is None else "an index never taught"))
            label = self.labels.name_of(index)
            cancelled = [t for t in self._pending if t.index == index]
            for teach in cancelled:
                teach.finished = True
            self._pending = deque(t for t in self._pending if t.index != index)
            if self._inflight.get(index):
                self._drop[index] = self._inflight[index]
            learned = index in seen or bool(self.labels.counts[index])
            if learned:
                self._forget_learned(index, label)
            else:
                self.labels.release(index)
            self._window.clear()
            self._novelty_window.clear()
            self._latest, self._last_answer = None, None  # never answer a forgotten class
            self._answers.pop(index, None)
            if learned:
                self._save(reason="forget")
        for teach in cancelled:
            self.events.emit("teach", label=teach.name, index=index, cancelled=True,
                             collected=len(teach.collected or []), reason="class forgotten")
        return {"index": index, "forgotten": label}

    def _forget_learned(self, index: int, name: str) -> None:
        """Take a learned class out of the agent's state (state lock held). When the teach ledger holds
        every sample of the class, they are removed (exact for statistics strategies, a refit for
        gradient heads) and the index is free for a new class; otherwise the class's replay rows and
        seen mark go and its index is retired."""
        if self._agent.knowledge is not None:
            clone = copy_agent(self._agent)
            try:
                removed = clone.remove_label(index)
            except (InputError, ValueError) as exc:
                logger.warning("forget %r: the ledger could not remove it (%s); retiring its index", name, exc)
            else:
                if removed["complete"] and index not in clone.classes_seen().tolist():
                    self._agent = clone
                    self.labels.forget(index, reuse=True)
                    return
        state = self._agent.state_dict()
        keep = np.asarray(state["buffer.labels"]) != index
        for key in ("buffer.data", "buffer.labels", "buffer.scales"):
            if state[key].shape[:1] == keep.shape:
                state[key] = state[key][keep]
        state["buffer.seen_per_class"] = state["buffer.seen_per_class"].copy()
        state["buffer.seen_per_class"][index] = 0
        if "head.seen" in state:
            state["head.seen"] = state["head.seen"].copy()
            state["head.seen"][index] = False
        clone = copy_agent(self._agent)
        try:
            clone.load_state_dict(state)
        except (InputError, ValueError) as exc:  # a strategy's own statistics: masked only
            logger.warning("forget %r: state kept, class masked from predictions (%s)", name, exc)
        else:
            self._agent = clone
        self.labels.forget(index)

    def _release_if_unused(self, index: int) -> None:
        """Free a class index that was named for a teach but never learned (no frames collected)."""
        with self._state_lock, self._teach_lock:
            if any(t.index == index for t in self._pending) or self._inflight.get(index) \
                    or self.labels.retired[index] or self.labels.counts[index] \
                    or index in self._agent.classes_seen().tolist():
                return
            self.labels.release(index)

    def finish_teach(self, label: str | int) -> dict[str, Any]:
        """End the oldest waiting teach of ``label`` now (a hold-to-record button released): the
        frames it collected are learned, one that collected none is dropped. Returns
        ``{"label", "index", "frames"}`` (frames: how many will be learned)."""
        with self._state_lock:
            index = self.labels.find(label)
            if index is None:
                raise UnknownClassError(f"class {label!r}: expected one of {self.labels.known()}, got an unknown name")
            name = self.labels.name_of(index)
        with self._teach_lock:
            teach = next((t for t in self._pending if t.index == index), None)
            if teach is None:
                raise InputError(f"finish teach {name!r}: expected a waiting teach of that class, got none "
                                 "(it was already learned or never started)")
            teach.finished = True
            self._pending = deque(t for t in self._pending if t is not teach)
            collected = list(teach.collected or [])
        if collected:
            self._submit(index, np.stack(collected))
        else:  # nothing to learn: the index is not kept
            self._release_if_unused(index)
        self.events.emit("teach", label=name, index=index, finished=True, collected=len(collected))
        return {"label": name, "index": index, "frames": len(collected)}

    def latest_frame(self) -> tuple[np.ndarray, int, float] | None:
        """The newest frame the loop took: ``(RGB image, frame number, source time)`` (the live view)."""
        return self._latest_frame

    def latest_prediction(self) -> dict[str, Any] | None:
        """The latest answer: ``label``, ``index``, ``score``, ``unknown``, ``frame_time``, ``frame``,
        and ``source_ended`` (no newer answer will come: a file or folder source is exhausted)."""
        latest = self._latest
        return None if latest is None else {**latest, "source_ended": self.source_ended}

    def answer_counts(self) -> tuple[int, dict[int, tuple[str, int]]]:
        """(answers that were ``unknown``, ``{index: (name, answers)}`` of the classes known now)."""
        with self._state_lock:
            per_class = {i: (self.labels.name_of(i), n) for i, n in list(self._answers.items())
                         if not self.labels.retired[i]}
        return self.unknown_answers, per_class

    def latency_ms(self) -> dict[str, float | None]:
        """Per-prediction latency (fit + embed + predict), p50 / p99 over the last 1000."""
        values = np.asarray(self._latency_ms, dtype=np.float64)
        if not values.size:
            return {"p50": None, "p99": None}
        return {"p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99))}

    def fps(self) -> float:
        """Frames processed per second over the last ~120 frames (loop clock)."""
        times = self._frame_times
        if len(times) < 2 or times[-1] <= times[0]:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])

    def status(self) -> dict[str, Any]:
        """What ``GET /status`` answers."""
        agent = self._agent
        backbone = agent.backbone
        assert backbone is not None
        classes = self.labels.classes(agent.classes_seen().tolist())
        mem = agent.memory_bytes()
        with self._teach_lock:
            pending = [{"label": t.name, "frames": t.frames, "seconds": t.seconds,
                        "collected": len(t.collected or [])} for t in self._pending]
        return {
            "model": backbone.manifest.name, "fingerprint": backbone.manifest.fingerprint,
            "runtime": backbone.info.runtime, "precision": backbone.info.precision,
            "strategy": agent.config.strategy, "step": agent.step_, "classes": classes,
            "buffer": {"fill": len(agent.buffer), "capacity": agent.buffer.capacity, "bytes": mem["buffer"]},
            "state_bytes": mem["total"],
            "state_bytes_on_disk": None if self.store is None else self.store.disk_bytes(),
            "rss_bytes": rss_bytes(), "fps": round(self.fps(), 3), "frames": self.frames,
            "predictions": self.predictions, "dropped_frames": self.grabber.dropped,
            "learned_batches": self.learned_batches, "learning": self._learning, "teach_pending": pending,
            "latency_ms": self.latency_ms(), "last_checkpoint": self.last_checkpoint,
            "source": self._source_status(), "source_ended": self.source_ended,
        }

    def _source_status(self) -> dict[str, Any]:
        """``state``: ``waiting`` (``--wait-for-source``: not opened yet), ``open`` or ``ended``; while
        waiting, ``attempts`` and ``last_error``."""
        if self.source_ended:
            return {"state": "ended", "error": None if self.grabber.error is None else str(self.grabber.error)}
        state = getattr(self.source, "state", "open")
        if state == "waiting":
            return {"state": state, "attempts": getattr(self.source, "attempts", 0),
                    "last_error": getattr(self.source, "last_error", None)}
        return {"state": "open"}

    # --------------------------------------------------------------- running
    def warm_up(self) -> float:
        """Pay the one-time costs of the frame path before the first camera frame; returns seconds.

        The first frame otherwise loads the resizer (Pillow), the thumbnail encoder and the
        runtime's first invocation (26-37 ms on this project's CI machine with the tiny backbone,
        a missed deadline at 20 fps under load) and, after a restore, builds whatever the
        strategy computes at its first answer. `run` calls it; the loop's counters, windows and
        events are untouched (the agent is asked directly, not through the frame path).
        """
        started = time.perf_counter()
        agent = self._agent
        height, width = self.input_hw
        picture = np.zeros((2 * height, 2 * width, 3), np.uint8)  # not the model's size: the resizer runs
        try:
            image = fit_frame(picture, self._manifest, self.options.resize)
            with self.backbone_lock:
                emb = agent.embed(image[None])
            if agent.knowledge is not None and agent.knowledge.thumbnail_size > 0:
                from edge.knowledge.thumbnails import encode_thumbnail

                encode_thumbnail(picture, agent.knowledge.thumbnail_size)
            if agent.classes_seen().size and np.isfinite(emb).all():
                agent.answer_embeddings(emb, self.options.policy, exclude=self.labels.retired, validate=False,
                                        novelty=False)
        except (EdgeError, ValueError, OSError) as exc:  # the frames will say it again, as events
            logger.warning("warm-up before the first frame failed: %s", exc)
        seconds = time.perf_counter() - started
        logger.debug("warm-up before the first frame: %.1f ms", seconds * 1000.0)
        return seconds

    def run(self) -> None:
        """Process frames until `stop`, or (``exit_at_end``) the source's end; then checkpoint.
        The frame path is warmed up first (`warm_up`)."""
        self.warm_up()
        self._learner.start()
        self.grabber.start()
        try:
            while not self._stop.is_set():
                frame = self.grabber.get(self.options.poll_s)
                self._report_drops()
                if frame is None:
                    if self.grabber.exhausted:
                        ended_now = not self.source_ended
                        if ended_now and self.grabber.error is not None:
                            self.events.emit("error", where="source", message=str(self.grabber.error))
                        self._flush_teach(at_end=True)
                        if ended_now:  # after the learned events of its last files
                            self.source_ended = True
                            self.events.emit("source_ended", frames=self.frames, predictions=self.predictions,
                                             error=None if self.grabber.error is None else str(self.grabber.error))
                        if self.options.exit_at_end or self.grabber.error is not None:
                            break
                        self._stop.wait(self.options.poll_s)
                    elif self._labelled:  # a folder is idle: learn what its label folders gave
                        self._flush_labelled()
                    continue
                started = time.perf_counter()
                try:
                    self._process(frame)
                except (EdgeError, ValueError) as exc:
                    self.events.emit("error", where="frame", frame=self.frames, name=frame.name, message=str(exc))
                for listener in self.frame_listeners:
                    listener(frame, time.perf_counter() - started)
        finally:
            self.grabber.stop()
            self._learn_q.put(None)
            self._learner.join()
            with self._state_lock:
                if self._agent.step_ > 0:
                    self._save(reason="final", final=True)

    def _report_drops(self) -> None:
        dropped = self.grabber.dropped
        if dropped > self._reported_drops and (dropped - self._reported_drops >= 30 or self.frames % 30 == 0):
            self.events.emit("dropped", frames=dropped - self._reported_drops, total=dropped)
            self._reported_drops = dropped

    def _process(self, frame: Frame) -> None:
        opts = self.options
        agent = self._agent  # one reference per frame: a swap mid-frame cannot mix two heads
        start = time.perf_counter()
        image = fit_frame(frame.image, self._manifest, opts.resize)
        self.frames += 1
        self._latest_frame = (frame.image, self.frames, frame.timestamp)
        self._frame_times.append(self.clock())
        teach = self._current_teach()
        if frame.label is None and self._labelled:  # a run of labelled files ended: learn it first
            self._flush_labelled()
            if not self.grabber.drop:
                self._learn_q.join()
                agent = self._agent  # answer with what those files taught
        predict = (frame.label is None or opts.predict_labelled) and (frame.name is not None or (self.frames - 1) % opts.every == 0)
        if not (teach is not None or predict or frame.label is not None):
            return
        with self.backbone_lock:
            emb = agent.embed(image[None])
        if teach is not None or frame.label is not None:
            self._remember_thumbnail(agent, emb[0], frame.image)
        if frame.label is not None:
            self._add_labelled(frame.label, emb[0], frame.name)
        elif teach is not None:
            self._collect(teach, emb[0], frame.timestamp)
        if predict and agent.classes_seen().size:
            self._predict(agent, emb, frame, start)
        elif predict and frame.name is not None:  # every file gets its event, even before any class
            self.events.emit("prediction", label=UNKNOWN_NAME, index=None, score=None, novelty=None, unknown=True,
                             frame=self.frames, frame_time=round(frame.timestamp, 6), file=frame.name,
                             reason="no class learned yet")

    def _predict(self, agent: Agent, emb: np.ndarray, frame: Frame, start: float) -> None:
        if not np.isfinite(emb).all():  # the backbone's (N, E) float32: only finiteness is checked
            raise InputError("embeddings: expected finite values, got NaN or inf")
        policy = self.options.policy
        # the novelty is computed when the rule uses it, and for a file (shown as `predict` shows
        # it); a stream without --reject-novel skips it (most of an answer's time at 1280-d)
        answer = agent.answer_embeddings(emb, policy, exclude=self.labels.retired, validate=False,
                                         novelty=frame.name is not None)
        if frame.name is None:  # a stream: smooth over the last frames; a file stands alone
            self._window.append(answer.probabilities[0])
            self._novelty_window.append(float(answer.novelty[0]))
            # = np.mean(window, axis=0) (same sum, same order), without its Python wrapper
            smooth = np.add.reduce(np.asarray(self._window), axis=0) / len(self._window)
            answer = decide(smooth[None], np.array([np.mean(self._novelty_window)]), answer.threshold, policy)
        fields = self.labels.answer_fields(answer, 0, top=TOP_CLASSES)
        label, unknown = fields["label"], fields["unknown"]
        self._latency_ms.append((time.perf_counter() - start) * 1000.0)
        self.predictions += 1
        if unknown:
            self.unknown_answers += 1
        else:
            self._answers[int(fields["index"])] = self._answers.get(int(fields["index"]), 0) + 1
        self._latest = {**fields, "frame_time": frame.timestamp, "frame": self.frames, "name": frame.name}
        said = (label, unknown)
        if frame.name is not None or said != self._last_answer:
            event = {k: fields[k] for k in ("label", "index", "score", "novelty", "unknown")}
            event.update(frame=self.frames, frame_time=round(frame.timestamp, 6))
            if frame.name is not None:
                event["file"] = frame.name
            self.events.emit("prediction", **event)
        self._last_answer = said

    # --------------------------------------------------------------- teaching
    def _current_teach(self) -> _Teach | None:
        with self._teach_lock:
            return self._pending[0] if self._pending else None

    def _collect(self, teach: _Teach, emb: np.ndarray, timestamp: float) -> None:
        with self._teach_lock:  # `finish_teach` may end this request from the HTTP thread
            if teach.finished:
                return
            if teach.collected is None:
                teach.collected, teach.started = [], timestamp
            teach.collected.append(emb)
            assert teach.started is not None
            done = (len(teach.collected) >= teach.frames if teach.frames is not None
                    else timestamp - teach.started >= (teach.seconds or 0.0))
            if done:
                teach.finished = True
                self._pending = deque(t for t in self._pending if t is not teach)
        if done:
            self._submit(teach.index, np.stack(teach.collected))

    def _flush_teach(self, at_end: bool) -> None:
        """At the source's end: learn partial collections, drop requests that saw no frame."""
        self._flush_labelled()
        with self._teach_lock:
            pending, self._pending = list(self._pending), deque()
        for teach in pending:
            if teach.collected:
                self._submit(teach.index, np.stack(teach.collected))
            else:
                self._release_if_unused(teach.index)
                self.events.emit("error", where="teach", label=teach.name,
                                 message="teach: expected frames to learn, got none (the source ended)")
        if at_end:
            self._learn_q.join()

    def _add_labelled(self, label: str, emb: np.ndarray, name: str | None = None) -> None:
        with self._state_lock:
            try:
                index = self.labels.index_for(label, create=True, used=self._agent.classes_seen().tolist())
            except InputError as exc:
                self.events.emit("error", where="teach", label=label, message=str(exc),
                                 **({} if name is None else {"file": name}))
                return
        if self._labelled_index is not None and index != self._labelled_index:
            self._flush_labelled()
        self._labelled_index = index
        self._labelled.append(emb)
        if name is not None:
            self._labelled_files.append(name)
        if len(self._labelled) >= self.options.teach_batch:
            self._flush_labelled()

    def _flush_labelled(self) -> None:
        if self._labelled and self._labelled_index is not None:
            self._submit(self._labelled_index, np.stack(self._labelled), self._labelled_files)
        self._labelled, self._labelled_files, self._labelled_index = [], [], None

    def _submit(self, index: int, emb: np.ndarray, files: list[str] | None = None) -> None:
        with self._count_lock:
            self._learning += 1
            self._inflight[index] = self._inflight.get(index, 0) + 1
        self._learn_q.put((index, emb, files or None))

    # --------------------------------------------------------------- learner
    def _learn_worker(self) -> None:
        while True:
            item = self._learn_q.get()
            try:
                if item is None:
                    return
                self._learn_one(*item)
            finally:
                self._learn_q.task_done()

    def _learn_one(self, index: int, emb: np.ndarray, files: list[str] | None = None) -> None:
        """Learn one batch; ``files``: the folder files it came from (named in the ``learned`` event,
        so every file of a folder source is named by exactly one event)."""
        named = {} if not files else {"files": list(files)}
        start = time.perf_counter()
        try:
            with self._state_lock:
                if self._drop.get(index) or self.labels.retired[index]:  # its class was forgotten meanwhile
                    if self._drop.get(index):
                        self._drop[index] -= 1
                    self.events.emit("teach", label=self.labels.name_of(index), index=index, cancelled=True,
                                     collected=int(emb.shape[0]), reason="class forgotten", **named)
                    return
                clone = copy_agent(self._agent)
                clone.teach_embeddings(emb, np.full(emb.shape[0], index, dtype=np.int64), source="device",  # ledger
                                      thumbnails=self._take_thumbnails(emb))
                self._agent = clone  # the swap: one assignment
                self.labels.add_counts(index, emb.shape[0])
                self.learned_batches += 1
                ms = (time.perf_counter() - start) * 1000.0
                self.events.emit("learned", label=self.labels.name_of(index), index=index,
                                 frames=int(emb.shape[0]), step=clone.step_, ms=round(ms, 3), **named)
                self._save(reason="learned")
        except (EdgeError, ValueError, MemoryError) as exc:
            self.learn_errors += 1
            self.events.emit("error", where="learn", label=self.labels.name_of(index), message=str(exc), **named)
        finally:
            with self._count_lock:
                self._learning -= 1
                self._inflight[index] -= 1

    def _remember_thumbnail(self, agent: Agent, row: np.ndarray, picture: np.ndarray) -> None:
        """Keep the JPEG thumbnail of a taught frame (the camera's picture, not the model input)
        until its batch is learned, keyed by the frame's embedding; at most 4096 waiting."""
        from edge.knowledge.thumbnails import encode_thumbnail

        size = agent.knowledge.thumbnail_size if agent.knowledge is not None else 0
        if size <= 0:
            return
        try:
            jpeg = encode_thumbnail(picture, size)
        except (EdgeError, ValueError, OSError):   # a frame Pillow cannot encode: no thumbnail
            return
        with self._thumbnail_lock:
            self._thumbnails[row.tobytes()] = jpeg
            while len(self._thumbnails) > 4096:
                self._thumbnails.pop(next(iter(self._thumbnails)))

    def _take_thumbnails(self, emb: np.ndarray) -> list[bytes]:
        with self._thumbnail_lock:
            return [self._thumbnails.pop(row.tobytes(), b"") for row in emb]

    def change_agent(self, change: Callable[[Agent, LabelMap], Any], reason: str) -> Any:
        """Apply ``change(copy_of_agent, labels)`` under the state lock, swap the copy in and save
        (undo, delete: `edge.device.knowledge_http`); on an error nothing is swapped. Returns
        ``change``'s result."""
        with self._state_lock:
            clone = copy_agent(self._agent)
            result = change(clone, self.labels)
            self._agent = clone
            self._save(reason=reason)
            return result

    def replace_agent(self, build: Callable[[Agent, LabelMap], tuple[Agent, LabelMap, Any]], reason: str) -> Any:
        """Under the state lock, ``build(agent, labels)`` returns a NEW agent and label map (it must
        not change the ones it is given) and a result; both are swapped in and saved (an import over
        HTTP: `edge.device.knowledge_http`). On an error nothing changes. Returns the result."""
        with self._state_lock:
            agent, labels, result = build(self._agent, self.labels)
            if labels.max_classes != self.labels.max_classes:
                raise ConfigError(f"labels: expected max_classes {self.labels.max_classes}, got {labels.max_classes}")
            self._agent = agent
            self.labels.names, self.labels.counts, self.labels.retired = labels.names, labels.counts, labels.retired
            self._save(reason=reason)
            return result

    # --------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, np.ndarray]:
        """The agent's state plus the ``labels.*`` arrays: what a checkpoint holds."""
        with self._state_lock:
            state = self._agent.state_dict()
            state.update(self.labels.state_dict())
            return state

    def _save(self, reason: str, final: bool = False) -> None:
        if self.store is None or not self.options.checkpoint:
            return
        agent = self._agent
        try:
            path = self.store.save(self.state_dict(), agent.config.to_dict(), agent.step_)
        except (EdgeError, OSError) as exc:
            self.events.emit("error", where="checkpoint", message=str(exc), final=final)
            if final:
                self.final_checkpoint_error = " ".join(str(exc).split())
            return
        self.last_checkpoint = {"step": agent.step_, "time": time.time(), "path": str(path)}
        self.events.emit("checkpoint", step=agent.step_, path=str(path), reason=reason, final=final)


def restore_agent(backbone: Any, ckpt: Any) -> tuple[Agent, LabelMap]:
    """An agent and its `LabelMap` from a checkpoint written by the loop or ``edge-agent learn``."""
    from edge.agent import AgentConfig

    agent_state, label_state = split_state(ckpt.state)
    agent = Agent(backbone, AgentConfig.from_dict(ckpt.config))
    agent.load_state_dict(agent_state)
    return agent, LabelMap.from_state(label_state, agent.config.max_classes)
