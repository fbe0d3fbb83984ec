"""Rehearsal-free and rehearsal baselines: naive fine-tuning, latent replay, cumulative retraining."""

from __future__ import annotations

from typing import Any

import numpy as np

from edge.base import Head
from edge.buffer import ReplayBuffer
from edge.errors import ConfigError, InputError
from edge.heads import SoftmaxHead
from edge.logistic import DEFAULT_L2
from edge.strategies.base import (
    LearnSettings,
    Strategy,
    check_state,
    minibatches,
    replay_minibatches,
    require_head,
)
from edge.strategies.refit import fit_head


class NaiveStrategy(Strategy):
    """Fine-tune the head on the incoming batch only (the lower bound: forgets)."""

    name = "naive"
    supports_tflite_head = True

    def learn(self, head: Head | None, buffer: ReplayBuffer, emb: np.ndarray, labels: np.ndarray,
              rng: np.random.Generator, cfg: LearnSettings) -> None:
        require_head(head, self.name).partial_fit(emb, labels, epochs=cfg.epochs,
                                                  batch_size=cfg.batch_size, rng=rng)


class ReplayStrategy(Strategy):
    """Latent replay: mini-batches mix new embeddings with samples from the buffer.

    Each mini-batch of ``cfg.batch_size`` rows holds a fraction ``replay_ratio`` (this strategy's
    parameter, else ``cfg.replay_ratio``, 0.75 by default: the old share) of buffer samples and
    the rest new rows; one epoch is one pass over the new rows. After training, the batch is
    offered to the buffer (`Strategy.remember`, called by the agent), whose policy (``AgentConfig.buffer_policy``, class-balanced reservoir by
    default) decides what stays. With an empty buffer (capacity 0) this is exactly ``naive``.
    """

    name = "replay"
    uses_buffer = True
    supports_tflite_head = True

    def __init__(self, replay_ratio: float | None = None) -> None:
        self.replay_ratio = replay_ratio

    def params(self) -> dict[str, Any]:
        return {"replay_ratio": self.replay_ratio}

    def learn(self, head: Head | None, buffer: ReplayBuffer, emb: np.ndarray, labels: np.ndarray,
              rng: np.random.Generator, cfg: LearnSettings) -> None:
        head = require_head(head, self.name)
        ratio = cfg.replay_ratio if self.replay_ratio is None else self.replay_ratio
        for x, y in replay_minibatches(emb, labels, buffer, ratio, rng, cfg):
            head.step(x, y)


#: Checkpoint key of cumulative's stored rows: standardised embeddings (older files stored raw rows
#: under ``x``, with no marker; they are refused rather than read wrong).
STORED_KEY = "x_standardised"


