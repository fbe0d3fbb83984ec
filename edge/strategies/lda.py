"""Gradient-free classifiers on the embeddings: Deep Streaming LDA and nearest class mean.

Both own their classifier (the agent asks them, not a head, for probabilities: the agent builds no
gradient head for them) and work on the embeddings as the agent gives them (standardised with the
backbone's statistics when the manifest has them). Both read the agent's class statistics
(`edge.stats.ClassStatistics`: counts and sums per class) and keep only what is not per class
(SLDA's shared scatter, NCM's per-dimension sum of squares). Everything is an exact running sum, so
one pass over a stream gives the same model as computing the statistics at once on all of it.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from edge.base import Head
from edge.buffer import ReplayBuffer
from edge.errors import ConfigError, InputError, NotFittedError
from edge.stats import ClassStatistics
from edge.strategies.base import LearnSettings, Strategy, check_state, masked_softmax


def _as_float64(emb: np.ndarray) -> np.ndarray:
    """The embeddings as float32 (what a head would see), then float64 for the statistics."""
    return np.asarray(emb).astype(np.float32, copy=False).astype(np.float64)


def _legacy_sums(owner: str, state: dict[str, np.ndarray], sums: np.ndarray) -> dict[str, np.ndarray]:
    """``{"count", "sum"}`` for `edge.stats.ClassStatistics` from a pre-`edge.stats` strategy state."""
    count = np.asarray(state["count"])
    if count.ndim != 1 or sums.ndim != 2 or sums.shape[0] != count.shape[0]:
        raise InputError(f"{owner} state: expected count (K,) and class rows (K, d), got "
                         f"{count.shape} and {sums.shape}")
    return {"count": count, "sum": sums}


#: SLDA's shrinkage chosen from the data (`SLDAStrategy`, ``shrinkage="auto"``).
SHRINKAGE_AUTO = "auto"


def oas_shrinkage(sigma: np.ndarray, n: int) -> tuple[float, float]:
    """Oracle-Approximating Shrinkage (Chen, Wiesel, Eldar & Hero, IEEE TSP 2010) of a covariance.

    ``sigma`` ``(p, p)`` estimated from ``n`` degrees of freedom; returns ``(rho, mu)``: the shrunk
    covariance is ``(1 - rho) sigma + rho mu I`` with ``mu = tr(sigma) / p``. It reads only
    ``tr(sigma)``, ``tr(sigma^2)`` and ``n``, so it is a function of the running scatter alone:
    exact, order-independent and mergeable like the scatter (no rows kept, no held-out slice).

    Example:
        >>> rho, mu = oas_shrinkage(np.eye(4), 10)
        >>> round(rho, 3), mu     # already a multiple of I: shrink fully
        (1.0, 1.0)
    """
    p = sigma.shape[0]
    tr = float(np.trace(sigma))
    tr2 = float(np.einsum("ij,ij->", sigma, sigma))   # tr(sigma^2), sigma symmetric
    mu = tr / p
    denom = (n + 1.0 - 2.0 / p) * (tr2 - tr * tr / p)
    if tr <= 0.0 or denom <= 0.0:
        return 1.0, mu
    rho = ((1.0 - 2.0 / p) * tr2 + tr * tr) / denom
    return float(min(max(rho, 0.0), 1.0)), mu


def check_shrinkage(value: float | str) -> float | str:
    """``"auto"`` or a number in (0, 1], else `ConfigError` naming expected vs got."""
    if isinstance(value, str) and value == SHRINKAGE_AUTO:
        return value
    try:
        eps = float(value)
    except (TypeError, ValueError):
        eps = float("nan")
    if isinstance(value, bool) or not 0.0 < eps <= 1.0:
        raise ConfigError(f"shrinkage: expected {SHRINKAGE_AUTO!r} or a value in (0, 1], got {value!r}")
    return eps


#: Leave-one-burst-out rows needed before a temperature is fitted (fewer: temperature 1).
MIN_CALIBRATION_ROWS = 20
#: Bounds of the fitted temperature: it only ever softens (1) and stays finite.
TEMPERATURE_BOUNDS = (1.0, 1e6)
#: State key of the fitted temperature (present only when it is not 1).
TEMPERATURE_KEY = "fitted_temperature"


def fit_temperature(logits: np.ndarray, labels: np.ndarray, seen: np.ndarray) -> float:
    """The temperature ``T`` in `TEMPERATURE_BOUNDS` minimising the mean negative log-likelihood
    of ``softmax(logits / T)`` over the ``seen`` classes (Guo et al. 2017, "temperature scaling").

    ``logits`` ``(M, K)`` of held-out rows with true ``labels`` ``(M,)`` (rows whose label is not
    seen are ignored). The NLL is convex in ``1 / T``: a golden-section search on ``log(1 / T)``.
    Returns 1.0 with fewer than `MIN_CALIBRATION_ROWS` usable rows or fewer than two classes seen.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> logits = rng.normal(size=(2000, 3)) * 2
        >>> p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        >>> y = (rng.random(2000)[:, None] > p.cumsum(1)).sum(1)   # labels drawn from softmax(logits)
        >>> 20 < fit_temperature(logits * 25.0, y, np.ones(3, bool)) < 30   # 25x too sharp: T ~ 25
        True
    """
    labels = np.asarray(labels, np.int64)
    seen = np.asarray(seen, bool)
    keep = seen[labels]
    if keep.sum() < MIN_CALIBRATION_ROWS or seen.sum() < 2:
        return 1.0
    z = np.where(seen, np.asarray(logits, np.float64)[keep], -np.inf)
    y = labels[keep]
    z = z - z.max(axis=1, keepdims=True)
    true = z[np.arange(y.size), y]

    def nll(log_beta: float) -> float:
        beta = np.exp(log_beta)
        scaled = beta * z
        return float(np.mean(np.log(np.exp(scaled).sum(axis=1)) - beta * true))

    lo, hi = -np.log(TEMPERATURE_BOUNDS[1]), -np.log(TEMPERATURE_BOUNDS[0])
    golden = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    c, d = b - golden * (b - a), a + golden * (b - a)
    fc, fd = nll(c), nll(d)
    for _ in range(80):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - golden * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + golden * (b - a)
            fd = nll(d)
    best = min((nll(hi), hi), (nll(lo), lo), (min(fc, fd), (a + b) / 2.0))[1]
    return float(np.clip(np.exp(-best), *TEMPERATURE_BOUNDS))


def _load_temperature(owner: str, state: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
    """``(state without the temperature, the temperature)``; 1.0 when absent (older states)."""
    if TEMPERATURE_KEY not in state:
        return state, 1.0
    value = np.asarray(state[TEMPERATURE_KEY])
    if value.shape != () or value.dtype != np.float64 or not TEMPERATURE_BOUNDS[0] <= float(value) <= TEMPERATURE_BOUNDS[1]:
        raise InputError(f"{owner} state {TEMPERATURE_KEY!r}: expected a float64 scalar in {list(TEMPERATURE_BOUNDS)}, "
                         f"got {value.dtype}{value.shape}")
    return {k: v for k, v in state.items() if k != TEMPERATURE_KEY}, float(value)


class _Calibrated:
    """The fitted temperature of a statistics strategy: ``fitted_temperature_`` divides its scores
    before the softmax (1 until fitted). `calibrate_probabilities` fits it on leave-one-burst-out
    scores (`held_out_scores`, the subclass's), the agent calls it on its learning thread after
    each change (`edge.agent.Agent`, rows from `edge.openset.OpenSet.held_out_rows`)."""

    fitted_temperature_: float = 1.0
    stats: ClassStatistics | None

    def held_out_scores(self, z: np.ndarray, labels: np.ndarray, burst_sum: np.ndarray,
                        burst_n: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def calibrate_probabilities(self, z: np.ndarray, labels: np.ndarray, burst_sum: np.ndarray,
                                burst_n: np.ndarray) -> float:
        """Fit the temperature on held-out rows: ``z`` ``(M, d)`` standardised, ``labels``, their
        burst's class sums (standardised rows) and sizes; the burst's rows ARE in the statistics
        and are taken out of the row's own class mean. Returns the temperature (1.0 with too few
        rows: `fit_temperature`)."""
        if self.stats is None or z.shape[0] < MIN_CALIBRATION_ROWS or not self.stats.count_.any():
            self.fitted_temperature_ = 1.0
        else:
            scores = self.held_out_scores(z, labels, burst_sum, burst_n)
            self.fitted_temperature_ = fit_temperature(scores, labels, self.stats.count_ > 0)
        return self.fitted_temperature_

    def _temperature_state(self) -> dict[str, np.ndarray]:
        t = float(self.fitted_temperature_)
        return {} if t == 1.0 else {TEMPERATURE_KEY: np.array(t, np.float64)}


def _merge_terms(z: np.ndarray, labels: np.ndarray, batch: ClassStatistics,
                 rest: ClassStatistics) -> Iterator[np.ndarray]:
    """Per class of ``batch`` (the class statistics of rows ``z``, float64, with ``labels``): what
    merging those rows into the rows of ``rest`` adds to the pooled within-class scatter, Chan et al.'s
    parallel update ``S_all = S_rest + S_batch + n m / (n + m) dd^T`` (``d``: the difference of the
    two class means; no term for a class ``rest`` lacks)."""
    for c in np.flatnonzero(batch.count_):
        m = int(batch.count_[c])
        mean_b = batch.sum_[c] / m
        centred = z[labels == c] - mean_b
        n = int(rest.count_[c])
        delta = mean_b - rest.sum_[c] / max(n, 1)
        yield centred.T @ centred + (n * m / (n + m)) * np.outer(delta, delta)


def within_class_scatter(z: np.ndarray, labels: np.ndarray, embedding_size: int) -> np.ndarray:
    """The pooled within-class scatter ``sum_c sum_i (z_i - mean_c)(z_i - mean_c)^T`` ``(d, d)``
    (float64) of rows ``z`` with ``labels`` (`_merge_terms` into nothing); zeros for no rows.

    Example:
        >>> within_class_scatter(np.array([[0.0, 1], [2, 1], [5, 5]]), np.array([0, 0, 1]), 2).tolist()
        [[2.0, 0.0], [0.0, 0.0]]
    """
    z = _as_float64(z).reshape(-1, embedding_size)
    labels = np.asarray(labels, np.int64)
    k = int(labels.max()) + 1 if labels.size else 1
    scatter = np.zeros((embedding_size, embedding_size))
    for term in _merge_terms(z, labels, ClassStatistics.of_rows(z, labels, k), ClassStatistics(k, embedding_size)):
        scatter += term
    return scatter


def subtract_scatter(scatter: np.ndarray, z: np.ndarray, labels: np.ndarray, batch: ClassStatistics,
                     remaining: ClassStatistics) -> np.ndarray:
    """``scatter`` without rows ``z`` (standardised) of ``labels``: the inverse of `_merge_terms`, with
    ``batch`` the rows' class statistics and ``remaining`` those of what is left. Returns a new array."""
    total = np.zeros_like(scatter, dtype=np.float64)
    for term in _merge_terms(_as_float64(z), labels, batch, remaining):
        total += term
    return (scatter - total).astype(scatter.dtype)


