"""Metrics computed from what happened during a run: accuracy, forgetting, latency, memory, time.

Two kinds of objects, in the Avalanche split (metrics are separate from the stream and the learner):

- pure functions over arrays (``accuracy``, ``per_class_accuracy``, ``confusion_matrix``,
  ``final_accuracy``, ``average_accuracy``, ``forgetting``, ``summary_stats``, ...);
- small standalone recorders with ``update`` / ``result`` / ``reset`` (:class:`AccuracyMatrix`,
  :class:`LatencyRecorder`, :class:`RssSampler`, :class:`Timer`) that the simulator loop feeds.

Accuracy-matrix convention: ``acc[i, j]`` is the accuracy on evaluation group ``j`` (a class, or an
experience's test subset) measured after training step ``i``; rows are in time order. A group that
has not been trained yet at step ``i`` is marked either with ``NaN`` in ``acc`` or with ``False`` in a
boolean ``seen`` matrix of the same shape; such entries never count as "earlier accuracy" for
forgetting.

Example:
    >>> acc = np.array([[0.9, np.nan], [0.5, 0.8]])   # group 1 is learned at step 1
    >>> forgetting(acc).round(2).tolist()              # group 0 dropped 0.4; group 1 has no earlier row
    [0.4, nan]
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "AccuracyMatrix",
    "LatencyRecorder",
    "RssSampler",
    "Timer",
    "accuracy",
    "average_accuracy",
    "confusion_matrix",
    "final_accuracy",
    "forgetting",
    "mean_forgetting",
    "mean_std",
    "per_class_accuracy",
    "sample_std",
    "summary_stats",
]

# --------------------------------------------------------------------------- label checks


def _labels(y_true: Any, y_pred: Any, n_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true)
    p = np.asarray(y_pred)
    if t.ndim != 1 or p.ndim != 1:
        raise ValueError(f"y_true, y_pred: expected 1-D label arrays, got shapes {t.shape} and {p.shape}")
    if t.shape != p.shape:
        raise ValueError(f"y_pred: expected {t.shape[0]} predictions (one per label), got {p.shape[0]}")
    for name, a in (("y_true", t), ("y_pred", p)):
        if a.size and not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name}: expected integer labels, got dtype {a.dtype}")
    t = t.astype(np.int64, copy=False)
    p = p.astype(np.int64, copy=False)
    if n_classes is not None:
        if n_classes < 1:
            raise ValueError(f"n_classes: expected >= 1, got {n_classes}")
        for name, a in (("y_true", t), ("y_pred", p)):
            if a.size and (a.min() < 0 or a.max() >= n_classes):
                raise ValueError(f"{name}: expected labels in [0, {n_classes - 1}], "
                                 f"got range [{int(a.min())}, {int(a.max())}]")
    return t, p


# --------------------------------------------------------------------------- accuracy


def accuracy(y_true: Any, y_pred: Any) -> float:
    """Fraction of correct predictions; ``NaN`` for an empty set.

    Example:
        >>> accuracy([0, 1, 2, 2], [0, 1, 1, 2])
        0.75
    """
    t, p = _labels(y_true, y_pred)
    return float(np.mean(t == p)) if t.size else math.nan


def confusion_matrix(y_true: Any, y_pred: Any, n_classes: int) -> np.ndarray:
    """Counts ``m[t, p]`` of samples of true class ``t`` predicted as ``p``; int64 (n_classes, n_classes).

    Example:
        >>> confusion_matrix([0, 0, 1, 2], [0, 1, 1, 2], 3).tolist()
        [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    """
    t, p = _labels(y_true, y_pred, n_classes)
    flat = np.bincount(t * n_classes + p, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes).astype(np.int64)


def per_class_accuracy(y_true: Any, y_pred: Any, n_classes: int) -> np.ndarray:
    """Recall of each class (correct / present); ``NaN`` for classes absent from ``y_true``.

    Example:
        >>> per_class_accuracy([0, 0, 1], [0, 1, 1], 3).tolist()
        [0.5, 1.0, nan]
    """
    t, p = _labels(y_true, y_pred, n_classes)
    support = np.bincount(t, minlength=n_classes).astype(np.float64)
    correct = np.bincount(t[t == p], minlength=n_classes).astype(np.float64)
    out = np.full(n_classes, np.nan)
    np.divide(correct, support, out=out, where=support > 0)
    return out


def _curve(curve: Iterable[float]) -> np.ndarray:
    c = np.asarray(list(curve) if not isinstance(curve, np.ndarray) else curve, dtype=np.float64)
    if c.ndim != 1:
        raise ValueError(f"curve: expected a 1-D sequence of accuracies, got shape {c.shape}")
    if c.size == 0:
        raise ValueError("curve: expected at least one evaluation point, got none")
    return c


def final_accuracy(curve: Iterable[float]) -> float:
    """The last point of an accuracy curve (overall test accuracy after the last training step).

    Example:
        >>> final_accuracy([0.2, 0.5, 0.6])
        0.6
    """
    return float(_curve(curve)[-1])


def average_accuracy(curve: Iterable[float]) -> float:
    """Mean of the overall test accuracy over all evaluation points.

    This is CLVision 2020's "average validation accuracy over time": every point of the curve (one
    per evaluation, usually one per training batch) weighs the same. ``NaN`` points are ignored.

    Example:
        >>> round(average_accuracy([0.2, 0.5, 0.8]), 6)
        0.5
    """
    c = _curve(curve)
    return float(np.nanmean(c)) if np.isfinite(c).any() else math.nan


# --------------------------------------------------------------------------- forgetting


def forgetting(acc_matrix: Any, seen: Any | None = None) -> np.ndarray:
    """Per-group forgetting: the best accuracy before the final row minus the final accuracy.

    ``f[j] = max_{i < T-1, j seen at i} acc[i, j] - acc[T-1, j]`` for ``T`` rows. Groups never learned
    before the final row have no earlier accuracy and get ``NaN`` (they are excluded from
    :func:`mean_forgetting`). "Seen" means ``acc[i, j]`` is not ``NaN`` and, when ``seen`` (a boolean
    matrix like `AccuracyMatrix.seen`) is given, ``seen[i, j]`` is ``True``: pass ``seen``
    when the matrix holds accuracies for groups that were evaluated but not trained yet. A group whose
    final accuracy is ``NaN`` also gets ``NaN``. Values lie in [-1, 1] for accuracies in [0, 1];
    negative values mean the group improved (backward transfer).

    Example:
        >>> acc = np.array([[0.8, 0.0], [0.6, 0.9], [0.7, 0.5]])
        >>> seen = np.array([[True, False], [True, True], [True, True]])  # group 1 trained at step 1
        >>> forgetting(acc, seen).round(3).tolist()
        [0.1, 0.4]
    """
    acc = np.asarray(acc_matrix, dtype=np.float64)
    if acc.ndim != 2:
        raise ValueError(f"acc_matrix: expected 2-D (steps, groups), got shape {acc.shape}")
    valid = ~np.isnan(acc)
    if seen is not None:
        s = np.asarray(seen)
        if s.shape != acc.shape or s.dtype != bool:
            raise ValueError(f"seen: expected a boolean array of shape {acc.shape}, got {s.dtype} {s.shape}")
        valid &= s
    n_steps, n_groups = acc.shape
    out = np.full(n_groups, np.nan)
    if n_steps < 2:
        return out
    earlier = np.where(valid[:-1], acc[:-1], -np.inf)
    best = earlier.max(axis=0)
    final = acc[-1]
    ok = np.isfinite(best) & ~np.isnan(final)
    out[ok] = best[ok] - final[ok]
    return out


def mean_forgetting(acc_matrix: Any, seen: Any | None = None) -> float:
    """Mean of :func:`forgetting` over the groups that have a value; ``NaN`` when none has.

    Example:
        >>> round(mean_forgetting([[1.0, np.nan], [0.5, 0.8]]), 6)
        0.5
    """
    f = forgetting(acc_matrix, seen)
    return float(np.nanmean(f)) if (~np.isnan(f)).any() else math.nan


class AccuracyMatrix:
    """Collects one row of per-group accuracies (and the seen groups) after each training step.

    Example:
        >>> m = AccuracyMatrix(n_groups=2)
        >>> m.update([0.9, 0.1], seen_groups=[0]); m.update([0.5, 0.8], seen_groups=[1])
        >>> m.result()["forgetting"].round(2).tolist()
        [0.4, nan]
    """

    def __init__(self, n_groups: int) -> None:
        if n_groups < 1:
            raise ValueError(f"n_groups: expected >= 1, got {n_groups}")
        self.n_groups = n_groups
        self.reset()

    def reset(self) -> None:
        self._rows: list[np.ndarray] = []
        self._seen: list[np.ndarray] = []

    def update(self, row: Any, seen_groups: Iterable[int] | None = None) -> None:
        """Append the accuracies after one step; ``seen_groups`` are the groups trained at this step."""
        r = np.asarray(row, dtype=np.float64)
        if r.shape != (self.n_groups,):
            raise ValueError(f"row: expected shape ({self.n_groups},), got {r.shape}")
        s = np.zeros(self.n_groups, dtype=bool) if not self._seen else self._seen[-1].copy()
        if seen_groups is None:
            s |= ~np.isnan(r)
        else:
            g = np.asarray(list(seen_groups), dtype=np.int64)
            if g.size and (g.min() < 0 or g.max() >= self.n_groups):
                raise ValueError(f"seen_groups: expected groups in [0, {self.n_groups - 1}], got {g.tolist()}")
            s[g] = True
        self._rows.append(r)
        self._seen.append(s)

    @property
    def matrix(self) -> np.ndarray:
        return np.array(self._rows).reshape(len(self._rows), self.n_groups)

    @property
    def seen(self) -> np.ndarray:
        return np.array(self._seen, dtype=bool).reshape(len(self._seen), self.n_groups)

    def result(self) -> dict[str, Any]:
        """``{"matrix", "seen", "forgetting" (per group), "mean_forgetting"}``."""
        m, s = self.matrix, self.seen
        return {"matrix": m, "seen": s, "forgetting": forgetting(m, s), "mean_forgetting": mean_forgetting(m, s)}


# --------------------------------------------------------------------------- latency and time


class LatencyRecorder:
    """Per-frame inference latency: durations in seconds, each for a call that handled ``frames`` frames.

    A call of ``n`` frames that took ``d`` seconds contributes ``n`` frames of latency ``d / n`` each
    (amortised per frame), so percentiles are over frames, not calls. Percentiles use
    :func:`numpy.percentile` with its default linear interpolation between order statistics.

    Example:
        >>> rec = LatencyRecorder()
        >>> for ms in range(1, 101): rec.update(ms / 1000)
        >>> rec.percentiles()["p50_ms"], round(rec.fps, 2)
        (50.5, 19.8)
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._seconds: list[float] = []
        self._frames: list[int] = []

    def update(self, seconds: float, frames: int = 1) -> None:
        """Record one call that took ``seconds`` for ``frames`` frames."""
        if not (isinstance(frames, (int, np.integer)) and frames >= 1):
            raise ValueError(f"frames: expected an integer >= 1, got {frames!r}")
        s = float(seconds)
        if not (math.isfinite(s) and s >= 0):
            raise ValueError(f"seconds: expected a finite duration >= 0, got {seconds!r}")
        self._seconds.append(s)
        self._frames.append(int(frames))

    def time(self, frames: int = 1) -> "_Stopwatch":
        """Context manager that records the duration of its block for ``frames`` frames."""
        return _Stopwatch(lambda d: self.update(d, frames))

    @property
    def n_frames(self) -> int:
        return int(sum(self._frames))

    @property
    def total_seconds(self) -> float:
        return float(sum(self._seconds))

    @property
    def fps(self) -> float:
        """Frames per second: total frames / total recorded seconds (``NaN`` if nothing recorded)."""
        t = self.total_seconds
        return self.n_frames / t if t > 0 else math.nan

    def per_frame_seconds(self) -> np.ndarray:
        """Latency of every frame (a call's duration divided by its frame count, repeated)."""
        s = np.asarray(self._seconds, dtype=np.float64)
        f = np.asarray(self._frames, dtype=np.int64)
        return np.repeat(s / np.maximum(f, 1), f) if s.size else s

    def percentiles(self, qs: Sequence[float] = (50, 95, 99)) -> dict[str, float]:
        """``{"p50_ms": ..., "p95_ms": ..., "p99_ms": ...}`` (linear interpolation); NaN when empty."""
        per = self.per_frame_seconds()
        if per.size == 0:
            return {f"p{q:g}_ms": math.nan for q in qs}
        vals = np.percentile(per * 1000.0, list(qs))
        return {f"p{q:g}_ms": float(v) for q, v in zip(qs, vals)}

    def result(self) -> dict[str, float]:
        """Percentiles, ``mean_ms`` (per frame), ``fps``, ``frames`` and ``total_s``."""
        out = self.percentiles()
        n = self.n_frames
        out["mean_ms"] = self.total_seconds * 1000.0 / n if n else math.nan
        out["fps"] = self.fps
        out["frames"] = n
        out["total_s"] = self.total_seconds
        return out


