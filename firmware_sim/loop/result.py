"""What one replay of a stream through one agent configuration measured: :class:`RunResult`.

``RunResult.to_dict()`` is the entry of ``report.json``'s ``configs.<label>.runs`` list; its keys
are the report's and must not change (readers of old reports depend on them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["CurvePoint", "MemoryUsage", "RunResult"]


@dataclass(frozen=True)
class CurvePoint:
    """Test accuracy after training batch ``batch_index`` (``step``-th evaluation)."""

    step: int
    batch_index: int
    frames_seen: int
    accuracy: float

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "batch_index": self.batch_index, "frames_seen": self.frames_seen,
                "accuracy": self.accuracy}


@dataclass(frozen=True)
class MemoryUsage:
    """Process RSS over the run (``rss`` as `RssSampler.result` gives it) and the agent's state sizes."""

    rss: dict[str, Any]
    head_bytes: int
    replay_bytes: int
    strategy_bytes: int
    learned_state_bytes: int
    state_bytes_on_disk: int
    checkpoint_save_ms: float

    @property
    def rss_peak_bytes(self) -> int:
        """The process's true peak: the kernel's high-water mark (ru_maxrss, which also covers
        embedding before the measured loop) where known, never below the sampled peak."""
        os_peak = self.rss.get("rss_peak_os_bytes")
        return int(max(self.rss["rss_peak_sampled_bytes"], os_peak or 0))

    def to_dict(self) -> dict[str, Any]:
        return {**self.rss, "head_bytes": self.head_bytes, "replay_bytes": self.replay_bytes,
                "strategy_bytes": self.strategy_bytes, "learned_state_bytes": self.learned_state_bytes,
                "state_bytes_on_disk": self.state_bytes_on_disk, "checkpoint_save_ms": self.checkpoint_save_ms}


@dataclass
class RunResult:
    """One configuration over one run of a stream: curve, final figures, timings and memory.

    ``inference`` (end-to-end single-frame predict latency, `LatencyRecorder.result` plus
    ``frames_timed`` and every frame's ``per_frame_ms``) is None when no backbone was given or no
    frame was timed. ``run`` is set by the experiment that replays several runs; ``test_split``
    (e.g. ``"held-out 20 % stratified, seed 0"``) says where the test set came from. ``rss_curve`` is
    the process RSS before the first batch and after every batch (``{"frames_seen", "rss_bytes"}``).
    """

    label: str
    strategy: str
    config: dict[str, Any]
    n_batches: int
    n_train_frames: int
    n_test_frames: int
    curve: list[CurvePoint]
    final_accuracy: float
    average_accuracy: float
    forgetting_mean: float
    forgetting_per_class: np.ndarray
    per_class_accuracy: np.ndarray
    confusion_matrix: np.ndarray
    train_ms_per_batch: dict[str, float]
    train_seconds_total: float
    loop_seconds: float
    inference: dict[str, Any] | None
    memory: MemoryUsage
    classes_seen: list[int]
    run: int | None = None
    test_split: str | None = None
    rss_curve: list[dict[str, int]] = field(default_factory=list)

    @property
    def inference_p50_ms(self) -> float:
        return self.inference_ms("p50_ms")

    def inference_ms(self, key: str) -> float:
        """``p50_ms`` / ``p95_ms`` / ``p99_ms`` / ``mean_ms`` of the predict latency (NaN when not timed)."""
        return float("nan") if self.inference is None else float(self.inference.get(key, float("nan")))

    def to_dict(self) -> dict[str, Any]:
        """The ``report.json`` form (arrays stay arrays; `write_report` turns them into lists)."""
        out: dict[str, Any] = {
            "label": self.label,
            "strategy": self.strategy,
            "config": self.config,
            "n_batches": self.n_batches,
            "n_train_frames": self.n_train_frames,
            "n_test_frames": self.n_test_frames,
            "curve": [p.to_dict() for p in self.curve],
            "final_accuracy": self.final_accuracy,
            "average_accuracy": self.average_accuracy,
            "forgetting_mean": self.forgetting_mean,
            "forgetting_per_class": self.forgetting_per_class,
            "per_class_accuracy": self.per_class_accuracy,
            "confusion_matrix": self.confusion_matrix,
            "train_ms_per_batch": self.train_ms_per_batch,
            "train_seconds_total": self.train_seconds_total,
            "loop_seconds": self.loop_seconds,
            "inference": self.inference,
            "memory": self.memory.to_dict(),
            "classes_seen": self.classes_seen,
            "rss_curve": self.rss_curve,
        }
        if self.run is not None:
            out["run"] = self.run
        if self.test_split is not None:
            out["test_split"] = self.test_split
        return out
