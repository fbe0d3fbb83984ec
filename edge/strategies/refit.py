"""Refit the softmax head to convergence on everything the buffer holds, after every teach.

A device is taught tens of frames per class, so its replay buffer (1,000 rows by default) usually
holds every taught row: a head fitted to convergence on the buffer is then exactly the joint
logistic regression on all the data, the bound the other strategies are measured against
(`edge.logistic`). Beyond the buffer's capacity it is GDumb's recipe (Prabhu et al., ECCV 2020: a
class-balanced memory and a model trained from it alone) applied to the head only. The head is a
function of the buffer, so undoing a teach (the rows leave the buffer) and refitting gives the same
head as never having taught it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge.base import Head
from edge.buffer import ReplayBuffer
from edge.errors import ConfigError
from edge.logistic import DEFAULT_L2, LogisticFit, fit_logistic
from edge.strategies.base import LearnSettings, Strategy, require_head


def fit_columns(weights: np.ndarray, bias: np.ndarray, x: np.ndarray, y: np.ndarray, seen: np.ndarray, *,
                l2: float, max_iter: int, tol: float) -> LogisticFit:
    """Fit the ``seen`` class columns of a linear softmax ``x @ weights + bias`` (``(d, K)``, ``(K,)``)
    to convergence on ``(x, y)`` (labels among ``seen``), warm-started from them; written back in
    place (the other columns are left as they are)."""
    column = np.full(bias.shape[0], -1, np.int64)
    column[seen] = np.arange(seen.size)
    fit = fit_logistic(x, column[y], int(seen.size), l2=l2, max_iter=max_iter, tol=tol,
                       init=(weights[:, seen].astype(np.float64), bias[seen].astype(np.float64)))
    weights[:, seen] = fit.weights
    bias[seen] = fit.bias
    return fit


def fit_head(head: Head, x: np.ndarray, y: np.ndarray, *, l2: float, max_iter: int, tol: float,
             owner: str) -> LogisticFit:
    """Fit a linear softmax ``head`` to convergence on ``(x, y)`` (standardised rows), warm-started
    from its current weights; the seen classes become those of ``y`` plus those already seen.
    Unseen classes' weights are left as they are (their probability is 0). `ConfigError` for a
    head whose output layer does not read the embedding directly (the MLP head)."""
    if head.output_layer != ("W", "b"):
        raise ConfigError(f"strategy {owner!r}: expected the linear softmax head (--head softmax), got a head "
                          f"whose output layer is {head.output_layer}")
    seen = np.union1d(head.classes_, y)
    vectors = head.get_output_weights().astype(np.float64)   # (max_classes, d + 1)
    fit = fit_columns(vectors[:, :-1].T, vectors[:, -1], x, y, seen, l2=l2, max_iter=max_iter, tol=tol)  # views
    head.set_output_weights(vectors, reset_optimizer=True)
    head.mark_seen(y)     # after the weights: a backend may restore its seen mask with them
    return fit


class RefitStrategy(Strategy):
    """After each teach, fit the softmax head to convergence (L-BFGS) on the buffer's rows plus the
    new batch; the batch is then offered to the buffer (class-balanced reservoir by default).

    Example:
        >>> import numpy as np
        >>> from types import SimpleNamespace
        >>> from edge.heads import SoftmaxHead
        >>> cfg = SimpleNamespace(epochs=1, batch_size=8, replay_ratio=0.5, max_classes=3)
        >>> head, buf, s = SoftmaxHead(2, 3), ReplayBuffer(10, 2, max_classes=3), RefitStrategy()
        >>> x, y = np.array([[1, 0], [0, 1]], np.float32), np.array([0, 1])
        >>> s.learn(head, buf, x, y, np.random.default_rng(0), cfg)
        >>> head.predict(x).tolist(), s.last_fit_.converged
        ([0, 1], True)

    Args:
        l2: penalty on the weights (on standardised rows; `edge.logistic.DEFAULT_L2`, 1e-2).
        max_iter: cap on L-BFGS iterations per teach (default 500).
        tol: stop when the weights are provably within ``tol`` (relative) of the optimum (default
            1e-4; `edge.logistic.fit_logistic`).
    """

    name = "refit"
    uses_buffer = True
    #: The last fit (not state; for reports and tests).
    last_fit_: LogisticFit | None = None

    def __init__(self, l2: float = DEFAULT_L2, max_iter: int = 500, tol: float = 1e-4) -> None:
        self.l2 = l2
        self.max_iter = max_iter
        self.tol = tol

    def params(self) -> dict[str, Any]:
        return {"l2": self.l2, "max_iter": self.max_iter, "tol": self.tol}

    def learn(self, head: Head | None, buffer: ReplayBuffer, emb: np.ndarray, labels: np.ndarray,
              rng: np.random.Generator, cfg: LearnSettings) -> None:
        head = require_head(head, self.name)
        old_x, old_y = buffer.contents()
        x = np.concatenate([old_x.astype(np.float32, copy=False), emb]) if old_x.shape[0] else emb
        y = np.concatenate([old_y, labels]) if old_y.shape[0] else labels
        self.last_fit_ = fit_head(head, x, y, l2=float(self.l2), max_iter=int(self.max_iter),
                                  tol=float(self.tol), owner=self.name)
