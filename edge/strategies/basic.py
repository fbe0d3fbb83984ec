"""Rehearsal-free and rehearsal baselines: naive fine-tuning, latent replay, cumulative retraining."""

from __future__ import annotations

from typing import Any

import numpy as np

from edge.base import Head
from edge.buffer import ReplayBuffer
from edge.errors import InputError
from edge.strategies.base import LearnSettings, Strategy, check_state, replay_minibatches, require_head


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


class CumulativeStrategy(Strategy):
    """Retrain the head from scratch on every embedding seen so far: the joint-training upper bound.

    UNBOUNDED MEMORY AND QUADRATIC COMPUTE: every embedding ever seen is kept (float32, growing
    without limit) and each batch retrains over all of them, so this is a reference for the
    simulator, not something to ship on a device. Definition (exact): after each batch the head
    equals a freshly constructed head (same seed) trained with
    ``partial_fit(all_x, all_y, epochs, batch_size, rng)`` on the concatenation of all batches so
    far, in arrival order, with the agent's generator as it was when the batch arrived.

    Args:
        epochs: passes over all the data at each retraining (default: the agent's ``epochs``).
    """

    name = "cumulative"
    supports_tflite_head = True

    def __init__(self, epochs: int | None = None) -> None:
        self.epochs = epochs

    def params(self) -> dict[str, Any]:
        return {"epochs": self.epochs}

    def learn(self, head: Head | None, buffer: ReplayBuffer, emb: np.ndarray, labels: np.ndarray,
              rng: np.random.Generator, cfg: LearnSettings) -> None:
        head = require_head(head, self.name)
        n, d = emb.shape
        size = getattr(self, "size_", 0)
        if size == 0:
            self.x_ = np.zeros((max(n, 64), d), np.float32)
            self.y_ = np.zeros(max(n, 64), np.int64)
            self.init_seed_ = int(head.seed)  # every retraining starts from this head's initial weights
        elif self.x_.shape[1] != d:
            raise InputError(f"embeddings: expected shape (N, {self.x_.shape[1]}), got {emb.shape}")
        if size + n > self.x_.shape[0]:  # amortised growth: double the allocation
            cap = max(2 * self.x_.shape[0], size + n)
            self.x_ = np.concatenate([self.x_[:size], np.zeros((cap - size, d), np.float32)])
            self.y_ = np.concatenate([self.y_[:size], np.zeros(cap - size, np.int64)])
        self.x_[size:size + n] = emb
        self.y_[size:size + n] = labels
        self.size_ = size + n
        head.reset(self.init_seed_)
        epochs = cfg.epochs if self.epochs is None else self.epochs
        head.partial_fit(self.x_[:self.size_], self.y_[:self.size_], epochs=epochs,
                         batch_size=cfg.batch_size, rng=rng)

    def state_dict(self) -> dict[str, np.ndarray]:
        size = getattr(self, "size_", 0)
        if size == 0:
            return {}
        return {"x": self.x_[:size].copy(), "y": self.y_[:size].copy(),
                "init_seed": np.array(self.init_seed_, np.int64)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        if not state:
            self.size_ = 0
            return
        arrays = check_state("cumulative", state, {"x": (np.float32, (None, None)), "y": (np.int64, (None,)),
                                                   "init_seed": (np.int64, ())})
        if arrays["y"].shape[0] != arrays["x"].shape[0]:
            raise InputError(f"cumulative state: expected one label per row ({arrays['x'].shape[0]}), "
                             f"got {arrays['y'].shape[0]}")
        self.x_, self.y_ = arrays["x"].copy(), arrays["y"].copy()
        self.init_seed_ = int(arrays["init_seed"])
        self.size_ = int(self.x_.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes allocated for the stored embeddings and labels (grows without bound)."""
        if getattr(self, "size_", 0) == 0:
            return 0
        return int(self.x_.nbytes + self.y_.nbytes)
