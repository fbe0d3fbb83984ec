"""Open-set rejection: a score per prediction and a threshold calibrated on the agent's own data.

A camera sees objects it was never taught. `OpenSet` keeps, in the agent's standardised embedding
space, exact running per-class sums (count, sum of rows, sum of squared norms), so it knows each
class's mean ``mu_c`` and mean squared distance to it ``s_c`` (unbiased). The score of a row is its
*novelty*::

    r(x) = min_c ||x - mu_c||^2 / s_c        (over the classes learned so far; 0 = a class mean)

The same score serves every strategy (it needs only the embeddings and labels the agent learns
from): for `edge.strategies.NCMStrategy` it is the distance it classifies with, normalised per
class. For the gradient heads it replaces the top probability, which is exactly 1.0 while one
class is known (nothing to compete with) and so cannot reject anything then, which is the first
thing a device is asked to do ("after one class from five images, a black frame is unknown").
SLDA's own Mahalanobis distance would be the natural score for ``slda``; it is not used yet.

Calibration: after every learned batch each of its rows is scored leave-one-out against its own
class (its distance to the mean of the class's OTHER rows, exact from the sums), which is what an
unseen view of a known class looks like; a bounded reservoir of these scores (``capacity``)
gives the threshold at the target false-reject rate (default 5 %: the 95th percentile). A row
scoring above it is answered `UNKNOWN`.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> o = OpenSet(embedding_size=8, max_classes=3)
    >>> o.update(rng.normal(size=(50, 8)), np.zeros(50, np.int64))
    >>> bool(o.is_unknown(np.full((1, 8), 9.0))[0]), bool(o.is_unknown(rng.normal(size=(1, 8)) * 0.3)[0])
    (True, False)
"""

from __future__ import annotations

import numpy as np

from edge.errors import InputError

#: What `edge.agent.Agent.predict_many` answers for a frame it does not recognise.
UNKNOWN = -1
#: Default share of known rows the threshold may reject (the false-reject rate it is calibrated to).
FALSE_REJECT = 0.05


