"""When the agent says "unknown": one rule, one set of knobs, and the novelty score it may use.

A camera sees objects it was never taught. Every answer (`edge.agent.Agent.answer_embeddings`,
`decide`) is the most probable learned class, or `UNKNOWN` when the `OpenSetPolicy` says so:

* no class is left to answer (top probability 0, e.g. every learned class was forgotten);
* the top probability is below ``min_probability`` (default 0.5; 0 switches the rule off);
* ``reject_novel`` (default OFF) and the row's *novelty* is above the calibrated threshold.

``edge-agent predict`` applies the rule to each image; ``edge-agent run`` and the HTTP API apply the
same rule to the probabilities and novelty averaged over the last ``--window`` frames of a stream
(a file in a folder source stands alone, as in ``predict``).

Why novelty rejection is off by default: the threshold is calibrated on the frames the agent was
taught, and a known object seen under new lighting or background scores as novel as an object never
taught (measured on generated sessions: novelty ~45 for a taught object in a new session, ~50 for an
object never taught, threshold ~1.6; see ``docs/openset.md``). Turn it on (``--reject-novel``) for
fixed scenes, after teaching in the conditions the device will see.

The novelty score (`OpenSet`) reads the agent's class statistics (`edge.stats.ClassStatistics`,
standardised embedding space): class means ``mu_c`` and mean squared distances to them ``s_c``
(unbiased)::

    r(x) = min_c ||x - mu_c||^2 / s_c        (over the classes learned so far; 0 = a class mean)

The same score serves every strategy (it needs only the rows and labels the agent learns from). For
the gradient heads it complements the top probability, which is exactly 1.0 while one class is known
(nothing to compete with) and so cannot reject anything then.

Calibration: after every learned batch each of its rows is scored leave-one-out against its own
class (its distance to the mean of the class's OTHER rows, exact from the sums), which is what an
unseen view of a known class looks like; a bounded reservoir of these scores (``capacity``)
gives the threshold at the target false-reject rate (default 5 %: the 95th percentile).

Example:
    >>> import numpy as np
    >>> from edge.stats import ClassStatistics
    >>> rng = np.random.default_rng(0)
    >>> stats = ClassStatistics(max_classes=3, embedding_size=8)
    >>> o = OpenSet(stats)
    >>> z, y = rng.normal(size=(50, 8)), np.zeros(50, np.int64)
    >>> stats.update(z, y); o.calibrate(z, y)
    >>> bool(o.is_unknown(np.full((1, 8), 9.0))[0]), bool(o.is_unknown(rng.normal(size=(1, 8)) * 0.3)[0])
    (True, False)
    >>> proba = np.array([[0.9, 0.1, 0.0], [0.4, 0.35, 0.25]], np.float32)
    >>> decide(proba, np.array([1.0, 1.0]), threshold=2.0).index.tolist()
    [0, -1]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.errors import ConfigError, InputError
from edge.stats import ClassStatistics

#: The label index of an answer the agent does not recognise.
UNKNOWN = -1
#: Default share of known rows the threshold may reject (the false-reject rate it is calibrated to).
FALSE_REJECT = 0.05
#: Default of `OpenSetPolicy.min_probability` (``--unknown-threshold``).
MIN_PROBABILITY = 0.5


@dataclass(frozen=True)
class OpenSetPolicy:
    """The knobs of the "unknown" rule (see the module docstring); the defaults are the device's.

    Args:
        reject_novel: also answer unknown when the novelty is above the calibrated threshold.
        min_probability: answer unknown below this top probability (0 disables), in [0, 1].

    Example:
        >>> OpenSetPolicy().is_unknown(np.array([0.9, 0.4]), np.array([50.0, 0.1]), 2.0).tolist()
        [False, True]
        >>> OpenSetPolicy(reject_novel=True).is_unknown(np.array([0.9]), np.array([50.0]), 2.0).tolist()
        [True]
    """

    reject_novel: bool = False
    min_probability: float = MIN_PROBABILITY

    def __post_init__(self) -> None:
        if not isinstance(self.reject_novel, bool):
            raise ConfigError(f"OpenSetPolicy.reject_novel: expected a bool, got {self.reject_novel!r}")
        if not 0.0 <= float(self.min_probability) <= 1.0:
            raise ConfigError(f"OpenSetPolicy.min_probability: expected a value in [0, 1], "
                              f"got {self.min_probability!r}")

    def is_unknown(self, top_probability: np.ndarray, novelty: np.ndarray, threshold: float) -> np.ndarray:
        """THE rule, per row (bool): no class left (top probability <= 0), or top probability
        below ``min_probability``, or (``reject_novel``) novelty above ``threshold``."""
        top = np.asarray(top_probability, np.float64)
        unknown = top <= 0.0
        if self.min_probability > 0.0:
            unknown |= ~(top >= self.min_probability)  # NaN counts as unsure
        if self.reject_novel:
            unknown |= np.asarray(novelty, np.float64) > threshold  # NaN is never novel
        return unknown


#: The closed-set policy: always a learned class (accuracies are computed with it).
CLOSED_SET = OpenSetPolicy(reject_novel=False, min_probability=0.0)


@dataclass(frozen=True)
class Answer:
    """What the agent answers for ``N`` rows (`edge.agent.Agent.answer_embeddings`).

    Attributes:
        probabilities: ``(N, max_classes)`` class probabilities (0 for classes never learned).
        index: ``(N,)`` int64 answered class, `UNKNOWN` (-1) where ``unknown``.
        best: ``(N,)`` int64 most probable class (also where the answer is unknown).
        score: ``(N,)`` float64 top probability (the probability of ``best``).
        novelty: ``(N,)`` float64 open-set score (`OpenSet.novelty`; +inf before anything is learned).
        threshold: the calibrated novelty threshold the rule compared with.
        unknown: ``(N,)`` bool, from `OpenSetPolicy.is_unknown`.

    Names are not the agent's business: map ``index`` with `edge.device.labels.LabelMap.answer_fields`.
    """

    probabilities: np.ndarray
    index: np.ndarray
    best: np.ndarray
    score: np.ndarray
    novelty: np.ndarray
    threshold: float
    unknown: np.ndarray

    def __len__(self) -> int:
        return int(self.index.shape[0])


def decide(probabilities: np.ndarray, novelty: np.ndarray, threshold: float,
           policy: OpenSetPolicy | None = None) -> Answer:
    """An `Answer` from probabilities ``(N, K)`` and novelty ``(N,)`` under ``policy`` (default
    `OpenSetPolicy()`): the one place where the rule is applied."""
    policy = policy if policy is not None else OpenSetPolicy()
    proba = np.asarray(probabilities)
    best = proba.argmax(axis=1).astype(np.int64)
    score = proba[np.arange(proba.shape[0]), best].astype(np.float64)
    nov = np.asarray(novelty, np.float64)
    unknown = policy.is_unknown(score, nov, threshold)
    return Answer(probabilities=proba, index=np.where(unknown, UNKNOWN, best), best=best, score=score,
                  novelty=nov, threshold=float(threshold), unknown=unknown)


def exclude_classes(probabilities: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """Probabilities with the ``excluded`` classes (bool ``(K,)``) zeroed and rows renormalised
    (float64, a new array); the input itself when nothing is excluded."""
    excluded = np.asarray(excluded, bool)
    if not excluded.any():
        return probabilities
    out = np.array(probabilities, dtype=np.float64)
    out[..., excluded] = 0.0
    total = out.sum(axis=-1, keepdims=True)
    result: np.ndarray = np.divide(out, total, out=np.zeros_like(out), where=total > 0)
    return result


class OpenSet:
    """Novelty score from the shared class statistics + a reservoir of calibration scores.

    Args:
        stats: the agent's `edge.stats.ClassStatistics` (read, never written here).
        capacity: calibration scores kept (reservoir sampling; default 1024, float32).
        false_reject: target false-reject rate of the threshold (default 0.05).
    """

    def __init__(self, stats: ClassStatistics, capacity: int = 1024, false_reject: float = FALSE_REJECT) -> None:
        self.stats = stats
        self.capacity = int(capacity)
        self.false_reject = float(false_reject)
        self.scores_ = np.zeros(self.capacity, np.float32)
        self.n_scores_ = 0          # scores offered so far (the reservoir holds min(n, capacity))
        self._version = -1          # stats.version the cached means/spreads were derived from
        self._refresh_threshold()

    # ---------------------------------------------------------------- statistics
    def _spread(self) -> np.ndarray:
        """Unbiased mean squared distance to the class mean ``(K,)`` (pooled where a class has 1 row)."""
        st = self.stats
        n = st.count_.astype(np.float64)
        mu = st.sum_ / np.maximum(n, 1)[:, None]
        ss = np.maximum(st.sq_ - n * (mu * mu).sum(1), 0.0)
        per = np.where(n > 1, ss / np.maximum(n - 1, 1), np.nan)
        seen = n > 1
        pooled = ss[seen].sum() / max(float((n[seen] - 1).sum()), 1.0) if seen.any() else 1.0
        per = np.where(np.isnan(per), pooled, per)
        return np.maximum(per, 1e-6 * max(pooled, 1e-12))

    def calibrate(self, z: np.ndarray, labels: np.ndarray) -> None:
        """Offer the leave-one-out scores of a batch of standardised rows ALREADY added to the
        statistics to the reservoir (slots drawn from a generator keyed by the number of scores
        offered: no extra state)."""
        z = np.asarray(z, np.float64)
        labels = np.asarray(labels, np.int64)
        st = self.stats
        n = st.count_[labels].astype(np.float64)
        ok = n > 1
        if ok.any():
            mu = st.sum_[labels] / n[:, None]
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
        self._refresh_threshold()

    def _derived(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Class means of the seen classes, their squared norms and spreads, recomputed once per
        change of the statistics (``stats.version``), not once per call."""
        if self._version != self.stats.version:
            st = self.stats
            seen = np.flatnonzero(st.count_)
            self._mu = st.sum_[seen] / st.count_[seen][:, None]
            self._mu_sq = (self._mu * self._mu).sum(1)[None, :]
            self._spread_seen = self._spread()[seen][None, :] if seen.size else np.zeros((1, 0))
            self._version = st.version
        return self._mu, self._mu_sq, self._spread_seen

    def _refresh_threshold(self) -> None:
        n = min(self.n_scores_, self.capacity)
        self._threshold = (float("inf") if n < 2
                           else float(np.quantile(self.scores_[:n], 1.0 - self.false_reject)))

    # ------------------------------------------------------------------- scores
    def novelty(self, z: np.ndarray) -> np.ndarray:
        """``r(x)`` per row (float64; +inf before anything was learned)."""
        z = np.asarray(z, np.float64)
        mu, mu_sq, spread = self._derived()
        if mu.shape[0] == 0:
            return np.full(z.shape[0], np.inf)
        d2 = np.maximum((z * z).sum(1)[:, None] - 2.0 * z @ mu.T + mu_sq, 0.0)
        nearest: np.ndarray = (d2 / spread).min(axis=1)
        return nearest

    @property
    def threshold(self) -> float:
        """Novelty above which a row is novel: the calibration scores' ``1 - false_reject``
        quantile (+inf while fewer than 2 scores exist: nothing is rejected before calibration)."""
        return self._threshold

    def is_unknown(self, z: np.ndarray) -> np.ndarray:
        """Boolean per row: novelty above `threshold`."""
        return self.novelty(z) > self.threshold

    # -------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, np.ndarray]:
        """The calibration reservoir (stored by the agent under ``openset.*``; the class
        statistics are the agent's ``stats.*``)."""
        return {"scores": self.scores_.copy(), "n_scores": np.array(self.n_scores_, np.int64)}

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
        if int(state["n_scores"]) < 0:
            raise InputError("openset state: expected n_scores >= 0, got a negative count")
        self.scores_ = np.asarray(state["scores"]).copy()
        self.n_scores_ = int(state["n_scores"])
        self._refresh_threshold()

    @property
    def nbytes(self) -> int:
        """Bytes of state (the reservoir; the statistics are counted by the agent)."""
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
