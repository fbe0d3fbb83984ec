"""The seams of the edge side: what a head must offer the strategies, and the input standardiser.

`Head` is the protocol every trainable head implements: the NumPy heads of `edge.heads` and the
``.tflite`` head of `edge.tflite_head`. Strategies talk to a head only through it (no private
attributes), so a new backend only has to implement these methods. A head trains on the
embeddings it is given: standardisation belongs to the agent (`Standardizer`), which applies it
once, before the embeddings reach the head and the strategy.

Example:
    >>> import numpy as np
    >>> from edge.heads import SoftmaxHead
    >>> isinstance(SoftmaxHead(embedding_size=4, max_classes=3), Head)
    True
    >>> s = Standardizer(np.array([1.0, 2.0]), np.array([2.0, 0.5]))
    >>> s(np.array([[3.0, 2.5]], np.float32)).tolist()
    [[1.0, 1.0]]
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import numpy as np

from edge.errors import ConfigError

#: Gradient of an extra loss term with respect to a mini-batch's raw logits (`Head.step`).
LogitGrad = Callable[[np.ndarray], np.ndarray]
#: Gradients of an extra loss term with respect to some parameters, by name (`Head.step`).
ParamGrad = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@runtime_checkable
class Head(Protocol):
    """A trainable classification head over ``(N, embedding_size)`` float32 embeddings.

    The label space is fixed at construction (``max_classes``); a class is *seen* once one of its
    labels was trained on, and probabilities are 0 for unseen classes. Learning verbs mutate the
    head and return None (``step`` returns the mini-batch loss).
    """

    embedding_size: int
    max_classes: int
    lr: float
    seed: int

    # ------------------------------------------------------------------ training
    def step(self, x: np.ndarray, y: np.ndarray, *, logit_grad: LogitGrad | None = None,
             param_grad: ParamGrad | None = None) -> float:
        """One gradient step on one mini-batch; returns the cross-entropy before the step.

        ``logit_grad`` / ``param_grad`` add a strategy's loss term (a head that cannot take them,
        such as the ``.tflite`` head, raises NotImplementedError)."""
        ...

    def partial_fit(self, x: np.ndarray, y: np.ndarray, epochs: int = 1, batch_size: int = 32,
                    rng: np.random.Generator | None = None) -> None:
        """``epochs`` passes of shuffled mini-batches over (x, y)."""
        ...

    def reset(self, seed: int | None = None) -> None:
        """Back to freshly constructed: initial weights of ``seed`` (default: the head's own)."""
        ...

    def mark_seen(self, labels: np.ndarray) -> None:
        """Mark ``labels`` as seen without training (a strategy that sets the weights itself)."""
        ...

    # ---------------------------------------------------------------- prediction
    def decision_function(self, x: np.ndarray) -> np.ndarray:
        """Raw logits ``(N, max_classes)`` (unseen classes not masked)."""
        ...

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, max_classes)``, 0 for unseen classes."""
        ...

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Most probable seen class per row (int64)."""
        ...

    @property
    def classes_(self) -> np.ndarray:
        """Labels seen so far, sorted."""
        ...

    # ------------------------------------------------------------------- weights
    def get_weights(self) -> dict[str, np.ndarray]:
        """Copies of the parameters by name (``W``, ``b`` or ``W1``, ``b1``, ``W2``, ``b2``)."""
        ...

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Overwrite some parameters by name (shapes checked; optimizer state untouched)."""
        ...

    @property
    def output_layer(self) -> tuple[str, str]:
        """Names of the output layer's weight matrix and bias (``("W", "b")`` or ``("W2", "b2")``)."""
        ...

    def get_output_weights(self) -> np.ndarray:
        """Output layer as one vector per class: ``(max_classes, fan_in + 1)`` (weights, then bias)."""
        ...

    def set_output_weights(self, vectors: np.ndarray, *, reset_optimizer: bool = False) -> None:
        """Inverse of `get_output_weights`; ``reset_optimizer`` zeroes the output layer's slots."""
        ...

    # --------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, np.ndarray]:
        """Plain arrays: ``param.*``, ``opt.*``, ``t``, ``seen`` (the same keys on every backend)."""
        ...

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore `state_dict` output (checked before anything is written)."""
        ...

    @property
    def nbytes(self) -> int:
        """Bytes of learned state."""
        ...


@runtime_checkable
class FisherHead(Head, Protocol):
    """A `Head` that also gives per-sample squared gradients (EWC's Fisher information)."""

    def squared_grad_sum(self, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        """Sum over rows of the squared per-sample cross-entropy gradients, by parameter name."""
        ...


class Standardizer:
    """``(x - mean) / max(std, 1e-6)`` per column, in float32 (the backbone's pretraining statistics).

    Args:
        mean: ``(embedding_size,)``.
        std: ``(embedding_size,)`` (None: ones).
    """

    def __init__(self, mean: np.ndarray, std: np.ndarray | None = None) -> None:
        self.mean = np.asarray(mean, dtype=np.float32).reshape(-1)
        raw_std = np.ones(self.mean.shape, np.float32) if std is None else np.asarray(std, np.float32)
        self.inv_std = (1.0 / np.maximum(raw_std.reshape(-1), 1e-6)).astype(np.float32)
        if self.inv_std.shape != self.mean.shape:
            raise ConfigError(f"embedding mean/std: expected one shape, got {self.mean.shape} and "
                              f"{self.inv_std.shape}")

    @property
    def embedding_size(self) -> int:
        """Length of the vectors it standardises."""
        return int(self.mean.shape[0])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Standardised float32 copy of ``x`` ``(N, embedding_size)``."""
        out: np.ndarray = (np.asarray(x).astype(np.float32, copy=False) - self.mean) * self.inv_std
        return out

    def __repr__(self) -> str:
        return f"Standardizer(embedding_size={self.embedding_size})"