class OpenSet:
    """Running class statistics + a reservoir of calibration scores (see the module docstring).

    Args:
        embedding_size, max_classes: fixed at construction, preallocated.
        capacity: calibration scores kept (reservoir sampling; default 1024, float32).
        false_reject: target false-reject rate of the threshold (default 0.05).
    """

    def __init__(self, embedding_size: int, max_classes: int, capacity: int = 1024,
                 false_reject: float = FALSE_REJECT) -> None:
        self.embedding_size = int(embedding_size)
        self.max_classes = int(max_classes)
        self.capacity = int(capacity)
        self.false_reject = float(false_reject)
        self.count_ = np.zeros(self.max_classes, np.int64)
        self.sum_ = np.zeros((self.max_classes, self.embedding_size), np.float64)
        self.sq_ = np.zeros(self.max_classes, np.float64)
        self.scores_ = np.zeros(self.capacity, np.float32)
        self.n_scores_ = 0          # scores offered so far (the reservoir holds min(n, capacity))
        self._refresh()

    # ---------------------------------------------------------------- statistics
    def _spread(self) -> np.ndarray:
        """Unbiased mean squared distance to the class mean ``(K,)`` (pooled where a class has 1 row)."""
        n = self.count_.astype(np.float64)
        mu = self.sum_ / np.maximum(n, 1)[:, None]
        ss = np.maximum(self.sq_ - n * (mu * mu).sum(1), 0.0)
        per = np.where(n > 1, ss / np.maximum(n - 1, 1), np.nan)
        seen = n > 1
        pooled = ss[seen].sum() / max(float((n[seen] - 1).sum()), 1.0) if seen.any() else 1.0
        per = np.where(np.isnan(per), pooled, per)
        return np.maximum(per, 1e-6 * max(pooled, 1e-12))

    def update(self, z: np.ndarray, labels: np.ndarray) -> None:
        """Add a batch of standardised rows, then offer their leave-one-out scores to the reservoir
        (reservoir slots drawn from a generator keyed by the number of scores offered: no state)."""
        z = np.asarray(z, np.float64)
        labels = np.asarray(labels, np.int64)
        np.add.at(self.sum_, labels, z)
        np.add.at(self.sq_, labels, (z * z).sum(1))
        self.count_ += np.bincount(labels, minlength=self.max_classes)
        n = self.count_[labels].astype(np.float64)
        ok = n > 1
        if not ok.any():
            self._refresh()
            return
        mu = self.sum_[labels] / n[:, None]
        # distance to the mean of the OTHER rows of its class: n / (n - 1) * ||x - mu||
        d2 = ((z - mu) ** 2).sum(1) * (n / np.maximum(n - 1, 1)) ** 2
        loo = (d2 / self._spread()[labels])[ok].astype(np.float32)
        rng = np.random.default_rng([self.n_scores_, 0x05E7])
        for value in loo:
            if self.n_scores_ < self.capacity:
                self.scores_[self.n_scores_] = value
            else:
                j = int(rng.integers(0, self.n_scores_ + 1))
                if j < self.capacity:
                    self.scores_[j] = value
            self.n_scores_ += 1
        self._refresh()

    def _refresh(self) -> None:
        """Recompute what every prediction reads (class means, their squared norms, spreads, the
        threshold) once per change of the statistics, not once per call."""
        seen = np.flatnonzero(self.count_)
        self._mu = self.sum_[seen] / self.count_[seen][:, None]
        self._mu_sq = (self._mu * self._mu).sum(1)[None, :]
        self._spread_seen = self._spread()[seen][None, :] if seen.size else np.zeros((1, 0))
        n = min(self.n_scores_, self.capacity)
        self._threshold = (float("inf") if n < 2
                           else float(np.quantile(self.scores_[:n], 1.0 - self.false_reject)))

    # ------------------------------------------------------------------- scores
    def novelty(self, z: np.ndarray) -> np.ndarray:
        """``r(x)`` per row (float64; +inf before anything was learned)."""
        z = np.asarray(z, np.float64)
        if self._mu.shape[0] == 0:
            return np.full(z.shape[0], np.inf)
        d2 = np.maximum((z * z).sum(1)[:, None] - 2.0 * z @ self._mu.T + self._mu_sq, 0.0)
        return (d2 / self._spread_seen).min(axis=1)

    @property
    def threshold(self) -> float:
        """Novelty above which a row is unknown: the calibration scores' ``1 - false_reject``
        quantile (+inf while fewer than 2 scores exist: nothing is rejected before calibration)."""
        return self._threshold

    def is_unknown(self, z: np.ndarray) -> np.ndarray:
        """Boolean per row: novelty above `threshold`."""
        return self.novelty(z) > self.threshold

    # -------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, np.ndarray]:
        """Plain arrays (stored by the agent under ``openset.*``)."""
        return {"count": self.count_.copy(), "sum": self.sum_.copy(), "sq": self.sq_.copy(),
                "scores": self.scores_.copy(), "n_scores": np.array(self.n_scores_, np.int64)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore `state_dict` output; shapes and dtypes checked (InputError, nothing changed)."""
        ref = self.state_dict()
        if set(state) != set(ref):
            raise InputError(f"openset state: expected keys {sorted(ref)}, got {sorted(state)}")
        for key, want in ref.items():
            got = np.asarray(state[key])
            if got.shape != want.shape or got.dtype != want.dtype:
                raise InputError(f"openset state {key!r}: expected {want.dtype}{want.shape}, "
                                 f"got {got.dtype}{got.shape}")
        if (np.asarray(state["count"]) < 0).any() or int(state["n_scores"]) < 0:
            raise InputError("openset state: expected counts >= 0, got a negative count")
        self.count_, self.sum_, self.sq_ = (np.asarray(state[k]).copy() for k in ("count", "sum", "sq"))
        self.scores_ = np.asarray(state["scores"]).copy()
        self.n_scores_ = int(state["n_scores"])
        self._refresh()

    @property
    def nbytes(self) -> int:
        """Bytes of state."""
        return int(sum(v.nbytes for v in self.state_dict().values()))


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """Probability that an unknown row scores a HIGHER novelty than a known one (ties count 1/2)."""
    known, unknown = np.asarray(known, np.float64), np.asarray(unknown, np.float64)
    if known.size == 0 or unknown.size == 0:
        return float("nan")
    allv = np.concatenate([known, unknown])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(allv.size, np.float64)
    sorted_v = allv[order]
    # average ranks for ties
    _, first, counts = np.unique(sorted_v, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    r_unknown = ranks[known.size:].sum()
    return float((r_unknown - unknown.size * (unknown.size + 1) / 2.0) / (known.size * unknown.size))


def accuracy_at_false_accept(known_scores: np.ndarray, known_correct: np.ndarray, unknown_scores: np.ndarray,
                             false_accept: float = 0.05) -> tuple[float, float]:
    """Accuracy on known rows when the threshold lets ``false_accept`` of the unknown rows through.

    Returns ``(accuracy, threshold)``: a known row counts as right only if it is accepted (novelty
    at or below the threshold) and its label is right."""
    unknown_scores = np.asarray(unknown_scores, np.float64)
    t = float(np.quantile(unknown_scores, false_accept)) if unknown_scores.size else float("inf")
    accepted = np.asarray(known_scores) <= t
    return float((accepted & np.asarray(known_correct, bool)).mean()), t
