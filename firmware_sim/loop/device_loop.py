"""The simulated device loop: replay a stream through the real edge agent and measure everything.

The loop does what a device does with each incoming batch: embed the frames once with the frozen
backbone (timed), hand the embeddings to the agent's strategy (timed), and, every ``eval_every``
batches, evaluate on a fixed test set. Because the backbone is frozen, the test-set embeddings are
computed once per backbone and cached on disk (`EmbeddingCache`), and the training embeddings are
computed once per stream and shared by every strategy compared on it.

Example:
    >>> from firmware_sim.loop.device_loop import SimOptions, embed_stream, run_agent  # doctest: +SKIP
    >>> embedded = embed_stream(stream, backbone, cache)                         # doctest: +SKIP
    >>> result = run_agent("replay", AgentConfig(strategy="replay"), embedded, backbone)  # doctest: +SKIP
    >>> result["final_accuracy"]                                                 # doctest: +SKIP
    0.62
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from edge.atomic import atomic_write
from edge.agent import Agent, AgentConfig
from edge.checkpoint import CheckpointStore
from edge.runtimes import Backbone
from firmware_sim.measure.metrics import (
    AccuracyMatrix,
    LatencyRecorder,
    RssSampler,
    Timer,
    average_accuracy,
    confusion_matrix,
    per_class_accuracy,
)

log = logging.getLogger(__name__)

EMBED_CHUNK = 256  # frames per backbone call when embedding a test set


class BatchLike(Protocol):
    """One training batch: labels known up front, frames read on demand."""

    labels: np.ndarray

    def images(self) -> np.ndarray: ...


@dataclass
class SimStream:
    """A stream as the simulator sees it: ordered training batches and a fixed test set.

    ``test_frames(positions)`` reads the test frames at positions ``0..len(test_labels)-1``, so a
    large test set (the real CORe50's is 2.2 GB at 128 px) is read a chunk at a time.
    ``identity`` names the data exactly (source, scenario, run, test subset, image size); it is part
    of the embedding cache key together with the backbone's fingerprint.
    """

    name: str
    train_batches: Sequence[BatchLike]
    test_labels: np.ndarray
    test_frames: Callable[[np.ndarray], np.ndarray]
    n_classes: int
    identity: str
    description: str = ""
    class_names: list[str] | None = None

    def test_images(self) -> np.ndarray:
        """The whole test set's frames (``test_frames`` reads any subset, in chunks if need be)."""
        return self.test_frames(np.arange(len(self.test_labels)))

    @property
    def n_train_frames(self) -> int:
        return int(sum(len(b.labels) for b in self.train_batches))


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

    stream: SimStream
    train: list[np.ndarray]
    test: np.ndarray
    embed_latency: LatencyRecorder
    test_from_cache: bool
    backbone_info: dict[str, Any] = field(default_factory=dict)


class EmbeddingCache:
    """Test-set embeddings on disk, keyed by backbone fingerprint, runtime, precision and data identity.

    Files are ``.npy`` written atomically (temp file + rename); a corrupt entry is recomputed.
    """

    def __init__(self, directory: str | os.PathLike[str] | None) -> None:
        self.directory = Path(directory) if directory is not None else None

    @staticmethod
    def key(backbone: Backbone, identity: str) -> str:
        info = backbone.info
        text = f"{backbone.manifest.fingerprint}|{info.runtime}|{info.precision}|{identity}"
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]

    def get(self, key: str, expected_rows: int, dim: int) -> np.ndarray | None:
        if self.directory is None:
            return None
        path = self.directory / f"{key}.npy"
        if not path.is_file():
            return None
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable embedding cache entry %s (%s)", path, exc)
            return None
        if arr.shape != (expected_rows, dim) or arr.dtype != np.float32 or not np.isfinite(arr).all():
            log.warning("ignoring embedding cache entry %s: expected float32 %s, got %s %s",
                        path, (expected_rows, dim), arr.dtype, arr.shape)
            return None
        return arr

    def put(self, key: str, embeddings: np.ndarray) -> None:
        if self.directory is None:
            return
        atomic_write(self.directory / f"{key}.npy",
                     lambda handle: np.save(handle, embeddings.astype(np.float32), allow_pickle=False))


