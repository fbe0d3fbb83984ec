"""Gradient-free classifiers on the embeddings: Deep Streaming LDA and nearest class mean.

Both own their classifier (the agent asks them, not a head, for probabilities: the agent builds no
gradient head for them) and work on the embeddings as the agent gives them (standardised with the
backbone's statistics when the manifest has them). Their statistics are exact running sums, so one pass over a stream gives the
same model as computing the statistics at once on all of it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge.base import Head
from edge.buffer import ReplayBuffer
from edge.errors import ConfigError, InputError, NotFittedError
from edge.strategies.base import LearnSettings, Strategy, check_state, masked_softmax


def _as_float64(emb: np.ndarray) -> np.ndarray:
    """The embeddings as float32 (what a head would see), then float64 for the statistics."""
    return np.asarray(emb).astype(np.float32, copy=False).astype(np.float64)


def _class_stats(z: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class counts ``(k,)`` and sums ``(k, d)`` of the rows of ``z`` (float64)."""
    counts = np.bincount(labels, minlength=k).astype(np.int64)
    sums = np.zeros((k, z.shape[1]), np.float64)
    np.add.at(sums, labels, z)
    return counts, sums


class SLDAStrategy(Strategy):
    """Deep Streaming LDA (Hayes & Kanan, CVPR-W 2020): class means + one shared covariance.

    State: the class means ``mu`` ``(K, d)``, class counts, and the pooled within-class scatter
    ``S`` ``(d, d)`` (float64: the d x d matrix is this strategy's memory). A batch is merged with
    Chan et al.'s exact parallel update (per class: ``S += S_batch + n m / (n + m) * dd^T``, with
    ``d`` the difference of the old and batch means), which equals feeding the rows one at a time
    through Welford's update and equals the statistics of all the data computed at once.
    (Hayes & Kanan's reference code weights the covariance update by the total count instead of
    the class count, an approximation of the same quantity.)

    Prediction: ``Sigma = S / N``, precision ``P = inv((1 - shrinkage) * Sigma + shrinkage * I)``,
    scores ``x P mu_c - mu_c P mu_c / 2`` (equal priors), softmax over the seen classes. ``P`` is
    computed on the first prediction after an update and cached until the next update.

    Args:
        shrinkage: epsilon of the covariance shrinkage (default 1e-4, as in the paper).
    """

    name = "slda"
    owns_classifier = True
    #: ``(precision, P mu^T, offsets)``, computed on the first prediction after an update.
    _cache: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def __init__(self, shrinkage: float = 1e-4) -> None:
        self.shrinkage = shrinkage

    def params(self) -> dict[str, Any]:
        return {"shrinkage": self.shrinkage}

    def learn(self, head: Head | None, buffer: ReplayBuffer, emb: np.ndarray, labels: np.ndarray,
              rng: np.random.Generator, cfg: LearnSettings) -> None:
        if not 0.0 < float(self.shrinkage) <= 1.0:
            raise ConfigError(f"shrinkage: expected a value in (0, 1], got {self.shrinkage}")
        z = _as_float64(emb)
        k = int(cfg.max_classes)
        if getattr(self, "mean_", None) is None:
            self.mean_ = np.zeros((k, z.shape[1]), np.float64)
            self.count_ = np.zeros(k, np.int64)
            self.scatter_ = np.zeros((z.shape[1], z.shape[1]), np.float64)
        m, sums = _class_stats(z, labels, k)
        for c in np.flatnonzero(m):
            rows = z[labels == c]
            batch_mean = sums[c] / m[c]
            centred = rows - batch_mean
            n = self.count_[c]
            delta = batch_mean - self.mean_[c]
            self.scatter_ += centred.T @ centred + (n * m[c] / (n + m[c])) * np.outer(delta, delta)
            self.mean_[c] += delta * (m[c] / (n + m[c]))
            self.count_[c] = n + m[c]
        self._cache = None

    def _weights(self) -> tuple[np.ndarray, np.ndarray]:
        cache = getattr(self, "_cache", None)
        if cache is None:
            d = self.scatter_.shape[0]
            sigma = self.scatter_ / max(int(self.count_.sum()), 1)
            eps = float(self.shrinkage)
            precision = np.linalg.inv((1.0 - eps) * sigma + eps * np.eye(d))
            w = precision @ self.mean_.T                       # (d, K)
            b = -0.5 * np.einsum("kd,dk->k", self.mean_, w)    # -mu P mu / 2
            cache = self._cache = (precision, w, b)
        return cache[1], cache[2]

    def predict_proba(self, head: Head | None, emb: np.ndarray) -> np.ndarray:
        if getattr(self, "mean_", None) is None or not self.count_.any():
            raise NotFittedError("slda: expected at least one seen class before predicting, got none")
        w, b = self._weights()
        return masked_softmax(_as_float64(emb) @ w + b, self.count_ > 0)

    @property
    def classes_(self) -> np.ndarray:
        if getattr(self, "count_", None) is None:
            return np.zeros(0, np.int64)
        return np.flatnonzero(self.count_)

    def state_dict(self) -> dict[str, np.ndarray]:
        if getattr(self, "mean_", None) is None:
            return {}
        return {"mean": self.mean_.copy(), "count": self.count_.copy(), "scatter": self.scatter_.copy()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self._cache = None
        if not state:
            self._forget("mean_", "count_", "scatter_")
            return
        a = check_state("slda", state, {"mean": (np.float64, (None, None)), "count": (np.int64, (None,)),
                                        "scatter": (np.float64, (None, None))})
        k, d = a["mean"].shape
        if a["count"].shape != (k,) or a["scatter"].shape != (d, d):
            raise InputError(f"slda state: expected count ({k},) and scatter ({d}, {d}), got "
                             f"{a['count'].shape} and {a['scatter'].shape}")
        self.mean_, self.count_, self.scatter_ = a["mean"].copy(), a["count"].copy(), a["scatter"].copy()

    @property
    def nbytes(self) -> int:
        """State (means, counts, d x d scatter) plus the prediction cache: the d x d precision,
        ``P mu^T`` ``(d, K)`` and the ``K`` offsets (float64), held once a prediction was made."""
        if getattr(self, "mean_", None) is None:
            return 0
        cache = self.scatter_.nbytes + self.mean_.nbytes + 8 * self.mean_.shape[0]
        return super().nbytes + cache


#: How `NCMStrategy` scales distances: ``"fixed"`` (the embeddings as the agent gives them,
#: standardised with the backbone's pretraining statistics) or ``"running"`` (per-dimension std of
#: every row seen so far on the stream: running sums, exact, no extra pass).
NCM_STANDARDIZE = ("fixed", "running")


class NCMStrategy(Strategy):
    """Nearest class mean on the standardised embeddings (exact running class sums and counts).

    Probabilities: softmax over the seen classes of ``-||(x - mu_c) / s||^2 / (2 * temperature)``,
    so the most probable class is the nearest mean. With ``standardize="running"`` ``s``
    is the per-dimension std of all rows seen so far (the stream's own statistics: a running sum of
    squares next to the class sums; the shift cancels in a difference, only the scale matters);
    with ``"fixed"`` (default: the sweep on generated data, where the backbone was pretrained on
    the same kind of images, prefers it by 0.4 points) ``s = 1`` (the agent's standardisation with the backbone's pretraining
    statistics, which may not match the data the device sees).

    Args:
        temperature: softness of the probabilities (does not change the predicted class).
        standardize: ``"running"`` or ``"fixed"`` (see above; default by the documented sweep).
    """

    name = "ncm"
    owns_classifier = True

    def __init__(self, temperature: float = 1.0, standardize: str = "fixed") -> None:
        self.temperature = temperature
        self.standardize = standardize

    def params(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "standardize": self.standardize}

    def learn(self, head: Head | None, buffer: ReplayBuffer, emb: np.ndarray, labels: np.ndarray,
              rng: np.random.Generator, cfg: LearnSettings) -> None:
        if self.standardize not in NCM_STANDARDIZE:
            raise ConfigError(f"ncm: standardize expected one of {NCM_STANDARDIZE}, got {self.standardize!r}")
        z = _as_float64(emb)
        k = int(cfg.max_classes)
        if getattr(self, "sum_", None) is None:
            self.sum_ = np.zeros((k, z.shape[1]), np.float64)
            self.count_ = np.zeros(k, np.int64)
            self.sq_ = np.zeros(z.shape[1], np.float64)
        counts, sums = _class_stats(z, labels, k)
        self.sum_ += sums
        self.count_ += counts
        self.sq_ += (z * z).sum(axis=0)

    @property
    def means_(self) -> np.ndarray:
        """Class means ``(K, d)`` (0 for unseen classes)."""
        return self.sum_ / np.maximum(self.count_, 1)[:, None]

    def scale_(self) -> np.ndarray:
        """Per-dimension divisor of the distances ``(d,)``: the running std, or ones (``"fixed"``)."""
        if self.standardize == "fixed":
            return np.ones(self.sum_.shape[1])
        n = max(int(self.count_.sum()), 1)
        mean = self.sum_.sum(axis=0) / n
        var = np.maximum(self.sq_ / n - mean * mean, 0.0)
        return np.sqrt(np.maximum(var, 1e-12))

    def predict_proba(self, head: Head | None, emb: np.ndarray) -> np.ndarray:
        if getattr(self, "sum_", None) is None or not self.count_.any():
            raise NotFittedError("ncm: expected at least one seen class before predicting, got none")
        if not float(self.temperature) > 0:
            raise ConfigError(f"temperature: expected > 0, got {self.temperature}")
        return masked_softmax(-0.5 * self.sq_distances(emb) / float(self.temperature), self.count_ > 0)

    def sq_distances(self, emb: np.ndarray) -> np.ndarray:
        """Squared scaled distances of each row to each class mean ``(N, K)``."""
        inv = 1.0 / self.scale_()
        z = _as_float64(emb) * inv
        mu = self.means_ * inv
        return np.maximum((z * z).sum(1)[:, None] - 2.0 * z @ mu.T + (mu * mu).sum(1)[None, :], 0.0)

    @property
    def classes_(self) -> np.ndarray:
        if getattr(self, "count_", None) is None:
            return np.zeros(0, np.int64)
        return np.flatnonzero(self.count_)

    def state_dict(self) -> dict[str, np.ndarray]:
        if getattr(self, "sum_", None) is None:
            return {}
        return {"sum": self.sum_.copy(), "count": self.count_.copy(), "sq": self.sq_.copy()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        if not state:
            self._forget("sum_", "count_", "sq_")
            return
        if "sq" not in state and set(state) == {"sum", "count"}:
            raise InputError("ncm state: expected keys ['count', 'sq', 'sum'], got ['count', 'sum'] "
                             "(a checkpoint written before ncm kept its running sum of squares); "
                             "relearn the stream to rebuild it")
        a = check_state("ncm", state, {"sum": (np.float64, (None, None)), "count": (np.int64, (None,)),
                                       "sq": (np.float64, (None,))})
        if a["count"].shape != (a["sum"].shape[0],) or a["sq"].shape != (a["sum"].shape[1],):
            raise InputError(f"ncm state: expected count ({a['sum'].shape[0]},) and sq ({a['sum'].shape[1]},), "
                             f"got {a['count'].shape} and {a['sq'].shape}")
        self.sum_, self.count_, self.sq_ = a["sum"].copy(), a["count"].copy(), a["sq"].copy()