class _Stopwatch:
    def __init__(self, sink: Any) -> None:
        self._sink = sink
        self._t0 = 0.0

    def __enter__(self) -> "_Stopwatch":
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:  # a failed call is not a latency sample
            self._sink(time.perf_counter() - self._t0)


class Timer:
    """Durations in seconds of repeated blocks (e.g. one per training batch), via ``perf_counter``.

    Example:
        >>> t = Timer()
        >>> with t: _ = sum(range(1000))
        >>> len(t.seconds), t.result()["n"]
        (1, 1)
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.seconds: list[float] = []
        self._t0: float | None = None

    def update(self, seconds: float) -> None:
        """Record a duration measured elsewhere."""
        self.seconds.append(float(seconds))

    def __enter__(self) -> "Timer":
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if self._t0 is not None and exc_type is None:
            self.seconds.append(time.perf_counter() - self._t0)
        self._t0 = None

    @property
    def total(self) -> float:
        return float(sum(self.seconds))

    def result(self) -> dict[str, float]:
        """:func:`summary_stats` of the durations plus ``total_s``."""
        out = summary_stats(self.seconds)
        out["total_s"] = self.total
        return out


# --------------------------------------------------------------------------- memory


def _ru_maxrss_bytes() -> int | None:
    """The OS's peak resident set size of this process (``getrusage``), or ``None`` where unavailable."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