class CumulativeStrategy(Strategy):
    """Train the head on every embedding seen so far, to convergence: the joint-training upper bound.

    UNBOUNDED MEMORY AND QUADRATIC COMPUTE: every embedding ever seen is kept (float32, growing
    without limit) and each batch trains over all of them, so this is a reference for the
    simulator, not something to ship on a device.

    Default (``epochs=None``, ``solver="auto"``): on the NumPy softmax head, after each batch the
    head is fitted by L-BFGS to the optimum of the L2-regularised cross-entropy on all the data
    seen so far (`edge.logistic.fit_logistic`, penalty ``l2``), stopping when the weights are
    provably within ``lbfgs_tol`` of it: the converged joint bound, with a stopping rule that
    follows the data instead of an epoch count. On the MLP and ``.tflite`` heads (``solver="sgd"``) it trains one
    epoch at a time until the epoch's mean training loss improves by less than ``tol`` (relative)
    over the previous epoch, or ``max_epochs`` epochs (a heuristic: measured 87.3 vs 92.7 % for
    the converged fit on 1280-d rows). Both start from the head of the previous batch
    (``warm_start``): the regularised softmax loss is strictly convex, so its optimum does not
    depend on where it starts. ``warm_start=False`` retrains from the initial weights every batch.

    With ``epochs`` set (the old definition, exact): after each batch the head equals a freshly
    constructed head (same seed) trained with ``partial_fit(all_x, all_y, epochs, batch_size, rng)``
    on the concatenation of all batches so far, in arrival order, with the agent's generator as it
    was when the batch arrived.

    Args:
        epochs: fixed passes over all the data at each retraining, from scratch (None: to convergence).
        max_epochs: cap on the epochs of one retraining to convergence (default 30).
        tol: relative improvement of the epoch's mean loss below which SGD training stops (default 0.01).
        warm_start: start each retraining to convergence from the previous head (default True).
        solver: ``"auto"`` (L-BFGS on the NumPy softmax head; SGD on the MLP head and on the ``.tflite``
            head, which keeps its file's update rule), ``"lbfgs"`` or ``"sgd"``.
        l2: the L-BFGS fit's penalty (default `edge.logistic.DEFAULT_L2`).
        lbfgs_tol: the L-BFGS fit's relative distance to the optimum (default 1e-4).
    """

    name = "cumulative"
    supports_tflite_head = True
    #: Epochs (SGD) or L-BFGS iterations the last retraining ran (not state; for reports and tests).
    epochs_run_: int = 0

    def __init__(self, epochs: int | None = None, max_epochs: int = 30, tol: float = 0.01,
                 warm_start: bool = True, solver: str = "auto", l2: float = DEFAULT_L2,
                 lbfgs_tol: float = 1e-4) -> None:
        self.epochs = epochs
        self.max_epochs = max_epochs
        self.tol = tol
        self.warm_start = warm_start
        self.solver = solver
        self.l2 = l2
        self.lbfgs_tol = lbfgs_tol

    def params(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "max_epochs": self.max_epochs, "tol": self.tol,
                "warm_start": self.warm_start, "solver": self.solver, "l2": self.l2, "lbfgs_tol": self.lbfgs_tol}

    def _solver(self, head: Head) -> str:
        if self.solver not in ("auto", "lbfgs", "sgd"):
            raise ConfigError(f"cumulative: solver expected one of ('auto', 'lbfgs', 'sgd'), got {self.solver!r}")
        if self.solver == "auto":   # the NumPy softmax head; the .tflite head keeps its file's update rule
            return "lbfgs" if isinstance(head, SoftmaxHead) else "sgd"
        return str(self.solver)

    def learn(self, head: Head | None, buffer: ReplayBuffer, emb: np.ndarray, labels: np.ndarray,
              rng: np.random.Generator, cfg: LearnSettings) -> None:
        head = require_head(head, self.name)
        if self.epochs is None and (int(self.max_epochs) < 1 or not float(self.tol) >= 0):
            raise ConfigError(f"cumulative: expected max_epochs >= 1 and tol >= 0, got {self.max_epochs} "
                              f"and {self.tol}")
        n, d = emb.shape
        size = getattr(self, "size_", 0)
        if size == 0:
            self.x_ = np.zeros((max(n, 64), d), np.float32)
            self.y_ = np.zeros(max(n, 64), np.int64)
            self.init_seed_ = int(head.seed)  # every retraining from scratch starts from these weights
        elif self.x_.shape[1] != d:
            raise InputError(f"embeddings: expected shape (N, {self.x_.shape[1]}), got {emb.shape}")
        if size + n > self.x_.shape[0]:  # amortised growth: double the allocation
            cap = max(2 * self.x_.shape[0], size + n)
            self.x_ = np.concatenate([self.x_[:size], np.zeros((cap - size, d), np.float32)])
            self.y_ = np.concatenate([self.y_[:size], np.zeros(cap - size, np.int64)])
        self.x_[size:size + n] = emb
        self.y_[size:size + n] = labels
        self.size_ = size + n
        x, y = self.x_[:self.size_], self.y_[:self.size_]
        if self.epochs is not None:
            head.reset(self.init_seed_)
            head.partial_fit(x, y, epochs=self.epochs, batch_size=cfg.batch_size, rng=rng)
            self.epochs_run_ = int(self.epochs)
            return
        if not self.warm_start:
            head.reset(self.init_seed_)
        if self._solver(head) == "lbfgs":
            fit = fit_head(head, x, y, l2=float(self.l2), max_iter=5000, tol=float(self.lbfgs_tol),
                           owner=self.name)
            self.epochs_run_ = fit.iterations
            return
        previous = np.inf
        for epoch in range(1, int(self.max_epochs) + 1):
            losses = [head.step(x[idx], y[idx]) * len(idx)
                      for idx in minibatches(self.size_, 1, cfg.batch_size, rng)]
            loss = float(sum(losses)) / self.size_
            self.epochs_run_ = epoch
            if previous - loss < float(self.tol) * abs(previous):
                break
            previous = loss

    def state_dict(self) -> dict[str, np.ndarray]:
        size = getattr(self, "size_", 0)
        if size == 0:
            return {}
        return {STORED_KEY: self.x_[:size].copy(), "y": self.y_[:size].copy(),
                "init_seed": np.array(self.init_seed_, np.int64)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        if not state:
            self.size_ = 0
            return
        if "x" in state and STORED_KEY not in state:
            raise InputError(f"cumulative state: expected standardised rows under {STORED_KEY!r}, got raw "
                             "rows under 'x' (a checkpoint written before the agent standardised them; "
                             "reading it would mix raw and standardised embeddings): relearn the stream "
                             "or start from a newer checkpoint")
        arrays = check_state("cumulative", state, {STORED_KEY: (np.float32, (None, None)),
                                                   "y": (np.int64, (None,)), "init_seed": (np.int64, ())})
        if arrays["y"].shape[0] != arrays[STORED_KEY].shape[0]:
            raise InputError(f"cumulative state: expected one label per row ({arrays[STORED_KEY].shape[0]}), "
                             f"got {arrays['y'].shape[0]}")
        self.x_, self.y_ = arrays[STORED_KEY].copy(), arrays["y"].copy()
        self.init_seed_ = int(arrays["init_seed"])
        self.size_ = int(self.x_.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes allocated for the stored embeddings and labels (grows without bound)."""
        if getattr(self, "size_", 0) == 0:
            return 0
        return int(self.x_.nbytes + self.y_.nbytes)
