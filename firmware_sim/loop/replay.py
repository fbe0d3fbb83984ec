"""The simulated device loop: replay a stream through the real edge agent and measure everything.

The loop does what a device does with each incoming batch: embed the frames once with the frozen
backbone (timed), hand the embeddings to the agent's strategy (timed), and, every ``eval_every``
batches, evaluate on a fixed test set. Because the backbone is frozen, the test-set embeddings are
computed once per backbone and cached on disk (:mod:`firmware_sim.cache`), and the training
embeddings are computed once per stream and shared by every strategy compared on it.

Example:
    >>> from firmware_sim.loop.replay import embed_stream, run_agent           # doctest: +SKIP
    >>> embedded = embed_stream(stream, backbone, cache)                         # doctest: +SKIP
    >>> result = run_agent("replay", AgentConfig(strategy="replay"), embedded, backbone)  # doctest: +SKIP
    >>> result.final_accuracy                                                    # doctest: +SKIP
    0.62
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, TypeVar

import numpy as np

from edge.agent import Agent, AgentConfig
from edge.checkpoint import CheckpointStore
from edge.runtimes import Backbone
from firmware_sim.cache import EMBED_CHUNK, EmbeddingCache, embed_test_set
from firmware_sim.data.stream import Stream
from firmware_sim.loop.progress import progress_iter
from firmware_sim.loop.result import CurvePoint, MemoryUsage, RunResult
from firmware_sim.measure.metrics import (
    AccuracyMatrix,
    LatencyRecorder,
    RssSampler,
    Timer,
    average_accuracy,
    confusion_matrix,
    sample_std,
    per_class_accuracy,
)

log = logging.getLogger(__name__)

__all__ = ["EmbeddedStream", "SimOptions", "embed_stream", "embedding_summary", "run_agent"]

T = TypeVar("T")


@dataclass(frozen=True)
class SimOptions:
    """How the loop runs: evaluation cadence, latency sample, progress display."""

    eval_every: int = 1
    latency_frames: int = 100
    progress: bool = True

    def __post_init__(self) -> None:
        if self.eval_every < 1:
            raise ValueError(f"eval_every: expected >= 1 batch, got {self.eval_every}")
        if self.latency_frames < 0:
            raise ValueError(f"latency_frames: expected >= 0, got {self.latency_frames}")


@dataclass
class EmbeddedStream:
    """The stream after the frozen backbone: one embedding array per training batch, plus the test set."""

    stream: Stream
    train: list[np.ndarray]
    test: np.ndarray
    embed_latency: LatencyRecorder
    test_from_cache: bool
    backbone_info: dict[str, Any] = field(default_factory=dict)


def _progress(iterable: Iterable[T], total: int, desc: str, enabled: bool) -> Iterable[T]:
    """A tqdm bar on a terminal, plain lines every few seconds otherwise (`firmware_sim.loop.progress`)."""
    return progress_iter(iterable, total, desc, enabled=enabled) if enabled else iterable


def _backbone_info(backbone: Backbone) -> dict[str, Any]:
    info = backbone.info
    entry = next((f for f in backbone.manifest.files if Path(f.path).name == Path(info.file).name), None)
    return {
        "name": backbone.manifest.name,
        "fingerprint": backbone.manifest.fingerprint,
        "file": Path(info.file).name,
        "file_sha256": entry.sha256 if entry is not None else None,
        "runtime": info.runtime,
        "precision": info.precision,
        "providers": list(info.providers),
        "threads": info.threads,
    }


def embed_stream(stream: Stream, backbone: Backbone, cache: EmbeddingCache | None = None,
                 progress: bool = True) -> EmbeddedStream:
    """Embed every training batch once (timed, as on the device) and the test set (cached)."""
    test, from_cache = embed_test_set(stream, backbone, cache or EmbeddingCache(None))
    latency = LatencyRecorder()
    train = []
    for batch in _progress(stream.train_batches, len(stream.train_batches), "embed", progress):
        # read and embed EMBED_CHUNK frames at a time: a 6,000-frame batch of 224-px frames would
        # otherwise hold ~900 MB of pixels (and the runtime's copies) at once
        chunks = []
        for start in range(0, len(batch), EMBED_CHUNK):
            frames = batch.images_at(np.arange(start, min(start + EMBED_CHUNK, len(batch))))
            started = time.perf_counter()
            chunks.append(backbone.embed(frames))
            latency.update(time.perf_counter() - started, frames=len(frames))
        train.append(np.concatenate(chunks) if chunks else np.zeros((0, backbone.embedding_size), np.float32))
    return EmbeddedStream(stream=stream, train=train, test=test, embed_latency=latency,
                          test_from_cache=from_cache, backbone_info=_backbone_info(backbone))


@dataclass
class _Replay:
    """What the training loop leaves behind: the agent, its evaluations and timings."""

    agent: Agent
    matrix: AccuracyMatrix
    curve: list[CurvePoint]
    last_prediction: np.ndarray
    train_timer: Timer
    rss: RssSampler
    rss_curve: list[dict[str, int]]
    loop_seconds: float


def _new_agent(config: AgentConfig, embedded: EmbeddedStream, backbone: Backbone | None) -> Agent:
    manifest = backbone.manifest if backbone is not None else None
    return Agent(None, config, embedding_size=embedded.test.shape[1],
                 embedding_mean=None if manifest is None else manifest.embedding_mean,
                 embedding_std=None if manifest is None else manifest.embedding_std)


def _replay(label: str, agent: Agent, embedded: EmbeddedStream, n_groups: int, options: SimOptions) -> _Replay:
    """Train on every batch in order; evaluate every ``eval_every`` batches and after the last."""
    stream = embedded.stream
    test_y = stream.test.labels
    n_batches = len(embedded.train)
    matrix = AccuracyMatrix(n_groups)
    train_timer = Timer()
    rss = RssSampler()
    rss_curve = [{"frames_seen": 0, "rss_bytes": rss.sample()}]
    curve: list[CurvePoint] = []
    frames_seen = 0
    trained_since_eval: set[int] = set()
    pred = np.zeros(0, np.int64)
    started = time.perf_counter()
    batches = zip(embedded.train, stream.train_batches)
    for i, (emb, batch) in enumerate(_progress(batches, n_batches, label, options.progress)):
        labels = np.asarray(batch.labels)
        with train_timer:
            agent.learn_embeddings(emb, labels)
        frames_seen += len(labels)
        trained_since_eval.update(int(v) for v in np.unique(labels))
        if (i + 1) % options.eval_every == 0 or i == n_batches - 1:
            pred = agent.predict_embeddings(embedded.test)
            matrix.update(per_class_accuracy(test_y, pred, n_groups), seen_groups=sorted(trained_since_eval))
            trained_since_eval.clear()
            curve.append(CurvePoint(step=len(curve), batch_index=i, frames_seen=frames_seen,
                                    accuracy=float(np.mean(pred == test_y))))
        rss_curve.append({"frames_seen": frames_seen, "rss_bytes": rss.sample()})
    return _Replay(agent, matrix, curve, pred, train_timer, rss, rss_curve, time.perf_counter() - started)


def _save_state(agent: Agent, config: AgentConfig, backbone: Backbone | None) -> tuple[int, float]:
    """Checkpoint the agent as a device would (to a temporary folder): (bytes on disk, save ms)."""
    fingerprint = backbone.manifest.fingerprint if backbone is not None else "embeddings-only"
    with tempfile.TemporaryDirectory(prefix="edge-sim-state-") as tmp:
        store = CheckpointStore(tmp, fingerprint)
        save_timer = Timer()
        with save_timer:
            path = store.save(agent.state_dict(), config.to_dict(), agent.step_)
        return Path(path).stat().st_size, save_timer.total * 1000


def _predict_latency(agent: Agent, config: AgentConfig, stream: Stream, backbone: Backbone | None,
                     n_frames: int) -> dict[str, Any] | None:
    """Time end-to-end single-frame ``answer_many`` (the device's answer: probabilities, novelty, the
    "unknown" rule) of a deployed copy on up to ``n_frames`` test frames."""
    if backbone is None or n_frames <= 0 or not len(stream.test):
        return None
    latency = LatencyRecorder()
    deployed = Agent(backbone, config)
    deployed.load_state_dict(agent.state_dict())
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(len(stream.test), min(n_frames, len(stream.test)), replace=False))
    frames = stream.test.images_at(pick)
    deployed.answer_many(frames[:1])  # warm-up: first call allocates the interpreter
    for frame in frames:
        with latency.time(frames=1):
            deployed.answer_many(frame[None])
    if not latency.n_frames:
        return None
    per_frame = [round(float(v) * 1000.0, 4) for v in latency.per_frame_seconds()]  # for the histogram
    return {**latency.result(), "frames_timed": latency.n_frames, "per_frame_ms": per_frame}


def run_agent(label: str, config: AgentConfig, embedded: EmbeddedStream, backbone: Backbone | None = None,
              options: SimOptions = SimOptions()) -> RunResult:
    """Replay ``embedded`` through a fresh agent built from ``config``; return its measurements.

    With ``backbone`` given, also times end-to-end single-frame ``answer_many`` (preprocess +
    embed + head + novelty) on up to ``options.latency_frames`` test frames.
    """
    stream = embedded.stream
    if not embedded.train:
        raise ValueError(f"stream {stream.name!r}: expected at least one training batch, got none")
    n_groups = max(stream.n_classes, config.max_classes)
    done = _replay(label, _new_agent(config, embedded, backbone), embedded, n_groups, options)
    agent = done.agent
    state_bytes, save_ms = _save_state(agent, config, backbone)
    inference = _predict_latency(agent, config, stream, backbone, options.latency_frames)
    done.rss.sample()

    test_y, final_pred = stream.test.labels, done.last_prediction  # the loop always evaluates after the last batch
    forgetting = done.matrix.result()
    memory = agent.memory_bytes()
    train_ms = np.asarray(done.train_timer.seconds, float) * 1000
    accs = [p.accuracy for p in done.curve]
    return RunResult(
        label=label,
        strategy=config.strategy,
        config=config.to_dict(),
        n_batches=len(embedded.train),
        n_train_frames=done.curve[-1].frames_seen,
        n_test_frames=int(len(test_y)),
        curve=done.curve,
        final_accuracy=float(np.mean(final_pred == test_y)) if len(test_y) else float("nan"),
        average_accuracy=average_accuracy(accs) if accs else float("nan"),
        forgetting_mean=forgetting["mean_forgetting"],
        forgetting_per_class=forgetting["forgetting"][: stream.n_classes],
        per_class_accuracy=per_class_accuracy(test_y, final_pred, n_groups)[: stream.n_classes],
        confusion_matrix=confusion_matrix(test_y, final_pred, stream.n_classes),
        train_ms_per_batch=_stats(train_ms),
        train_seconds_total=float(train_ms.sum() / 1000),
        loop_seconds=done.loop_seconds,
        inference=inference,
        memory=MemoryUsage(rss=done.rss.result(), head_bytes=memory["head"], replay_bytes=memory["buffer"],
                           strategy_bytes=memory["strategy"], learned_state_bytes=memory["total"],
                           state_bytes_on_disk=state_bytes, checkpoint_save_ms=save_ms),
        classes_seen=[int(c) for c in agent.classes_seen()],
        rss_curve=done.rss_curve,
    )


def _stats(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {"mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan")}
    return {"mean": float(values.mean()), "std": sample_std(values), "min": float(values.min()),
            "max": float(values.max()), "p95": float(np.percentile(values, 95))}


def embedding_summary(embedded: EmbeddedStream) -> dict[str, Any]:
    """Per-frame embedding time of the training stream, as the device would spend it."""
    result = embedded.embed_latency.result()
    return {**result, "frames": embedded.embed_latency.n_frames, "test_from_cache": embedded.test_from_cache}