class RssSampler:
    """Resident set size of this process, sampled by the loop (``sample()``) or by a background thread.

    Keeps running statistics only (count, sum, min, max, last), so memory stays bounded however long
    the run. ``peak_bytes`` is the max of the samples; ``os_peak_bytes`` is the kernel's own high-water
    mark (``ru_maxrss``; Linux and macOS, ``None`` elsewhere), which also covers spikes between
    samples and everything since the process started.

    Example:
        >>> s = RssSampler()
        >>> s.sample() > 0 and s.peak_bytes >= s.average_bytes > 0
        True
        >>> with RssSampler(interval_s=0.01) as bg:
        ...     _ = bytearray(1 << 20)
        >>> bg.count >= 1
        True
    """

    def __init__(self, interval_s: float = 0.05, pid: int | None = None) -> None:
        import psutil  # core dependency; imported here to keep module import NumPy-only

        if not (interval_s > 0 and math.isfinite(interval_s)):
            raise ValueError(f"interval_s: expected a positive number of seconds, got {interval_s!r}")
        self.interval_s = float(interval_s)
        self._process = psutil.Process(pid)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.count = 0
            self._sum = 0
            self._max = 0
            self._min = 0
            self.last_bytes = 0

    def sample(self) -> int:
        """Read the current RSS, record it and return it (bytes)."""
        rss = int(self._process.memory_info().rss)
        with self._lock:
            self.count += 1
            self._sum += rss
            self._max = max(self._max, rss)
            self._min = rss if self.count == 1 else min(self._min, rss)
            self.last_bytes = rss
        return rss

    update = sample  # the metric verb

    @property
    def average_bytes(self) -> float:
        return self._sum / self.count if self.count else math.nan

    @property
    def peak_bytes(self) -> int:
        """Max of the samples taken (0 before the first sample)."""
        return self._max

    @property
    def os_peak_bytes(self) -> int | None:
        return _ru_maxrss_bytes() if self._process.pid == os.getpid() else None

    def result(self) -> dict[str, Any]:
        """``rss_avg_bytes``, ``rss_peak_sampled_bytes``, ``rss_peak_os_bytes`` (ru_maxrss), ``rss_samples``."""
        return {
            "rss_avg_bytes": self.average_bytes,
            "rss_peak_sampled_bytes": self.peak_bytes,
            "rss_peak_os_bytes": self.os_peak_bytes,
            "rss_min_bytes": self._min,
            "rss_samples": self.count,
        }

    # background sampling -------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception:  # the process is gone or psutil failed: stop quietly, keep what we have
                logger.warning("RSS sampling stopped", exc_info=True)
                return
            self._stop.wait(self.interval_s)

    def start(self) -> "RssSampler":
        """Start sampling every ``interval_s`` seconds in a daemon thread (no-op if already running)."""
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="RssSampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the background thread (waits at most a few intervals) and take one last sample."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(1.0, 5 * self.interval_s))
            if self._thread.is_alive():  # pragma: no cover - psutil call hung
                logger.warning("RSS sampler thread did not stop within the timeout")
            self._thread = None
        self.sample()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> "RssSampler":
        self.sample()
        return self.start()

    def __exit__(self, *_: Any) -> None:
        self.stop()


