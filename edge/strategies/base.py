"""The strategy seam: one small base class and the helpers every strategy shares."""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Protocol

import numpy as np

from edge.base import Head, LogitGrad
from edge.buffer import ReplayBuffer
from edge.errors import ConfigError, InputError, NotFittedError
from edge.stats import ClassStatistics


class LearnSettings(Protocol):
    """The part of the agent configuration a strategy reads (read-only)."""

    @property
    def epochs(self) -> int: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def replay_ratio(self) -> float: ...
    @property
    def max_classes(self) -> int: ...


class Strategy:
    """Base strategy: stateless, trains the gradient head. Subclasses override `learn`.

    Constructor arguments are the strategy's hyperparameters and nothing else (`params` returns
    them); learned state is created on the first `learn` and exported by `state_dict` as plain
    arrays (the agent stores them under ``strategy.*`` in its checkpoints). A strategy reaches the
    head only through the `edge.base.Head` protocol, and receives embeddings already standardised
    by the agent.
    """

    name = "base"
    #: True when the strategy predicts by itself (then `predict_proba` and `classes_` are its own).
    owns_classifier = False
    #: True when the strategy replays from the buffer; otherwise the agent allocates no buffer rows,
    #: so the memory reported is what the strategy really needs.
    uses_buffer = False
    #: True when the strategy only takes plain gradient steps (`Head.step` without hooks,
    #: `partial_fit`, `reset`), so it runs on the ``.tflite`` head backend too.
    supports_tflite_head = False
    #: True when the strategy classifies from the agent's class statistics (`edge.stats`): the
    #: agent hands its own over with `attach_statistics` and adds each batch to them right AFTER
    #: `learn` (so `learn` sees the statistics as they were before the batch).
    reads_statistics = False
    #: The attached class statistics (None until `attach_statistics`).
    stats: ClassStatistics | None = None

    def attach_statistics(self, stats: ClassStatistics) -> None:
        """Read class statistics from ``stats`` (owned and updated by the agent)."""
        self.stats = stats

    def require_statistics(self) -> ClassStatistics:
        """The attached statistics, or `NotFittedError` when none were attached."""
        if self.stats is None:
            raise NotFittedError(f"strategy {self.name!r}: expected class statistics "
                                 "(Strategy.attach_statistics; the agent attaches its own), got none")
        return self.stats

    def learn(self, head: Head | None, buffer: ReplayBuffer, emb: np.ndarray, labels: np.ndarray,
              rng: np.random.Generator, cfg: LearnSettings) -> None:  # pragma: no cover - abstract
        """Train on one batch of validated, standardised embeddings; returns None.

        ``head`` is None for a strategy that ``owns_classifier`` (the agent builds no gradient
        head for it). Rows sampled from ``buffer`` come out standardised like ``emb``."""
        raise NotImplementedError

    def refresh(self) -> None:
        """After the agent added a learned batch to the class statistics (right after `learn`, on
        the same thread): precompute what predictions derive from them (SLDA's precision), so the
        first prediction after a teach does not. Nothing by default."""

    def remember(self, buffer: ReplayBuffer, emb: np.ndarray, labels: np.ndarray) -> None:
        """After `learn`: offer the batch to the buffer, as the backbone produced it (not
        standardised: the buffer stores raw rows and standardises what it returns). By default
        every row when ``uses_buffer``; the buffer's policy decides what stays."""
        if self.uses_buffer:
            buffer.add(emb, labels)

    def predict_proba(self, head: Head | None, emb: np.ndarray) -> np.ndarray:
        """Class probabilities; only used when ``owns_classifier`` is True."""
        return require_head(head, self.name).predict_proba(emb)

    @property
    def classes_(self) -> np.ndarray:
        """Labels seen so far (only asked when ``owns_classifier`` is True)."""
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """Constructor arguments (JSON-serialisable)."""
        return {}

    def state_dict(self) -> dict[str, np.ndarray]:
        """Learned state as plain arrays (none by default)."""
        return {}

    @staticmethod
    def split_legacy_state(state: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
        """A strategy state written before the agent kept class statistics (`edge.stats`) ->
        ``(this strategy's state, {"count", "sum"} of the class statistics or None)``. A strategy
        that kept its own class sums then maps them here; by default the state is unchanged."""
        return state, None

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore learned state (none by default); unexpected keys raise InputError."""
        if state:
            raise InputError(f"strategy {self.name!r} state: expected no keys, got {sorted(state)}")

    @property
    def nbytes(self) -> int:
        """Bytes of learned state."""
        return int(sum(np.asarray(v).nbytes for v in self.state_dict().values()))

    def _forget(self, *names: str) -> None:
        """Drop learned attributes (back to "nothing learned yet", as before the first `learn`)."""
        for name in names:
            self.__dict__.pop(name, None)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


def minibatches(n: int, epochs: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Row indices of each mini-batch, in exactly the order `head.partial_fit` visits them.

    One shuffled permutation per epoch, cut into consecutive chunks of ``batch_size``; strategies
    that add a term to the loss use this so that, with the term switched off, they train exactly
    like ``naive``.
    """
    for _ in range(int(epochs)):
        order = rng.permutation(n)
        for start in range(0, n, int(batch_size)):
            yield order[start:start + int(batch_size)]


def replay_minibatches(emb: np.ndarray, labels: np.ndarray, buffer: ReplayBuffer, ratio: float,
                       rng: np.random.Generator, cfg: LearnSettings) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Mini-batches mixing new rows with buffer samples (latent replay).

    Each mini-batch of ``cfg.batch_size`` rows holds a fraction ``ratio`` of rows drawn from the
    buffer (uniformly, without replacement within the mini-batch) and the rest new rows; one epoch
    is one pass over the new rows. With an empty buffer this is exactly `minibatches`.
    """
    if not 0.0 <= float(ratio) < 1.0:
        raise ConfigError(f"replay_ratio: expected a value in [0, 1), got {ratio}")
    batch = int(cfg.batch_size)
    n_new = max(1, int(round(batch * (1.0 - float(ratio))))) if len(buffer) else batch
    n_old = batch - n_new if len(buffer) else 0
    for idx in minibatches(emb.shape[0], cfg.epochs, n_new, rng):
        if n_old:
            old_x, old_y = buffer.sample(n_old, rng)
            yield np.concatenate([emb[idx], old_x]), np.concatenate([labels[idx], old_y])
        else:
            yield emb[idx], labels[idx]


def check_state(owner: str, state: Mapping[str, np.ndarray],
                spec: Mapping[str, tuple[Any, tuple[int | None, ...]]]) -> dict[str, np.ndarray]:
    """Validate a strategy state against ``{key: (dtype, shape)}`` (None in a shape: any size).

    Returns the arrays (as ndarrays). Missing or unexpected keys, wrong dtypes or shapes raise
    InputError naming expected vs got. Sizes marked None must agree across keys per position
    name only through the caller's own checks.
    """
    missing = sorted(set(spec) - set(state))
    extra = sorted(set(state) - set(spec))
    if missing or extra:
        raise InputError(f"{owner} state: expected keys {sorted(spec)}, missing {missing}, unexpected {extra}")
    out = {}
    for key, (dtype, shape) in spec.items():
        got = np.asarray(state[key])
        ok = got.dtype == np.dtype(dtype) and got.ndim == len(shape) and all(
            want is None or want == have for want, have in zip(shape, got.shape))
        if not ok:
            want = tuple("*" if s is None else s for s in shape)
            raise InputError(f"{owner} state {key!r}: expected {np.dtype(dtype)}{want}, got {got.dtype}{got.shape}")
        out[key] = got
    return out


def masked_softmax(scores: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Row-wise softmax over the ``seen`` columns (float32); unseen columns are exactly 0."""
    z = np.where(seen, scores, -np.inf).astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z.astype(np.float32)


#: Which output units the softmax of the training loss spans (`unit_grad`): every unit of the
#: head (``"all"``: the papers' and Avalanche's single-head training, where never-seen classes are
#: pushed down too) or only the classes seen so far (``"seen"``: the head's own mask).
TRAIN_UNITS = ("all", "seen")


def check_train_units(owner: str, value: str) -> str:
    """``value`` if it is one of `TRAIN_UNITS`, else `ConfigError` naming expected vs got."""
    if value not in TRAIN_UNITS:
        raise ConfigError(f"{owner}: train_units expected one of {TRAIN_UNITS}, got {value!r}")
    return value


def unit_grad(head: Head, train_units: str) -> LogitGrad | None:
    """A `Head.step` ``logit_grad`` hook that makes the cross-entropy span ``train_units``.

    The head's own loss is the cross-entropy of a softmax over its seen classes; its gradient with
    respect to the logits is ``(p_seen - onehot) / n``. Over all units it is ``(p_all - onehot) / n``,
    so adding ``(p_all - p_seen) / n`` turns one into the other exactly. None for ``"seen"``.
    """
    if train_units == "seen":
        return None

    def grad(logits: np.ndarray) -> np.ndarray:
        seen = np.zeros(logits.shape[1], bool)
        seen[head.classes_] = True     # the step has already marked this mini-batch's labels
        z = logits.astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        p_all = e / e.sum(axis=1, keepdims=True)
        e_seen = np.where(seen, e, 0.0)
        p_seen = e_seen / e_seen.sum(axis=1, keepdims=True)
        return np.asarray((p_all - p_seen) / logits.shape[0], dtype=np.float32)

    return grad


def add_grads(*hooks: LogitGrad | None) -> LogitGrad | None:
    """One ``logit_grad`` hook summing the given ones (None when all are None)."""
    live = [h for h in hooks if h is not None]
    if not live:
        return None
    if len(live) == 1:
        return live[0]
    return lambda logits: sum((h(logits) for h in live[1:]), live[0](logits))


def require_head(head: Head | None, owner: str) -> Head:
    """``head``, or `ConfigError` when a strategy that trains the gradient head got none."""
    if head is None:
        raise ConfigError(f"strategy {owner!r}: expected a gradient head, got None")
    return head
