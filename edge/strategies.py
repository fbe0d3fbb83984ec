"""Continual-learning strategies: how one incoming batch trains the head and updates the buffer.

The seam is one small class. `Strategy.learn(head, buffer, emb, labels, rng, cfg)` does all the
work of one training batch and returns None. A strategy may keep its own state (`state_dict`,
`load_state_dict`, `nbytes`). A strategy that owns its own classifier instead of training the
gradient head (streaming LDA, nearest class mean, ...) sets ``owns_classifier = True`` and
implements `predict_proba(head, emb)`; the agent then asks the strategy rather than the head.

``cfg`` is any object with the attributes ``epochs``, ``batch_size`` and ``replay_ratio`` (the
`edge.agent.AgentConfig` in practice).

Example:
    >>> import numpy as np
    >>> from types import SimpleNamespace
    >>> from edge.buffer import ReplayBuffer
    >>> from edge.heads import SoftmaxHead
    >>> cfg = SimpleNamespace(epochs=1, batch_size=8, replay_ratio=0.5)
    >>> head, buf = SoftmaxHead(4, 3), ReplayBuffer(10, 4, max_classes=3)
    >>> s = make_strategy("replay")
    >>> s.learn(head, buf, np.ones((6, 4), np.float32), np.zeros(6, np.int64), np.random.default_rng(0), cfg)
    >>> len(buf)
    6
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from edge.buffer import ReplayBuffer


class LearnSettings(Protocol):
    """The part of the agent configuration a strategy reads."""

    epochs: int
    batch_size: int
    replay_ratio: float


class Strategy:
    """Base strategy: stateless, trains the gradient head. Subclasses override `learn`."""

    name = "base"
    #: True when the strategy predicts by itself (then `predict_proba` must be implemented).
    owns_classifier = False
    #: True when the strategy replays from the buffer; otherwise the agent allocates no buffer rows,
    #: so the memory reported is what the strategy really needs.
    uses_buffer = False

    def learn(self, head: Any, buffer: ReplayBuffer, emb: np.ndarray, labels: np.ndarray,
              rng: np.random.Generator, cfg: LearnSettings) -> None:  # pragma: no cover - abstract
        """Train on one batch of validated embeddings; returns None."""
        raise NotImplementedError

    def predict_proba(self, head: Any, emb: np.ndarray) -> np.ndarray:
        """Class probabilities; only used when ``owns_classifier`` is True."""
        return head.predict_proba(emb)

    def params(self) -> dict[str, Any]:
        """Constructor arguments (JSON-serialisable)."""
        return {}

    def state_dict(self) -> dict[str, np.ndarray]:
        """Learned state as plain arrays (none by default)."""
        return {}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore learned state (none by default)."""

    @property
    def nbytes(self) -> int:
        """Bytes of learned state."""
        return int(sum(np.asarray(v).nbytes for v in self.state_dict().values()))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


class NaiveStrategy(Strategy):
    """Fine-tune the head on the incoming batch only (the lower bound: forgets)."""

    name = "naive"

    def learn(self, head: Any, buffer: ReplayBuffer, emb: np.ndarray, labels: np.ndarray,
              rng: np.random.Generator, cfg: LearnSettings) -> None:
        head.partial_fit(emb, labels, epochs=cfg.epochs, batch_size=cfg.batch_size, rng=rng)


class ReplayStrategy(Strategy):
    """Latent replay: mini-batches mix new embeddings with samples from the buffer.

    Each mini-batch of ``cfg.batch_size`` rows holds a fraction ``replay_ratio`` (this strategy's
    parameter, else ``cfg.replay_ratio``) of buffer samples and the rest new rows; one epoch is
    one pass over the new rows. After training, the batch is offered to the buffer.
    """

    name = "replay"
    uses_buffer = True

    def __init__(self, replay_ratio: float | None = None) -> None:
        self.replay_ratio = replay_ratio

    def params(self) -> dict[str, Any]:
        return {"replay_ratio": self.replay_ratio}

    def learn(self, head: Any, buffer: ReplayBuffer, emb: np.ndarray, labels: np.ndarray,
              rng: np.random.Generator, cfg: LearnSettings) -> None:
        ratio = cfg.replay_ratio if self.replay_ratio is None else self.replay_ratio
        if not 0.0 <= float(ratio) < 1.0:
            raise ValueError(f"replay_ratio: expected a value in [0, 1), got {ratio}")
        batch = int(cfg.batch_size)
        n_new = max(1, int(round(batch * (1.0 - float(ratio))))) if len(buffer) else batch
        n_old = batch - n_new if len(buffer) else 0
        n = emb.shape[0]
        for _ in range(int(cfg.epochs)):
            order = rng.permutation(n)
            for start in range(0, n, n_new):
                idx = order[start:start + n_new]
                if n_old:
                    old_x, old_y = buffer.sample(n_old, rng)
                    head.step(np.concatenate([emb[idx], old_x]), np.concatenate([labels[idx], old_y]))
                else:
                    head.step(emb[idx], labels[idx])
        buffer.add(emb, labels)


#: Strategy classes by name; `make_strategy` builds one.
STRATEGIES: dict[str, type[Strategy]] = {"naive": NaiveStrategy, "replay": ReplayStrategy}


def make_strategy(name: str, **params: Any) -> Strategy:
    """Build a registered strategy; unknown names or parameters raise ValueError."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy: expected one of {sorted(STRATEGIES)}, got {name!r}")
    try:
        return STRATEGIES[name](**params)
    except TypeError as exc:
        raise ValueError(f"strategy {name!r}: bad parameters {params}: {exc}") from exc