# --------------------------------------------------------------------------- aggregates


def sample_std(values: np.ndarray) -> float:
    """The sample standard deviation (``ddof=1``, Bessel's correction) of ``values``; 0.0 for fewer than 2.

    The one std of the simulator: across runs, across batches and across timed calls alike.

    Example:
        >>> sample_std(np.array([1.0, 2.0, 3.0])), sample_std(np.array([4.0]))
        (1.0, 0.0)
    """
    v = np.asarray(values, dtype=np.float64)
    return float(np.std(v, ddof=1)) if v.size > 1 else 0.0


def summary_stats(values: Iterable[float | None]) -> dict[str, float]:
    """``{"mean", "std", "min", "max", "n"}`` of finite values (NaN/None dropped); NaN stats when empty.

    ``std`` is the sample std (:func:`sample_std`, ``ddof=1``; 0.0 for a single value).

    Example:
        >>> summary_stats([1.0, 2.0, 3.0])
        {'mean': 2.0, 'std': 1.0, 'min': 1.0, 'max': 3.0, 'n': 3}
    """
    v = np.array([np.nan if x is None else float(x) for x in values], dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return {"mean": float(v.mean()), "std": sample_std(v), "min": float(v.min()), "max": float(v.max()),
            "n": int(v.size)}


def mean_std(values: Iterable[float | None]) -> dict[str, float]:
    """``{"mean", "std", "n"}`` of the finite values (None/NaN skipped); NaN mean and std when none.

    ``std`` is the sample std (:func:`sample_std`), 0.0 for a single value.

    Example:
        >>> mean_std([0.5, None, 0.7])
        {'mean': 0.6, 'std': 0.14142135623730948, 'n': 2}
    """
    s = summary_stats(values)
    return {"mean": s["mean"], "std": s["std"], "n": s["n"]}