def default_cache_dir() -> Path:
    """``$EDGE_SIM_CACHE``, else ``$XDG_CACHE_HOME/edge-continual``, else ``~/.cache/edge-continual``."""
    if os.environ.get("EDGE_SIM_CACHE"):
        return Path(os.environ["EDGE_SIM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edge-continual"


def _progress(iterable: Any, total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True)


def embed_stream(stream: SimStream, backbone: Backbone, cache: EmbeddingCache | None = None,
                 progress: bool = True) -> EmbeddedStream:
    """Embed every training batch once (timed, as on the device) and the test set (cached)."""
    cache = cache or EmbeddingCache(None)
    dim = backbone.embedding_size
    key = EmbeddingCache.key(backbone, stream.identity)
    test = cache.get(key, len(stream.test_labels), dim)
    from_cache = test is not None
    if test is None:
        n_test = len(stream.test_labels)
        chunks = []
        for start in range(0, n_test, EMBED_CHUNK):
            positions = np.arange(start, min(start + EMBED_CHUNK, n_test))
            frames = stream.test_frames(positions)
            if len(frames) != len(positions):
                raise ValueError(f"test frames {start}..{positions[-1]}: expected {len(positions)} frames "
                                 f"(one per label), got {len(frames)}")
            chunks.append(backbone.embed(frames))
        test = np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)
        cache.put(key, test)

    latency = LatencyRecorder()
    train = []
    for batch in _progress(stream.train_batches, len(stream.train_batches), "embed", progress):
        frames = batch.images()
        started = time.perf_counter()
        emb = backbone.embed(frames)
        latency.update(time.perf_counter() - started, frames=len(frames))
        train.append(emb)
    info = backbone.info
    entry = next((f for f in backbone.manifest.files if Path(f.path).name == Path(info.file).name), None)
    return EmbeddedStream(
        stream=stream, train=train, test=test, embed_latency=latency, test_from_cache=from_cache,
        backbone_info={
            "name": backbone.manifest.name,
            "fingerprint": backbone.manifest.fingerprint,
            "file": Path(info.file).name,
            "file_sha256": entry.sha256 if entry is not None else None,
            "runtime": info.runtime,
            "precision": info.precision,
            "providers": list(info.providers),
            "threads": info.threads,
        },
    )


def run_agent(label: str, config: AgentConfig, embedded: EmbeddedStream, backbone: Backbone | None = None,
              options: SimOptions = SimOptions()) -> dict[str, Any]:
    """Replay ``embedded`` through a fresh agent built from ``config``; return its measurements.

    With ``backbone`` given, also times end-to-end single-frame ``predict_many`` (preprocess +
    embed + head) on up to ``options.latency_frames`` test frames.
    """
    stream = embedded.stream
    manifest = backbone.manifest if backbone is not None else None
    agent = Agent(None, config, embedding_size=embedded.test.shape[1],
                  embedding_mean=None if manifest is None else manifest.embedding_mean,
                  embedding_std=None if manifest is None else manifest.embedding_std)
    n_groups = max(stream.n_classes, config.max_classes)
    matrix = AccuracyMatrix(n_groups)
    train_timer = Timer()
    rss = RssSampler()
    rss.sample()
    curve: list[dict[str, Any]] = []
    frames_seen = 0
    trained_since_eval: set[int] = set()
    n_batches = len(embedded.train)
    if n_batches == 0:
        raise ValueError(f"stream {stream.name!r}: expected at least one training batch, got none")
    test_y = stream.test_labels
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
            row = per_class_accuracy(test_y, pred, n_groups)
            matrix.update(row, seen_groups=sorted(trained_since_eval))
            trained_since_eval.clear()
            curve.append({"step": len(curve), "batch_index": i, "frames_seen": frames_seen,
                          "accuracy": float(np.mean(pred == test_y))})
        rss.sample()
    loop_seconds = time.perf_counter() - started

    final_pred = pred  # the loop always evaluates after the last batch
    accs = [c["accuracy"] for c in curve]
    acc_result = matrix.result()
    memory = agent.memory_bytes()
    with tempfile.TemporaryDirectory(prefix="edge-sim-state-") as tmp:
        fingerprint = manifest.fingerprint if manifest is not None else "embeddings-only"
        store = CheckpointStore(tmp, fingerprint)
        save_timer = Timer()
        with save_timer:
            path = store.save(agent.state_dict(), config.to_dict(), agent.step_)
        state_bytes = Path(path).stat().st_size

    latency = LatencyRecorder()
    if backbone is not None and options.latency_frames > 0 and len(test_y):
        deployed = Agent(backbone, config)
        deployed.load_state_dict(agent.state_dict())
        rng = np.random.default_rng(0)
        pick = np.sort(rng.choice(len(test_y), min(options.latency_frames, len(test_y)), replace=False))
        frames = stream.test_frames(pick)
        deployed.predict_many(frames[:1])  # warm-up: first call allocates the interpreter
        for frame in frames:
            with latency.time(frames=1):
                deployed.predict_many(frame[None])
    rss.sample()

    per_class = per_class_accuracy(test_y, final_pred, n_groups)[: stream.n_classes]
    train_ms = np.asarray(train_timer.seconds, float) * 1000
    return {
        "label": label,
        "strategy": config.strategy,
        "config": config.to_dict(),
        "n_batches": n_batches,
        "n_train_frames": frames_seen,
        "n_test_frames": int(len(test_y)),
        "curve": curve,
        "final_accuracy": float(np.mean(final_pred == test_y)) if len(test_y) else float("nan"),
        "average_accuracy": average_accuracy(accs) if accs else float("nan"),
        "forgetting_mean": acc_result["mean_forgetting"],
        "forgetting_per_class": acc_result["forgetting"][: stream.n_classes],
        "per_class_accuracy": per_class,
        "confusion_matrix": confusion_matrix(test_y, final_pred, stream.n_classes),
        "train_ms_per_batch": _stats(train_ms),
        "train_seconds_total": float(train_ms.sum() / 1000),
        "loop_seconds": loop_seconds,
        "inference": {**latency.result(), "frames_timed": latency.n_frames} if latency.n_frames else None,
        "memory": {
            **rss.result(),
            "head_bytes": memory["head"],
            "replay_bytes": memory["buffer"],
            "strategy_bytes": memory["strategy"],
            "learned_state_bytes": memory["total"],
            "state_bytes_on_disk": state_bytes,
            "checkpoint_save_ms": save_timer.total * 1000,
        },
        "classes_seen": [int(c) for c in agent.classes_seen()],
    }


def _stats(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {"mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan")}
    return {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
            "max": float(values.max()), "p95": float(np.percentile(values, 95))}


def embedding_summary(embedded: EmbeddedStream) -> dict[str, Any]:
    """Per-frame embedding time of the training stream, as the device would spend it."""
    result = embedded.embed_latency.result()
    return {**result, "frames": embedded.embed_latency.n_frames, "test_from_cache": embedded.test_from_cache}
