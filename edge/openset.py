"""When the agent says "unknown": one rule, one set of knobs, and the novelty score it may use.

A camera sees objects it was never taught. Every answer (`edge.agent.Agent.answer_embeddings`,
`decide`) is the most probable learned class, or `UNKNOWN` when the `OpenSetPolicy` says so:

* no class is left to answer (top probability 0, e.g. every learned class was forgotten);
* the top probability is below ``min_probability`` (default 0.5; 0 switches the rule off);
* ``reject_novel`` (default OFF) and the row's *novelty* is above the calibrated threshold.

``edge-agent predict`` applies the rule to each image; ``edge-agent run`` and the HTTP API apply the
same rule to the probabilities and novelty averaged over the last ``--window`` frames of a stream
(a file in a folder source stands alone, as in ``predict``).

Why novelty rejection is off by default: measured (docs/openset.md), the threshold holds its target
on later teach bursts of known objects (6.5 % rejected at a 5 % target on the generated NICv2-391
stream), but known objects in the test sessions, conditions unlike any taught, are rejected far more
often (24 % at a 5 % target; 50 % on real photos of a taught class never shown). Turn it on
(``--reject-novel``, with ``--unknown-rate``) for fixed scenes, after teaching each object in at least
two learn calls in the conditions the device will see.

The novelty score (`OpenSet`, MDS++): every raw embedding is scaled to unit length; the agent's
class statistics (`edge.stats.ClassStatistics`, direction statistics: per-class sums of unit rows and
the sum of their outer products, exact for add/subtract/merge) give the class mean directions
``m_c`` and the shared within-class covariance ``S``, shrunk toward a scaled identity
(``Σ = 0.2 S + 0.8 tr(S)/d I``)::

    r(x) = min_c (u - m_c)^T Σ^-1 (u - m_c),   u = x / ||x||

The same score serves every strategy. Measured against the previous score (distance to the nearest
standardised class mean over its spread) it separates never-taught objects better on the generated
streams and on real photos with the ImageNet backbone (docs/openset.md).

Calibration (leave-one-burst-out): a teach burst is the rows of one learn call. The agent keeps a
few rows of every burst with its burst's class sums; the threshold is the ``1 - rate`` quantile of
their scores against the class statistics WITHOUT their burst (`OpenSet`), so it is calibrated on
conditions the statistics did not see. While fewer than `MIN_BURST_SCORES` such scores exist (every
class taught in one learn call) the threshold is +inf: nothing is rejected.

Example:
    >>> import numpy as np
    >>> from edge.stats import ClassStatistics
    >>> rng = np.random.default_rng(0)
    >>> stats = ClassStatistics(max_classes=3, embedding_size=8, directions=True)
    >>> o = OpenSet(stats)
    >>> x, y = np.abs(rng.normal(size=(60, 8))) + 3 * np.eye(8)[0], np.zeros(60, np.int64)
    >>> for burst in np.split(np.arange(60), 3):    # three learn calls
    ...     stats.update(x[burst], y[burst], units=x[burst]); o.calibrate(x[burst], y[burst])
    >>> bool(o.is_unknown(np.eye(8)[[4]])[0]), bool(o.is_unknown(3 * np.eye(8)[[0]] + 0.8)[0])
    (True, False)
    >>> proba = np.array([[0.9, 0.1, 0.0], [0.4, 0.35, 0.25]], np.float32)
    >>> decide(proba, np.array([1.0, 1.0]), threshold=2.0).index.tolist()
    [0, -1]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from edge.errors import ConfigError, InputError
from edge.stats import ClassStatistics, check_state_arrays

#: The label index of an answer the agent does not recognise.
UNKNOWN = -1
#: Default share of known rows the threshold may reject (the false-reject rate it is calibrated to).
FALSE_REJECT = 0.05
#: Default of `OpenSetPolicy.min_probability` (``--unknown-threshold``).
MIN_PROBABILITY = 0.5
#: Weight of the scaled identity in the shared covariance of the unit rows (measured in
#: docs/openset.md: 0.5-0.9 are within 0.01 AUROC of each other on every stream; 0.8 the best on
#: the generated ones).
SHRINKAGE = 0.8
#: Leave-one-burst-out scores needed before the threshold rejects anything (`OpenSet.calibrated_on`).
MIN_BURST_SCORES = 20
#: Rows of each class kept from one teach burst for the calibration.
PER_BURST = 8

logger = logging.getLogger(__name__)


def check_rate(value: float, name: str) -> float:
    """``value`` as a float in [0, 1) or `ConfigError` naming ``name``."""
    try:
        rate = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected a rate in [0, 1), got {value!r}") from None
    if not 0.0 <= rate < 1.0:
        raise ConfigError(f"{name}: expected a rate in [0, 1), got {value!r}")
    return rate


@dataclass(frozen=True)
class OpenSetPolicy:
    """The knobs of the "unknown" rule (see the module docstring); the defaults are the device's.

    Args:
        reject_novel: also answer unknown when the novelty is above the calibrated threshold.
        min_probability: answer unknown below this top probability (0 disables), in [0, 1].
        unknown_rate: the target false-reject rate the novelty threshold is calibrated to
            (``--unknown-rate``; the share of known objects in new conditions it may call unknown).

    Example:
        >>> OpenSetPolicy().is_unknown(np.array([0.9, 0.4]), np.array([50.0, 0.1]), 2.0).tolist()
        [False, True]
        >>> OpenSetPolicy(reject_novel=True).is_unknown(np.array([0.9]), np.array([50.0]), 2.0).tolist()
        [True]
    """

    reject_novel: bool = False
    min_probability: float = MIN_PROBABILITY
    unknown_rate: float = FALSE_REJECT

    def __post_init__(self) -> None:
        check_rate(self.unknown_rate, "OpenSetPolicy.unknown_rate")
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
        novelty: ``(N,)`` float64 open-set score (`OpenSet.novelty`; +inf before anything is learned;
            NaN where it was not computed: rejection off and not asked for, see
            `edge.agent.Agent.answer_embeddings`).
        threshold: the calibrated novelty threshold the rule compared with (NaN when not computed).
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
    """Novelty score (MDS++ over the shared direction statistics) + its leave-one-burst-out calibration.

    Args:
        stats: the agent's `edge.stats.ClassStatistics` with ``directions=True`` (read, never
            written here). Statistics without direction statistics (a checkpoint written before
            them) give a NaN novelty: never novel, until the agent is reset and relearns.
        capacity: calibration rows kept (reservoir sampling over teach bursts; default 256).
        false_reject: target false-reject rate of `threshold` (default 0.05; `threshold_at` takes any).
        shrinkage: weight of the scaled identity in the shared covariance (default `SHRINKAGE`).

    Calibration: each teach burst (one learn call) leaves up to `PER_BURST` of its unit rows in a
    reservoir, each with the sum and count of its burst's rows of its class. When the threshold is
    needed, every kept row is scored against the statistics AS THEY ARE NOW with its own burst taken
    out of its class mean (exact from the sums): the novelty of a known object in conditions the
    class statistics did not see. Rows of a class taught in one burst only have no such score; with
    fewer than `MIN_BURST_SCORES` scores the threshold is +inf (nothing rejected,
    ``calibrated_on == "nothing"``): teach each object in at least two learn calls, in different
    conditions.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> stats = ClassStatistics(max_classes=2, embedding_size=8, directions=True)
        >>> o = OpenSet(stats)
        >>> x = np.abs(rng.normal(size=(60, 8))) + np.eye(8)[0] * 3
        >>> for burst in (x[:20], x[20:40], x[40:]):      # three teach bursts of class 0
        ...     stats.update(burst, np.zeros(20, np.int64), units=burst)
        ...     o.calibrate(burst, np.zeros(20, np.int64))
        >>> o.calibrated_on, bool(o.novelty(np.eye(8)[[5]])[0] > o.threshold)
        ('held-out bursts', True)
    """

    def __init__(self, stats: ClassStatistics, capacity: int = 256, false_reject: float = FALSE_REJECT,
                 shrinkage: float = SHRINKAGE) -> None:
        self.stats = stats
        self.capacity = int(capacity)
        self.false_reject = check_rate(false_reject, "OpenSet.false_reject")
        self.shrinkage = float(shrinkage)
        d = stats.embedding_size
        self.rows_ = np.zeros((self.capacity, d), np.float32)        # unit rows kept
        self.labels_ = np.zeros(self.capacity, np.int64)
        self.burst_sum_ = np.zeros((self.capacity, d), np.float32)   # their burst's class sum
        self.burst_n_ = np.zeros(self.capacity, np.int64)
        # the same rows and burst sums before scaling to unit length (the probability calibration
        # of the statistics strategies reads them: `held_out_rows`); 0 in slots of older states
        self.norm_ = np.zeros(self.capacity, np.float32)
        self.burst_raw_sum_ = np.zeros((self.capacity, d), np.float32)
        self.n_rows_ = 0              # rows offered so far (the reservoir holds min(n, capacity))
        self.n_bursts_ = 0
        #: Whether anyone asked for a novelty or the threshold since this state began (`in_use`).
        self.used_ = False
        self._version = -1            # stats.version the cached whitening/scores were derived from
        self._white: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._scores = np.zeros(0)

    # ---------------------------------------------------------------- statistics
    def _derived(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """``(W, whitened class means (K, d), their squared norms (K,))`` (rows of classes without
        rows are unused), recomputed once per change of the statistics (``stats.version``) together
        with the calibration scores; None without direction statistics."""
        st = self.stats
        if st.unit_sum_ is None or st.unit_outer_ is None:
            return None
        if self._version != st.version or self._white is None:
            seen = np.flatnonzero(st.count_)
            n = st.count_[seen].astype(np.float64)
            d = st.embedding_size
            scatter = st.unit_outer_ - (st.unit_sum_[seen].T / n) @ st.unit_sum_[seen]
            dof = float(n.sum()) - seen.size
            cov = scatter / dof if dof > 0 else np.zeros((d, d))
            cov = (cov + cov.T) / 2.0
            scale = float(np.trace(cov)) / d
            if not scale > 1e-12:   # one row per class: no spread known yet, plain distances
                white = np.eye(d)
            else:
                shrunk = (1.0 - self.shrinkage) * cov + self.shrinkage * scale * np.eye(d)
                white = np.linalg.inv(np.linalg.cholesky(shrunk))   # W with W S W^T = I
            wm = (st.unit_sum_ / np.maximum(st.count_, 1)[:, None]) @ white.T
            self._white = (white, wm, (wm * wm).sum(1))
            self._version = st.version
            self._scores = self._burst_scores()
        return self._white

    def _burst_scores(self) -> np.ndarray:
        """Leave-one-burst-out novelty of the kept rows whose class has rows outside their burst."""
        st = self.stats
        assert self._white is not None and st.unit_sum_ is not None
        white, wm, wm_sq = self._white
        k = min(self.n_rows_, self.capacity)
        labels = self.labels_[:k]
        rest = st.count_[labels] - self.burst_n_[:k]
        ok = np.flatnonzero(rest > 0)
        seen = st.count_ > 0
        if ok.size == 0:
            return np.zeros(0)
        w = self.rows_[ok].astype(np.float64) @ white.T
        d2 = (w * w).sum(1)[:, None] - 2.0 * w @ wm.T + wm_sq[None, :]
        d2[:, ~seen] = np.inf
        own, _ = st.means_without(labels[ok], self.burst_sum_[ok], self.burst_n_[ok], units=True)
        w_own = own @ white.T
        diff = w - w_own
        d2[np.arange(ok.size), labels[ok]] = (diff * diff).sum(1)
        # The burst's offset from the rest of its class is part of the shared covariance: take that
        # rank-one term out (Sherman-Morrison in whitened coordinates), or the held-out burst would
        # look closer than a new condition does (its own direction of change counted as spread).
        n_b = self.burst_n_[ok].astype(np.float64)
        dof = max(float(st.count_.sum()) - float(seen.sum()), 1.0)
        gamma = (1.0 - self.shrinkage) * n_b * rest[ok] / (n_b + rest[ok]) / dof
        w_v = self.burst_sum_[ok].astype(np.float64) / n_b[:, None] @ white.T - w_own
        denom = np.maximum(1.0 - gamma * (w_v * w_v).sum(1), 1e-6)
        proj = (w * w_v).sum(1)[:, None] - w_v @ wm.T          # (w - wm_c) . w_v for every class
        proj[np.arange(ok.size), labels[ok]] = (diff * w_v).sum(1)
        d2 = d2 + (gamma / denom)[:, None] * proj * proj
        scores: np.ndarray = np.maximum(d2.min(1), 0.0)
        return scores

    @property
    def in_use(self) -> bool:
        """True once a novelty or a threshold was asked of this state (carried by `state_dict`):
        from then on the agent derives the whitening on its learning thread after each change
        (`refresh`), so a prediction never pays. Until then nothing is derived and nothing but the
        reservoir is held: an agent that never rejects novel rows never computes the score."""
        return self.used_

    def refresh(self) -> None:
        """Derive the whitening and calibration scores for the statistics as they are now (the
        agent calls this on its learning thread after each change while `in_use`)."""
        self._derived()

    def release(self) -> None:
        """Drop what `refresh` derived (the d x d whitening: 13 MB at d = 1280); derived again on
        the next use."""
        self._white, self._scores, self._version = None, np.zeros(0), -1

    def calibrate(self, x: np.ndarray, labels: np.ndarray) -> None:
        """Keep up to `PER_BURST` rows of a teach burst (raw rows ``x``, ALREADY added to the
        statistics) per class with their burst's class sums. Derives nothing (see `in_use`)."""
        labels = np.asarray(labels, np.int64)
        u = ClassStatistics.unit_rows(x)
        raw = np.asarray(x).astype(np.float32, copy=False).astype(np.float64)
        norms = np.sqrt((raw * raw).sum(1))
        rng = np.random.default_rng([self.n_bursts_, 0x05E7])
        for c in np.unique(labels):
            rows = np.flatnonzero(labels == c)
            total, raw_total = u[rows].sum(0), raw[rows].sum(0)
            for i in rng.permutation(rows)[:PER_BURST]:
                slot = self.n_rows_ if self.n_rows_ < self.capacity else int(rng.integers(0, self.n_rows_ + 1))
                if slot < self.capacity:
                    self.rows_[slot], self.labels_[slot] = u[i], c
                    self.burst_sum_[slot], self.burst_n_[slot] = total, rows.size
                    self.norm_[slot], self.burst_raw_sum_[slot] = norms[i], raw_total
                self.n_rows_ += 1
        self.n_bursts_ += 1
        self._version = -1

    def held_out_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The kept rows whose class has rows outside their teach burst, for a leave-one-burst-out
        fit (the probability temperature of ``slda``/``ncm``, `edge.agent.Agent`): ``(rows (M, d)
        as the backbone gave them, labels (M,), their burst's class sums (M, d), its rows (M,))``,
        float64 / int64. The burst's rows are in the statistics: take them out with
        `edge.stats.ClassStatistics.means_without`. Slots of states written before these sums
        were kept are left out."""
        k = min(self.n_rows_, self.capacity)
        labels = self.labels_[:k]
        rest = self.stats.count_[labels] - self.burst_n_[:k]
        ok = np.flatnonzero((rest > 0) & (self.norm_[:k] > 0))
        rows = self.rows_[ok].astype(np.float64) * self.norm_[ok].astype(np.float64)[:, None]
        return rows, labels[ok].copy(), self.burst_raw_sum_[ok].astype(np.float64), self.burst_n_[ok].copy()

    # ------------------------------------------------------------------- scores
    def novelty(self, x: np.ndarray) -> np.ndarray:
        """Score per RAW row (float64): squared Mahalanobis distance of the row's direction to the
        nearest class mean direction; +inf before anything was learned, NaN without direction
        statistics."""
        self.used_ = True
        derived = self._derived()
        x = np.asarray(x)
        if derived is None:
            return np.full(x.shape[0], np.nan)
        white, wm, wm_sq = derived
        seen = np.flatnonzero(self.stats.count_)
        if seen.size == 0:
            return np.full(x.shape[0], np.inf)
        w = ClassStatistics.unit_rows(x) @ white.T
        d2 = np.maximum((w * w).sum(1)[:, None] - 2.0 * w @ wm[seen].T + wm_sq[seen][None, :], 0.0)
        nearest: np.ndarray = d2.min(axis=1)
        return nearest

    @property
    def n_calibration(self) -> int:
        """Leave-one-burst-out scores the threshold is drawn from now."""
        self.used_ = True
        self._derived()
        return int(self._scores.size)

    @property
    def calibrated_on(self) -> str:
        """``"held-out bursts"`` (at least `MIN_BURST_SCORES` leave-one-burst-out scores) or
        ``"nothing"`` (threshold +inf: nothing is rejected; teach each class in two learn calls)."""
        return "held-out bursts" if self.n_calibration >= MIN_BURST_SCORES else "nothing"

    def threshold_at(self, false_reject: float) -> float:
        """Novelty above which a row is novel for a target false-reject rate: the ``1 -
        false_reject`` quantile of the leave-one-burst-out scores; +inf while `calibrated_on` is
        ``"nothing"`` or ``false_reject`` is 0."""
        rate = check_rate(false_reject, "false_reject")
        if self.calibrated_on == "nothing" or rate == 0.0:
            return float("inf")
        return float(np.quantile(self._scores, 1.0 - rate))

    @property
    def threshold(self) -> float:
        """`threshold_at` the default target (``false_reject``)."""
        return self.threshold_at(self.false_reject)

    def is_unknown(self, x: np.ndarray) -> np.ndarray:
        """Boolean per raw row: novelty above `threshold`."""
        return self.novelty(x) > self.threshold

    # -------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, np.ndarray]:
        """The calibration reservoir (stored by the agent under ``openset.*``; the statistics are
        the agent's ``stats.*``)."""
        return {"rows": self.rows_.copy(), "labels": self.labels_.copy(), "burst_sum": self.burst_sum_.copy(),
                "burst_n": self.burst_n_.copy(), "n_rows": np.array(self.n_rows_, np.int64),
                "n_bursts": np.array(self.n_bursts_, np.int64), "used": np.array(int(self.used_), np.int64),
                "norm": self.norm_.copy(), "burst_raw_sum": self.burst_raw_sum_.copy()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore `state_dict` output; shapes and dtypes checked (InputError, nothing changed).
        The state of the score before MDS++ (keys ``scores``, ``n_scores``) is dropped: those scores
        are of another score; the reservoir refills as the agent learns. A state written before
        `in_use` was kept (no ``used``) loads as not in use; one written before the raw sums were
        kept (no ``norm``, ``burst_raw_sum``) loads with none (`held_out_rows` skips those slots)."""
        if set(state) == {"scores", "n_scores"}:
            logger.warning("openset state: calibration of the previous novelty score dropped "
                           "(it refills as the agent learns)")
            return
        ref = self.state_dict()
        for key in ("used", "norm", "burst_raw_sum"):   # added later: optional
            if key not in state:
                del ref[key]
        check_state_arrays(state, ref, "openset state")
        if int(state["n_rows"]) < 0 or int(state["n_bursts"]) < 0:
            raise InputError("openset state: expected n_rows, n_bursts >= 0, got a negative count")
        labels = np.asarray(state["labels"])
        if labels.size and (labels.min() < 0 or labels.max() >= self.stats.max_classes):
            raise InputError(f"openset state: expected labels in [0, {self.stats.max_classes - 1}], "
                             f"got {int(labels.min())}..{int(labels.max())}")
        self.rows_, self.labels_ = np.asarray(state["rows"]).copy(), labels.copy()
        self.burst_sum_, self.burst_n_ = np.asarray(state["burst_sum"]).copy(), np.asarray(state["burst_n"]).copy()
        self.n_rows_, self.n_bursts_ = int(state["n_rows"]), int(state["n_bursts"])
        self.used_ = bool(int(state.get("used", 0)))
        self.norm_ = np.asarray(state["norm"]).copy() if "norm" in state else np.zeros(self.capacity, np.float32)
        self.burst_raw_sum_ = (np.asarray(state["burst_raw_sum"]).copy() if "burst_raw_sum" in state
                               else np.zeros_like(self.burst_sum_))
        self.release()

    @property
    def nbytes(self) -> int:
        """Bytes held: the reservoir and, once derived (`in_use`), the whitening, the whitened class
        means and the calibration scores (the statistics are counted by the agent)."""
        derived = 0 if self._white is None else sum(a.nbytes for a in self._white) + self._scores.nbytes
        return int(self.rows_.nbytes + self.labels_.nbytes + self.burst_sum_.nbytes + self.burst_n_.nbytes + 24
                   + self.norm_.nbytes + self.burst_raw_sum_.nbytes + derived)


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
