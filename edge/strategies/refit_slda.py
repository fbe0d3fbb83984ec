"""The joint bound while the buffer holds every taught row, Deep Streaming LDA once it cannot.

Measured (docs/strategies.md, `firmware_sim.studies.embedding_bound`): a softmax head fitted to
convergence on every taught row (`refit` while its buffer holds them all) IS the joint logistic
regression bound, and on the real photographs it beats SLDA by 2-10 points; on long streams (12,000
generated CORe50 rows, 1,000 buffered) a head fitted on the buffer alone falls 8 points below the
bound while SLDA, whose class means and shared covariance are exact sums over EVERY row, ends 3
points above it. This strategy takes each where it wins, with a rule the agent can check exactly:
the buffer holds every taught row (its length equals the class statistics' count) or it does not.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge.base import Head
from edge.buffer import ReplayBuffer
from edge.errors import InputError, NotFittedError
from edge.logistic import DEFAULT_L2, LogisticFit
from edge.stats import ClassStatistics
from edge.strategies.base import LearnSettings, Strategy, check_state, masked_softmax
from edge.strategies.lda import SHRINKAGE_AUTO, SLDAStrategy, subtract_scatter, within_class_scatter
from edge.strategies.refit import fit_columns

#: State keys: the head's weights and bias over every class slot, and which classifier answers.
_HEAD_KEYS = ("weights", "bias")
MODE_KEY = "uses_slda"


class RefitSLDAStrategy(Strategy):
    """``refit`` while the replay buffer holds every taught row, ``slda`` from the teach on which
    it no longer can.

    While the buffer is complete, each teach fits a linear softmax head to convergence (L-BFGS,
    `edge.logistic.fit_logistic`) on the buffer plus the new rows: that head is the joint logistic
    regression on all the data. The teach whose rows would overflow the buffer switches answers to
    Deep Streaming LDA (`edge.strategies.lda.SLDAStrategy`, OAS shrinkage and a fitted temperature):
    its shared within-class scatter is built then from the buffer's rows (which are then all the
    rows, as the buffer stores them: int8 by default, so to that rounding) plus the new ones, and
    updated exactly from then on, with the agent's class statistics (exact sums over every row)
    as its means. Nothing of SLDA is kept, stored or written while the buffer is complete.

    Removing taught rows (undo, forget) takes them out of the buffer and, exactly, out of the
    scatter; if the buffer then holds every remaining row, the head is refitted on it and answers
    again. The head is stored as arrays (``weights`` (d, K), ``bias`` (K,)); unseen classes get
    probability 0.

    Example:
        >>> import numpy as np
        >>> from types import SimpleNamespace
        >>> from edge.stats import ClassStatistics
        >>> stats, buf = ClassStatistics(3, 2), ReplayBuffer(4, 2, max_classes=3)
        >>> s = RefitSLDAStrategy(); s.attach_statistics(stats)
        >>> cfg = SimpleNamespace(max_classes=3)
        >>> for x, y in [([[1, 0], [0, 1]], [0, 1]), ([[2, 0], [0, 2], [1, 1]], [0, 1, 2])]:
        ...     x, y = np.array(x, np.float32), np.array(y)
        ...     s.learn(None, buf, x, y, None, cfg); stats.update(x, y); buf.add(x, y); s.refresh()
        ...     print(s.uses_slda_, s.predict_proba(None, x).argmax(1).tolist())
        False [0, 1]
        True [0, 1, 2]

    Args:
        l2: penalty on the head's weights (standardised rows; `edge.logistic.DEFAULT_L2`).
        max_iter: cap on L-BFGS iterations per teach.
        tol: relative distance to the optimum at which a fit stops (`edge.logistic.fit_logistic`).
        shrinkage: SLDA's shrinkage once it answers (``"auto"``: OAS, re-chosen on every teach).
    """

    name = "refit_slda"
    owns_classifier = True
    uses_buffer = True
    reads_statistics = True
    #: True once the buffer could not hold every taught row: SLDA answers (state).
    uses_slda_ = False
    #: The last head fit (not state; for reports and tests); None after a teach SLDA answered.
    last_fit_: LogisticFit | None = None

    def __init__(self, l2: float = DEFAULT_L2, max_iter: int = 500, tol: float = 1e-4,
                 shrinkage: float | str = SHRINKAGE_AUTO) -> None:
        self.l2 = l2
        self.max_iter = max_iter
        self.tol = tol
        self.shrinkage = shrinkage
        self.slda = SLDAStrategy(shrinkage)

    def params(self) -> dict[str, Any]:
        return {"l2": self.l2, "max_iter": self.max_iter, "tol": self.tol, "shrinkage": self.shrinkage}

    def attach_statistics(self, stats: ClassStatistics) -> None:
        super().attach_statistics(stats)
        self.slda.attach_statistics(stats)

    # -------------------------------------------------------------- learning
    def learn(self, head: Head | None, buffer: ReplayBuffer, emb: np.ndarray, labels: np.ndarray,
              rng: np.random.Generator, cfg: LearnSettings) -> None:
        stats = self.require_statistics()        # as before this batch
        complete = len(buffer) == int(stats.count_.sum())
        overflows = len(buffer) + emb.shape[0] > buffer.capacity
        if complete and overflows and getattr(self.slda, "scatter_", None) is None:
            old_x, old_y = buffer.contents()     # every row taught so far, standardised
            self.slda.scatter_ = within_class_scatter(old_x, old_y, emb.shape[1])
        if getattr(self.slda, "scatter_", None) is not None or not complete:
            self.slda.learn(None, buffer, emb, labels, rng, cfg)   # exact update (stats before the batch)
        self.uses_slda_ = bool(overflows or not complete)
        if self.uses_slda_:
            self.last_fit_ = None
            self._forget("weights_", "bias_")   # not stored once SLDA answers (refitted if it ever stops)
            return
        old_x, old_y = buffer.contents()
        x = np.concatenate([old_x.astype(np.float32, copy=False), emb]) if old_x.shape[0] else emb
        y = np.concatenate([old_y, labels]) if old_y.shape[0] else labels
        self._fit(x, np.asarray(y, np.int64), stats.max_classes)

    def _fit(self, x: np.ndarray, y: np.ndarray, max_classes: int) -> None:
        """Fit the head's seen columns to convergence on ``(x, y)``, warm-started from the last fit."""
        weights = getattr(self, "weights_", None)
        if weights is None or weights.shape != (x.shape[1], max_classes):
            self.weights_ = np.zeros((x.shape[1], max_classes), np.float32)   # as stored: same answers
            self.bias_ = np.zeros(max_classes, np.float32)                    # after a reload
        self.last_fit_ = fit_columns(self.weights_, self.bias_, x, y, np.unique(y), l2=float(self.l2),
                                     max_iter=int(self.max_iter), tol=float(self.tol))

    def refresh(self) -> None:
        """SLDA's precision on the learning thread, when SLDA answers (nothing otherwise)."""
        if self.uses_slda_:
            self.slda.refresh()

    def calibrate_probabilities(self, z: np.ndarray, labels: np.ndarray, burst_sum: np.ndarray,
                                burst_n: np.ndarray) -> float:
        """SLDA's temperature when it answers (`edge.strategies.lda`); the fitted head's own
        probabilities otherwise (1.0)."""
        if not self.uses_slda_:
            self.slda.fitted_temperature_ = 1.0
            return 1.0
        return self.slda.calibrate_probabilities(z, labels, burst_sum, burst_n)

    def forget_rows(self, buffer: ReplayBuffer, z: np.ndarray, labels: np.ndarray, batch: ClassStatistics,
                    remaining: ClassStatistics) -> str:
        """After the agent took the rows out of ``buffer``: take them out of the scatter (exactly)
        and, if the buffer now holds every remaining row, refit the head on it from zero (the head
        of a state that never learned them). ``remaining``: the class statistics without the rows.
        Returns ``"exact"`` (SLDA answers) or ``"refit"``."""
        if getattr(self.slda, "scatter_", None) is not None:
            self.slda.scatter_ = subtract_scatter(self.slda.scatter_, z, labels, batch, remaining)
            self.slda._cache = None
        total = int(remaining.count_.sum())
        self.uses_slda_ = len(buffer) != total
        self._forget("weights_", "bias_")
        self.last_fit_ = None
        if not self.uses_slda_ and total:
            x, y = buffer.contents()
            self._fit(x, y, remaining.max_classes)
        return "exact" if self.uses_slda_ else "refit"

    # -------------------------------------------------------------- answers
    def predict_proba(self, head: Head | None, emb: np.ndarray) -> np.ndarray:
        stats = self.stats
        if stats is None or not stats.count_.any():
            raise NotFittedError("refit_slda: expected at least one seen class before predicting, got none")
        if self.uses_slda_:
            return self.slda.predict_proba(None, emb)
        scores = np.asarray(emb, np.float64) @ self.weights_.astype(np.float64) + self.bias_
        return masked_softmax(scores, stats.count_ > 0)

    @property
    def classes_(self) -> np.ndarray:
        return self.slda.classes_

    # -------------------------------------------------------------- state
    def state_dict(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {f"slda.{k}": v for k, v in self.slda.state_dict().items()}
        if getattr(self, "weights_", None) is not None:
            out.update(weights=self.weights_.copy(), bias=self.bias_.copy())
        if out or self.uses_slda_:
            out[MODE_KEY] = np.array(self.uses_slda_)
        return out

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        state = dict(state)
        slda = {k[len("slda."):]: state.pop(k) for k in list(state) if k.startswith("slda.")}
        head = {k: state.pop(k) for k in _HEAD_KEYS if k in state}
        mode = state.pop(MODE_KEY, None)
        if state:
            raise InputError(f"refit_slda state: unexpected keys {sorted(state)}")
        if head:
            a = check_state("refit_slda", head, {"weights": (np.float32, (None, None)), "bias": (np.float32, (None,))})
            if a["bias"].shape[0] != a["weights"].shape[1]:
                raise InputError(f"refit_slda state: expected bias ({a['weights'].shape[1]},), got {a['bias'].shape}")
        if mode is not None:
            mode = np.asarray(mode)
            if mode.shape != () or mode.dtype != np.bool_:
                raise InputError(f"refit_slda state {MODE_KEY!r}: expected a bool scalar, got {mode.dtype}{mode.shape}")
        self.slda.load_state_dict(slda)
        if head:
            self.weights_, self.bias_ = a["weights"].copy(), a["bias"].copy()
        else:
            self._forget("weights_", "bias_")
        self.uses_slda_ = bool(mode) if mode is not None else False
        if self.uses_slda_ and not slda:
            raise InputError(f"refit_slda state: expected SLDA's scatter with {MODE_KEY} set, got none")

    @property
    def nbytes(self) -> int:
        """The stored arrays (head, and SLDA's scatter once built) plus SLDA's prediction cache
        while it answers (`SLDAStrategy.cache_nbytes`)."""
        return super().nbytes + (self.slda.cache_nbytes if self.uses_slda_ else 0)
