"""The simulated teacher: which frames are taught, with which label, in bursts, after a delay.

Within every training batch of the stream (in NICv2-391: ~300 consecutive frames of one object), a
person starts teaching ``delay`` seconds after the batch begins and then teaches bursts of ``burst``
consecutive frames, one every ``burst / share`` frames, so that about ``share`` of the frames are
taught. The label of frame ``i`` is what the person saw ``delay`` seconds earlier (the true label of
frame ``i - delay * fps``): a burst that runs past the end of its batch teaches the next object's
first frames with the previous name, as a late teacher would.

Example:
    >>> labels = np.array([0] * 6 + [1] * 6)
    >>> plan = teach_plan(labels, [0, 6], fps=20, share=0.5, delay_s=0.0, burst=2)
    >>> plan.labels.tolist()
    [0, 0, -1, -1, 0, 0, 1, 1, -1, -1, 1, 1]
    >>> plan.bursts.tolist()
    [0, 0, -1, -1, 1, 1, 2, 2, -1, -1, 3, 3]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["TeachPlan", "teach_plan"]


@dataclass(frozen=True)
class TeachPlan:
    """Per frame: the taught label (-1: not taught) and the burst it belongs to (-1: none)."""

    labels: np.ndarray
    bursts: np.ndarray

    @property
    def n_bursts(self) -> int:
        return int(self.bursts.max()) + 1 if self.bursts.size and self.bursts.max() >= 0 else 0

    @property
    def n_taught(self) -> int:
        return int((self.labels >= 0).sum())


def teach_plan(labels: np.ndarray, batch_starts: Sequence[int], fps: float, share: float, delay_s: float,
               burst: int) -> TeachPlan:
    """The teacher's plan over a stream of ``labels`` whose batches start at ``batch_starts``."""
    y = np.asarray(labels, dtype=np.int64)
    n = y.shape[0]
    if not 0.0 < share <= 1.0:
        raise ValueError(f"label share: expected a fraction in (0, 1], got {share}")
    if burst < 1:
        raise ValueError(f"burst: expected >= 1 frame, got {burst}")
    if delay_s < 0:
        raise ValueError(f"label delay: expected >= 0 seconds, got {delay_s}")
    delay = int(round(delay_s * fps))
    period = max(burst, int(round(burst / share)))
    taught = np.full(n, -1, np.int64)
    ids = np.full(n, -1, np.int64)
    starts = list(batch_starts) + [n]
    burst_id = 0
    for begin, end in zip(starts[:-1], starts[1:]):
        b = begin + delay
        while b < end:
            stop = min(b + burst, n)
            idx = np.arange(b, stop)
            taught[idx] = y[np.maximum(idx - delay, 0)]
            ids[idx] = burst_id
            burst_id += 1
            b += period
    # renumber in frame order (a spill-over overwritten by the next batch's first burst leaves gaps)
    used = ids >= 0
    _, ids[used] = np.unique(ids[used], return_inverse=True)
    return TeachPlan(taught, ids)
