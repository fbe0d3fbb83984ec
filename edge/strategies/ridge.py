"""A streaming analytic head: ridge regression on a random ReLU projection of the embeddings.

RanPAC-style (McDonnell et al., NeurIPS 2023, without its first-session adaptation): each
standardised embedding ``x`` ``(d,)`` is lifted to ``h = relu(x R)`` ``(D,)`` by a fixed random
Gaussian matrix ``R`` ``(d, D)`` regenerated from a stored seed (never stored), and the classifier is
the ridge regression of the one-hot labels on ``h``. Its sufficient statistics are plain sums over
rows: the Gram matrix ``G = sum h h^T`` ``(D, D)``, the class sums ``C = sum h y^T`` ``(D, K)`` and
the rows per class. Learning adds them (exact, order-independent); two devices' statistics merge by
addition and a taught batch is undone by subtraction (`RidgeStrategy.add_statistics`,
`RidgeStrategy.subtract_statistics`).

The ridge penalty ``lambda`` is chosen from the agent's own data by generalized cross-validation
(Golub, Heath & Wahba 1979) on the eigendecomposition ``G = V diag(s) V^T``, which reads only the
sufficient statistics: with ``Q = V^T C``,

    RSS(l) = N - sum_i |Q_i|^2 (s_i + 2 l) / (s_i + l)^2,   df(l) = sum_i s_i / (s_i + l),
    GCV(l) = (RSS(l) / N) / (1 - df(l) / N)^2,

minimised over a log grid; the same decomposition gives the solution ``W = V diag(1/(s + l)) Q``.
GCV was chosen over leave-one-out through the hat matrix because LOO needs each row's leverage
``h_i^T (G + l I)^-1 h_i``, i.e. the rows themselves; GCV is its rotation-invariant version from
the sums alone. Everything is recomputed in `refresh` (the learning thread, after the agent added a
batch), so predictions only multiply.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge.base import Head
from edge.buffer import ReplayBuffer
from edge.errors import ConfigError, InputError, NotFittedError
from edge.strategies.base import LearnSettings, Strategy, check_state, masked_softmax

#: The ridge penalty chosen by generalized cross-validation (`RidgeStrategy`, ``lam="auto"``).
LAMBDA_AUTO = "auto"
#: The GCV grid: ``lambda = mean eigenvalue * 10**k`` for these ``k``.
GCV_EXPONENTS = np.linspace(-6.0, 3.0, 37)


def gcv_ridge(eigvals: np.ndarray, q: np.ndarray, n_rows: int,
              exponents: np.ndarray = GCV_EXPONENTS) -> tuple[float, np.ndarray]:
    """The GCV-optimal ``lambda`` and its score per grid point, from ``G``'s eigenvalues ``(D,)``,
    ``Q = V^T C`` ``(D, K)`` and the number of one-hot rows ``N``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> h = rng.normal(size=(200, 5)); y = np.eye(2)[(h[:, 0] > 0).astype(int)]
        >>> s, v = np.linalg.eigh(h.T @ h)
        >>> lam, scores = gcv_ridge(s, v.T @ (h.T @ y), 200)
        >>> lam > 0 and scores.shape == (37,)
        True
    """
    s = np.maximum(eigvals, 0.0)
    qq = (q * q).sum(axis=1)                         # |Q_i|^2 over the K outputs
    base = max(float(s.mean()), 1e-12)
    lams = base * 10.0 ** exponents
    scores = np.empty(len(lams))
    for j, lam in enumerate(lams):
        rss = n_rows - float((qq * (s + 2.0 * lam) / (s + lam) ** 2).sum())
        df = float((s / (s + lam)).sum())
        scores[j] = np.inf if df >= n_rows else (max(rss, 0.0) / n_rows) / (1.0 - df / n_rows) ** 2
    return float(lams[int(np.argmin(scores))]), scores


class RidgeStrategy(Strategy):
    """Ridge regression on a random ReLU projection; exact, order-independent, mergeable.

    Probabilities: softmax over the seen classes of ``h W / temperature`` (the regression targets
    are one-hot, so a clear answer scores ~1 against ~0).

    Args:
        dims: projection width ``D`` (default 2048; the Gram matrix is ``D x D`` float64).
        seed: seed of the projection (regenerated, never stored).
        lam: ``"auto"`` (GCV, default) or a fixed penalty > 0.
        temperature: softness of the probabilities (does not change the predicted class).

    Example:
        >>> import numpy as np
        >>> from types import SimpleNamespace
        >>> cfg = SimpleNamespace(max_classes=3)
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(60, 4)) + np.repeat(np.eye(4)[:3] * 4, 20, axis=0); y = np.repeat([0, 1, 2], 20)
        >>> s = RidgeStrategy(dims=64)
        >>> s.learn(None, None, x, y, rng, cfg); s.refresh()
        >>> float((s.predict_proba(None, x).argmax(1) == y).mean()) > 0.9
        True
    """

    name = "ridge"
    owns_classifier = True
    #: ``(version, W (D, K), lambda)`` computed by `refresh`.
    _cache: tuple[int, np.ndarray, float] | None = None
    _version = 0

    def __init__(self, dims: int = 2048, seed: int = 0, lam: float | str = LAMBDA_AUTO,
                 temperature: float = 0.1) -> None:
        self.dims = dims
        self.seed = seed
        self.lam = lam
        self.temperature = temperature

    def params(self) -> dict[str, Any]:
        return {"dims": self.dims, "seed": self.seed, "lam": self.lam, "temperature": self.temperature}

    def _check(self) -> None:
        if isinstance(self.dims, bool) or not isinstance(self.dims, int) or not 1 <= self.dims <= 16_384:
            raise ConfigError(f"ridge: dims expected an int in [1, 16384], got {self.dims!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"ridge: seed expected an int >= 0, got {self.seed!r}")
        if self.lam != LAMBDA_AUTO and (isinstance(self.lam, (bool, str)) or not float(self.lam) > 0):
            raise ConfigError(f"ridge: lam expected {LAMBDA_AUTO!r} or a number > 0, got {self.lam!r}")
        if isinstance(self.temperature, bool) or not float(self.temperature) > 0:
            raise ConfigError(f"ridge: temperature expected > 0, got {self.temperature!r}")

    # ------------------------------------------------------------------ projection
    def projection(self, embedding_size: int) -> np.ndarray:
        """``R`` ``(d, D)`` float32: standard normal / sqrt(d), from ``seed`` (cached per size)."""
        cached = getattr(self, "_projection", None)
        if cached is None or cached.shape[0] != embedding_size:
            rng = np.random.default_rng(self.seed)
            cached = (rng.standard_normal((embedding_size, self.dims), dtype=np.float32)
                      / np.float32(np.sqrt(embedding_size)))
            self._projection = cached
        return cached

    def features(self, emb: np.ndarray) -> np.ndarray:
        """``relu(x R)`` ``(N, D)`` float64 of standardised embeddings ``(N, d)``."""
        z = np.asarray(emb, np.float32)
        h: np.ndarray = z @ self.projection(z.shape[1])
        np.maximum(h, 0.0, out=h)
        return h.astype(np.float64)

    # ------------------------------------------------------------------ statistics
    def statistics_of(self, emb: np.ndarray, labels: np.ndarray, max_classes: int) -> dict[str, np.ndarray]:
        """The sufficient statistics ``{"gram", "sums", "count"}`` of some rows (what `learn` adds)."""
        self._check()
        h = self.features(emb)
        y = np.asarray(labels, np.int64)
        if y.shape != (h.shape[0],) or (y.size and (y.min() < 0 or y.max() >= max_classes)):
            raise InputError(f"ridge: expected {h.shape[0]} labels in [0, {max_classes - 1}], got {y.shape}")
        sums = np.zeros((self.dims, max_classes))
        np.add.at(sums.T, y, h)
        return {"gram": h.T @ h, "sums": sums, "count": np.bincount(y, minlength=max_classes).astype(np.int64)}

    def add_statistics(self, other: dict[str, np.ndarray], sign: int = 1) -> None:
        """Add (or with ``sign=-1`` subtract) sufficient statistics of other rows: another device's
        pack, or a teach to undo. Shapes are checked; a negative count raises and changes nothing."""
        gram, sums, count = (np.asarray(other[k]) for k in ("gram", "sums", "count"))
        if getattr(self, "gram_", None) is None:
            if sign < 0:
                raise InputError("ridge: expected learned statistics to subtract from, got none")
            self.gram_ = np.zeros((self.dims, self.dims))
            self.sums_ = np.zeros((self.dims, count.shape[0]))
            self.count_ = np.zeros(count.shape[0], np.int64)
        if gram.shape != self.gram_.shape or sums.shape != self.sums_.shape or count.shape != self.count_.shape:
            raise InputError(f"ridge statistics: expected gram {self.gram_.shape}, sums {self.sums_.shape}, "
                             f"count {self.count_.shape}; got {gram.shape}, {sums.shape}, {count.shape}")
        new_count = self.count_ + sign * count
        if (new_count < 0).any():
            raise InputError("ridge statistics: expected to remove at most the rows learned, got more")
        self.gram_ = self.gram_ + sign * gram
        self.sums_ = self.sums_ + sign * sums
        self.count_ = new_count
        self._version += 1
        self._cache = None

    def subtract_statistics(self, other: dict[str, np.ndarray]) -> None:
        """Remove rows added before (see `add_statistics`)."""
        self.add_statistics(other, sign=-1)

    def learn(self, head: Head | None, buffer: ReplayBuffer, emb: np.ndarray, labels: np.ndarray,
              rng: np.random.Generator, cfg: LearnSettings) -> None:
        self.add_statistics(self.statistics_of(emb, labels, int(cfg.max_classes)))

    # ------------------------------------------------------------------ solution
    def refresh(self) -> None:
        """Solve the ridge regression (lambda by GCV) for the statistics as they are now."""
        if getattr(self, "gram_", None) is not None and self.count_.any():
            self._solve()

    def _solve(self) -> tuple[np.ndarray, float]:
        cache = self._cache
        if cache is None or cache[0] != self._version:
            s, v = np.linalg.eigh(self.gram_)
            q = v.T @ self.sums_
            n = int(self.count_.sum())
            lam = gcv_ridge(s, q, n)[0] if self.lam == LAMBDA_AUTO else float(self.lam)
            w = v @ (q / (np.maximum(s, 0.0) + lam)[:, None])
            cache = self._cache = (self._version, w, lam)
        return cache[1], cache[2]

    @property
    def lam_used_(self) -> float:
        """The penalty of the current solution."""
        return self._solve()[1]

    def predict_proba(self, head: Head | None, emb: np.ndarray) -> np.ndarray:
        if getattr(self, "gram_", None) is None or not self.count_.any():
            raise NotFittedError("ridge: expected at least one seen class before predicting, got none")
        self._check()
        w, _ = self._solve()
        return masked_softmax(self.features(emb) @ w / float(self.temperature), self.count_ > 0)

    @property
    def classes_(self) -> np.ndarray:
        count = getattr(self, "count_", None)
        return np.zeros(0, np.int64) if count is None else np.flatnonzero(count)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, np.ndarray]:
        if getattr(self, "gram_", None) is None:
            return {}
        return {"gram": self.gram_.copy(), "sums": self.sums_.copy(), "count": self.count_.copy()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self._cache = None
        self._version += 1
        if not state:
            self._forget("gram_", "sums_", "count_")
            return
        a = check_state("ridge", state, {"gram": (np.float64, (self.dims, self.dims)),
                                         "sums": (np.float64, (self.dims, None)), "count": (np.int64, (None,))})
        if a["sums"].shape[1] != a["count"].shape[0] or (a["count"] < 0).any():
            raise InputError(f"ridge state: expected sums (D, K) and K counts >= 0, got {a['sums'].shape} "
                             f"and {a['count'].shape}")
        self.gram_, self.sums_, self.count_ = a["gram"].copy(), a["sums"].copy(), a["count"].copy()

    @property
    def nbytes(self) -> int:
        """State (Gram ``D x D``, class sums, counts) plus the solution ``(D, K)`` and the projection
        ``(d, D)`` float32 (regenerated from the seed, never stored)."""
        if getattr(self, "gram_", None) is None:
            return 0
        proj = getattr(self, "_projection", None)
        return super().nbytes + self.sums_.nbytes + (0 if proj is None else int(proj.nbytes))