class SLDAStrategy(_Calibrated, Strategy):
    """Deep Streaming LDA (Hayes & Kanan, CVPR-W 2020): class means + one shared covariance.

    The class means and counts are the agent's class statistics (`edge.stats.ClassStatistics`,
    ``reads_statistics``); this strategy keeps the pooled within-class scatter ``S`` ``(d, d)``
    (float64: the d x d matrix is its memory). A batch is merged with Chan et al.'s exact parallel
    update (per class: ``S += S_batch + n m / (n + m) * dd^T``, with ``d`` the difference of the
    class mean before the batch and the batch mean), which equals feeding the rows one at a time
    through Welford's update and equals the statistics of all the data computed at once.
    (Hayes & Kanan's reference code weights the covariance update by the total count instead of
    the class count, an approximation of the same quantity.)

    Prediction: ``Sigma = S / N`` shrunk, precision ``P = inv(Sigma_shrunk)``, scores
    ``x P mu_c - mu_c P mu_c / 2`` (equal priors), softmax over the seen classes.

    Shrinkage. ``"auto"`` (default): ``Sigma_shrunk = (1 - rho) Sigma + rho (tr(Sigma) / d) I`` with
    ``rho`` the Oracle-Approximating Shrinkage estimate (`oas_shrinkage`, ``N - K`` degrees of
    freedom), re-chosen every time the precision is recomputed. It reads only the running scatter,
    so it stays exact, order-independent and mergeable (a held-out slice would need rows kept aside
    and depend on which rows; Ledoit-Wolf needs fourth moments of the centred rows, which a running
    sum cannot give once the class means move). It follows the data: on the real photographs of
    `firmware_sim.studies.embedding_bound` it picks ~0.04-0.09 on the tiny 256-d backbone and
    ~0.15-0.33 on the 1280-d ImageNet one. A number ``eps`` in (0, 1] fixes
    ``Sigma_shrunk = (1 - eps) Sigma + eps I`` (the paper's form; 1e-4 was the default before).

    When the precision is computed: in `refresh`, which the agent calls right after the class
    statistics took a batch, i.e. on the thread that learns (the device loop's learner thread,
    on the copy it swaps in), so the first prediction after a teach pays nothing. If the
    statistics change another way (an undo, a load) the first prediction recomputes it. The
    d x d precision is kept in float32 (it is derived, recomputed from the float64 scatter each time;
    the small ``(d, K)`` prediction weights stay float64); the scatter itself, a running sum over
    every row, stays float64 so merging and undoing stay exact.

    Args:
        shrinkage: ``"auto"`` (default) or a fixed epsilon in (0, 1].

    Example:
        >>> import numpy as np
        >>> s = SLDAStrategy()
        >>> s.attach_statistics(ClassStatistics(max_classes=2, embedding_size=3))
        >>> x = np.random.default_rng(0).normal(size=(20, 3)); y = np.arange(20) % 2
        >>> s.learn(None, None, x, y, None, None); s.stats.update(x, y); s.refresh()
        >>> 0.0 <= s.shrinkage_used_ <= 1.0, s.predict_proba(None, x).shape
        (True, (20, 2))
    """

    name = "slda"
    owns_classifier = True
    reads_statistics = True
    #: ``(stats.version, precision (float32), P mu^T, offsets)``, computed by `refresh` (or the first
    #: prediction after a change the agent did not announce).
    _cache: tuple[int, np.ndarray, np.ndarray, np.ndarray] | None = None
    #: The shrinkage used by the last precision computed (``rho`` for ``"auto"``); for reports.
    shrinkage_used_: float | None = None

    def __init__(self, shrinkage: float | str = SHRINKAGE_AUTO) -> None:
        self.shrinkage = shrinkage

    def params(self) -> dict[str, Any]:
        return {"shrinkage": self.shrinkage}

    def learn(self, head: Head | None, buffer: ReplayBuffer, emb: np.ndarray, labels: np.ndarray,
              rng: np.random.Generator, cfg: LearnSettings) -> None:
        check_shrinkage(self.shrinkage)
        stats = self.require_statistics()   # as before this batch: the agent adds it after `learn`
        z = _as_float64(emb)
        if getattr(self, "scatter_", None) is None:
            self.scatter_ = np.zeros((z.shape[1], z.shape[1]), np.float64)
        for term in _merge_terms(z, labels, ClassStatistics.of_rows(z, labels, stats.max_classes), stats):
            self.scatter_ += term
        self._cache = None

    def refresh(self) -> None:
        """Compute the precision and prediction weights for the statistics as they are now (the
        agent calls this right after adding a batch, on the learning thread)."""
        if self.stats is not None and getattr(self, "scatter_", None) is not None and self.stats.count_.any():
            self._weights()

    def shrunk_covariance(self) -> np.ndarray:
        """The shrunk pooled within-class covariance ``(d, d)`` (float64) the precision inverts;
        sets ``shrinkage_used_``."""
        stats = self.require_statistics()
        d = self.scatter_.shape[0]
        n = int(stats.count_.sum())
        sigma = self.scatter_ / max(n, 1)
        shrinkage = check_shrinkage(self.shrinkage)
        if shrinkage == SHRINKAGE_AUTO:
            rho, mu = oas_shrinkage(sigma, max(n - len(stats.classes_), 1))
            self.shrinkage_used_ = rho
            if not mu > 0.0:          # no spread yet (one row per class): Euclidean distances
                return np.eye(d)
            shrunk = (1.0 - rho) * sigma
            shrunk[np.diag_indices(d)] += rho * mu
            return shrunk
        eps = float(shrinkage)
        self.shrinkage_used_ = eps
        shrunk = (1.0 - eps) * sigma
        shrunk[np.diag_indices(d)] += eps
        return shrunk

    def precision(self) -> np.ndarray:
        """The precision ``inv(Sigma_shrunk)`` ``(d, d)`` (float32, cached with the weights)."""
        self._weights()
        assert self._cache is not None
        return self._cache[1]

    def _weights(self) -> tuple[np.ndarray, np.ndarray]:
        stats = self.require_statistics()
        cache = self._cache
        if cache is None or cache[0] != stats.version:
            mean = stats.means()
            precision = np.linalg.inv(self.shrunk_covariance())
            precision = 0.5 * (precision + precision.T)  # symmetric to rounding
            w = precision @ mean.T                       # (d, K)
            b = -0.5 * np.einsum("kd,dk->k", mean, w)    # -mu P mu / 2
            cache = self._cache = (stats.version, precision.astype(np.float32), w, b)
        return cache[2], cache[3]

    def predict_proba(self, head: Head | None, emb: np.ndarray) -> np.ndarray:
        if self.stats is None or getattr(self, "scatter_", None) is None or not self.stats.count_.any():
            raise NotFittedError("slda: expected at least one seen class before predicting, got none")
        w, b = self._weights()
        return masked_softmax((_as_float64(emb) @ w + b) / self.fitted_temperature_, self.stats.count_ > 0)

    def held_out_scores(self, z: np.ndarray, labels: np.ndarray, burst_sum: np.ndarray,
                        burst_n: np.ndarray) -> np.ndarray:
        """Scores ``(M, K)`` of held-out rows as if their teach burst had never been learned: the
        row's own class mean without the burst (exact from the sums,
        `edge.stats.ClassStatistics.means_without`) and the shared covariance without the burst's
        part (the kept rows' spread around their burst mean and the burst mean's offset from the
        rest of its class, Chan et al.'s merge term; a Woodbury update of the precision per burst,
        shrinkage held fixed). Without the covariance part, at d = 1280 and ~1,000 rows the
        held-out rows look as sure as taught ones (measured: temperature 1 fitted where the
        held-out digits of tests/test_calibration.py need ~7)."""
        stats = self.require_statistics()
        w, _ = self._weights()
        assert self._cache is not None
        precision = self._cache[1]                           # float32 (d, d)
        z = _as_float64(z)
        labels = np.asarray(labels, np.int64)
        burst_n = np.asarray(burst_n, np.int64)
        means = stats.means()
        own, left = stats.means_without(labels, burst_sum, burst_n)
        n_total = max(int(stats.count_.sum()), 1)
        keep = 1.0 - float(self.shrinkage_used_ if self.shrinkage_used_ is not None else 0.0)
        _, burst_of = np.unique(np.asarray(burst_sum, np.float64), axis=0, return_inverse=True)
        burst_of = burst_of.reshape(-1)
        groups = [np.flatnonzero(burst_of == g) for g in range(int(burst_of.max()) + 1)]
        # every burst's V (its kept rows' spread around the burst mean and the offset term, scaled:
        # Sigma_without = Sigma - V^T V) and its own mean, through the precision in ONE product
        blocks = []
        for rows in groups:
            i = rows[0]
            n_b, n_rest = float(burst_n[i]), float(left[i])
            mean_b = np.asarray(burst_sum[i], np.float64) / n_b
            offset = np.sqrt(n_rest * n_b / (n_rest + n_b)) * (mean_b - own[i])
            blocks.append(np.vstack([z[rows] - mean_b, offset[None]]) * np.sqrt(keep / n_total))
        stacked = np.vstack(blocks + [own[[rows[0] for rows in groups]]])
        through = (stacked.astype(np.float32) @ precision).astype(np.float64)   # rows: P v, then P own
        scores = np.empty((labels.size, stats.max_classes))
        start = 0
        for g, (rows, v) in enumerate(zip(groups, blocks)):
            pv = through[start:start + v.shape[0]]
            start += v.shape[0]
            c = int(labels[rows[0]])
            m_own = means.copy()
            m_own[c] = own[rows[0]]
            pm = w.copy()                                    # P M^T with the own mean replaced
            pm[:, c] = through[len(stacked) - len(groups) + g]
            gram = np.eye(v.shape[0]) - pv @ v.T             # I - V^T P V
            try:
                correction = pv.T @ np.linalg.solve(gram, pv @ m_own.T)   # P V G^-1 V^T P M^T
            except np.linalg.LinAlgError:
                correction = np.zeros_like(pm)
            wg = pm + correction
            scores[rows] = z[rows] @ wg - 0.5 * np.einsum("kd,dk->k", m_own, wg)
        return scores

    @property
    def count_(self) -> np.ndarray:
        """Rows per class (the attached statistics')."""
        return self.require_statistics().count_

    @property
    def mean_(self) -> np.ndarray:
        """Class means ``(K, d)`` (the attached statistics')."""
        return self.require_statistics().means()

    @property
    def classes_(self) -> np.ndarray:
        if self.stats is None:
            return np.zeros(0, np.int64)
        return self.stats.classes_

    def state_dict(self) -> dict[str, np.ndarray]:
        if getattr(self, "scatter_", None) is None:
            return {}
        return {"scatter": self.scatter_.copy(), **self._temperature_state()}

    @staticmethod
    def split_legacy_state(state: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
        """A state written before `edge.stats` (``mean``, ``count``, ``scatter``) -> this strategy's
        state and the class statistics' ``count``/``sum`` (``mean * count``)."""
        if "mean" not in state or "count" not in state:
            return state, None
        mean = np.asarray(state["mean"])
        rest = {k: v for k, v in state.items() if k not in ("mean", "count")}
        count = np.asarray(state["count"])
        sums = mean * count.astype(np.float64)[:, None] if mean.ndim == 2 and count.ndim == 1 \
            and mean.shape[0] == count.shape[0] else mean
        return rest, _legacy_sums("slda", state, sums)

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self._cache = None
        state, temperature = _load_temperature("slda", state)
        if not state:
            self._forget("scatter_", "fitted_temperature_")
            return
        scatter = np.asarray(state.get("scatter"))
        if scatter.dtype == np.float32:   # accepted (a smaller file); kept as float64 sums
            state = {**state, "scatter": scatter.astype(np.float64)}
        a = check_state("slda", state, {"scatter": (np.float64, (None, None))})
        d = a["scatter"].shape[0]
        if a["scatter"].shape != (d, d):
            raise InputError(f"slda state: expected a square scatter ({d}, {d}), got {a['scatter'].shape}")
        self.scatter_ = a["scatter"].copy()
        self.fitted_temperature_ = temperature

    @property
    def nbytes(self) -> int:
        """State (the d x d float64 scatter) plus the prediction cache (`cache_nbytes`). The class
        means and counts are the agent's class statistics, counted there."""
        if getattr(self, "scatter_", None) is None:
            return 0
        return super().nbytes + self.cache_nbytes

    @property
    def cache_nbytes(self) -> int:
        """The prediction cache held once learned: the d x d float32 precision, ``P mu^T``
        ``(d, K)`` and the ``K`` offsets (float64)."""
        if getattr(self, "scatter_", None) is None:
            return 0
        k = 0 if self.stats is None else self.stats.max_classes
        d = self.scatter_.shape[0]
        return 4 * d * d + 8 * k * d + 8 * k


#: How `NCMStrategy` scales distances: ``"fixed"`` (the embeddings as the agent gives them,
#: standardised with the backbone's pretraining statistics), ``"running"`` (per-dimension std of
#: every row seen so far on the stream: running sums, exact, no extra pass) or ``"auto"`` (the one
#: of the two that answers the agent's own held-out teach bursts better).
NCM_STANDARDIZE = ("fixed", "running", "auto")
#: State key of ``"auto"``'s choice (present only when it chose ``"running"``).
NCM_CHOICE_KEY = "auto_running"


class NCMStrategy(_Calibrated, Strategy):
    """Nearest class mean on the standardised embeddings.

    The class means are the agent's class statistics (`edge.stats.ClassStatistics`,
    ``reads_statistics``). Probabilities: softmax over the seen classes of
    ``-||(x - mu_c) / s||^2 / (2 * temperature)``, so the most probable class is the nearest mean.
    With ``standardize="running"`` ``s`` is the per-dimension std of all rows seen so far (the
    stream's own statistics: this strategy keeps a running per-dimension sum of squares, exact, no
    extra pass; the shift cancels in a difference, only the scale matters); with ``"fixed"``
    (default: the sweep on generated data, where the backbone was pretrained on the same kind of
    images, prefers it by 0.4 points) ``s = 1`` (the agent's standardisation with the backbone's
    pretraining statistics, which may not match the data the device sees). ``"auto"`` (default)
    chooses between the two from the agent's own data: each time the agent fits the probability
    temperature (`calibrate_probabilities`, after every learn) it scores the held-out rows of its
    teach bursts (each against class means WITHOUT its burst, exact from the class sums) under both
    scales and keeps the one with more right answers (``"fixed"`` on a tie and until some class was
    taught in two learn calls). Measured: real digits favour ``"running"`` by 8-12 points where the
    generated streams favoured ``"fixed"`` by 0.4 (docs/strategies.md).

    Args:
        temperature: softness of the probabilities (does not change the predicted class).
        standardize: ``"auto"`` (default), ``"running"`` or ``"fixed"`` (see above).
    """

    #: ``"auto"``'s current choice (``"fixed"`` or ``"running"``); the mode itself otherwise.
    standardize_used_: str = "fixed"

    name = "ncm"
    owns_classifier = True
    reads_statistics = True

    def __init__(self, temperature: float = 1.0, standardize: str = "auto") -> None:
        self.temperature = temperature
        self.standardize = standardize
        self.standardize_used_ = "fixed" if standardize == "auto" else standardize

    def params(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "standardize": self.standardize}

    def learn(self, head: Head | None, buffer: ReplayBuffer, emb: np.ndarray, labels: np.ndarray,
              rng: np.random.Generator, cfg: LearnSettings) -> None:
        if self.standardize not in NCM_STANDARDIZE:
            raise ConfigError(f"ncm: standardize expected one of {NCM_STANDARDIZE}, got {self.standardize!r}")
        self.require_statistics()
        z = _as_float64(emb)
        if getattr(self, "sq_", None) is None:
            self.sq_ = np.zeros(z.shape[1], np.float64)
        self.sq_ += (z * z).sum(axis=0)

    @property
    def sum_(self) -> np.ndarray:
        """Class sums ``(K, d)`` (the attached statistics')."""
        return self.require_statistics().sum_

    @property
    def count_(self) -> np.ndarray:
        """Rows per class (the attached statistics')."""
        return self.require_statistics().count_

    @property
    def means_(self) -> np.ndarray:
        """Class means ``(K, d)`` (0 for unseen classes)."""
        return self.require_statistics().means()

    def scale_(self) -> np.ndarray:
        """Per-dimension divisor of the distances ``(d,)``: the running std, or ones (``"fixed"``)."""
        stats = self.require_statistics()
        mode = self.standardize_used_ if self.standardize == "auto" else self.standardize
        if mode != "running":
            return np.ones(stats.embedding_size)
        n = max(int(stats.count_.sum()), 1)
        mean = stats.sum_.sum(axis=0) / n
        var = np.maximum(self.sq_ / n - mean * mean, 0.0)
        std: np.ndarray = np.sqrt(np.maximum(var, 1e-12))
        return std

    def predict_proba(self, head: Head | None, emb: np.ndarray) -> np.ndarray:
        if self.stats is None or getattr(self, "sq_", None) is None or not self.stats.count_.any():
            raise NotFittedError("ncm: expected at least one seen class before predicting, got none")
        if not float(self.temperature) > 0:
            raise ConfigError(f"temperature: expected > 0, got {self.temperature}")
        return masked_softmax(-0.5 * self.sq_distances(emb) / (float(self.temperature) * self.fitted_temperature_),
                              self.stats.count_ > 0)

    def held_out_scores(self, z: np.ndarray, labels: np.ndarray, burst_sum: np.ndarray,
                        burst_n: np.ndarray) -> np.ndarray:
        """Scores ``(M, K)`` (``-d^2 / (2 temperature)``) of held-out rows, each with its own class
        mean taken without its burst (exact from the sums)."""
        stats = self.require_statistics()
        labels = np.asarray(labels, np.int64)
        d2 = self.sq_distances(z)
        own, _ = stats.means_without(labels, burst_sum, burst_n)
        diff = (_as_float64(z) - own) / self.scale_()
        d2[np.arange(labels.size), labels] = (diff * diff).sum(1)
        scores: np.ndarray = -0.5 * d2 / float(self.temperature)
        return scores

    def calibrate_probabilities(self, z: np.ndarray, labels: np.ndarray, burst_sum: np.ndarray,
                                burst_n: np.ndarray) -> float:
        """With ``standardize="auto"``, first choose the scale by held-out accuracy (see the class
        docstring), then fit the temperature under it."""
        if self.standardize == "auto" and self.stats is not None and self.stats.count_.any():
            self.standardize_used_ = "fixed"
            if z.shape[0] and getattr(self, "sq_", None) is not None:
                seen = self.stats.count_ > 0
                right = {}
                for mode in ("fixed", "running"):
                    self.standardize_used_ = mode
                    scores = np.where(seen, self.held_out_scores(z, labels, burst_sum, burst_n), -np.inf)
                    right[mode] = int((scores.argmax(1) == np.asarray(labels)).sum())
                self.standardize_used_ = "running" if right["running"] > right["fixed"] else "fixed"
        return super().calibrate_probabilities(z, labels, burst_sum, burst_n)

    def sq_distances(self, emb: np.ndarray) -> np.ndarray:
        """Squared scaled distances of each row to each class mean ``(N, K)``."""
        inv = 1.0 / self.scale_()
        z = _as_float64(emb) * inv
        mu = self.means_ * inv
        d2: np.ndarray = np.maximum((z * z).sum(1)[:, None] - 2.0 * z @ mu.T + (mu * mu).sum(1)[None, :], 0.0)
        return d2

    @property
    def classes_(self) -> np.ndarray:
        if self.stats is None:
            return np.zeros(0, np.int64)
        return self.stats.classes_

    def state_dict(self) -> dict[str, np.ndarray]:
        if getattr(self, "sq_", None) is None:
            return {}
        choice = ({NCM_CHOICE_KEY: np.array(1, np.int64)}
                  if self.standardize == "auto" and self.standardize_used_ == "running" else {})
        return {"sq": self.sq_.copy(), **self._temperature_state(), **choice}

    @staticmethod
    def split_legacy_state(state: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
        """A state written before `edge.stats` (``sum``, ``count``, ``sq``) -> this strategy's state
        (``sq``) and the class statistics' ``count``/``sum``."""
        if "sum" not in state or "count" not in state:
            return state, None
        if "sq" not in state:
            raise InputError("ncm state: expected keys ['count', 'sq', 'sum'], got ['count', 'sum'] "
                             "(a checkpoint written before ncm kept its running sum of squares); "
                             "relearn the stream to rebuild it")
        rest = {k: v for k, v in state.items() if k not in ("sum", "count")}
        return rest, _legacy_sums("ncm", state, np.asarray(state["sum"]))

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        state, temperature = _load_temperature("ncm", state)
        running = bool(int(np.asarray(state.get(NCM_CHOICE_KEY, 0))))
        state = {k: v for k, v in state.items() if k != NCM_CHOICE_KEY}
        if not state:
            self._forget("sq_", "fitted_temperature_")
            self.standardize_used_ = "fixed" if self.standardize == "auto" else self.standardize
            return
        if set(state) == {"sum", "count"}:
            self.split_legacy_state(state)  # raises the "relearn" error
        a = check_state("ncm", state, {"sq": (np.float64, (None,))})
        self.sq_ = a["sq"].copy()
        self.fitted_temperature_ = temperature
        if self.standardize == "auto":
            self.standardize_used_ = "running" if running else "fixed"
