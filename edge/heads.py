"""Trainable classification heads in NumPy, on top of frozen embeddings.

Both heads implement the `edge.base.Head` protocol (`step`, `partial_fit`, `predict_proba`,
`predict`, weights get/set, `reset`, `state_dict`, `load_state_dict`, `nbytes`). A head trains on the
embeddings it is given: standardisation is the agent's (`edge.base.Standardizer`). The label space is fixed at construction (``max_classes``) and all
weights are preallocated; a class becomes *seen* the first time one of its labels is trained on, in
any batch. Logits of unseen classes are masked to -inf: they are never predicted and the
probabilities sum to 1 over the seen classes (0 elsewhere).

Example:
    >>> import numpy as np
    >>> from edge.heads import SoftmaxHead
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(64, 8)).astype(np.float32)
    >>> y = (x[:, 0] > 0).astype(np.int64)
    >>> head = SoftmaxHead(embedding_size=8, max_classes=5, lr=0.1, seed=0)
    >>> head.partial_fit(x, y, epochs=20, batch_size=16, rng=rng)
    >>> float((head.predict(x) == y).mean()) > 0.9
    True
    >>> head.predict_proba(x[:1])[0, 2:].tolist()    # never-seen classes
    [0.0, 0.0, 0.0]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge.base import LogitGrad, ParamGrad
from edge.errors import ConfigError, InputError, NotFittedError

OPTIMIZERS = ("sgd", "adam")
_F32 = np.float32



def check_embeddings(x: np.ndarray, embedding_size: int) -> np.ndarray:
    """A 2-D numeric ``(N, embedding_size)`` array, or `InputError` naming expected vs got."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != embedding_size:
        raise InputError(f"embeddings: expected shape (N, {embedding_size}), got {x.shape}")
    if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
        raise InputError(f"embeddings: expected a float array, got {x.dtype}")
    return x


def check_labels(y: np.ndarray, n: int, max_classes: int) -> np.ndarray:
    """``n`` integer labels in ``[0, max_classes)`` as intp, or `InputError` naming expected vs got."""
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != n:
        raise InputError(f"labels: expected shape ({n},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"labels: expected integers, got dtype {y.dtype}")
    if n and (y.min() < 0 or y.max() >= max_classes):
        raise InputError(f"labels: expected values in [0, {max_classes - 1}], "
                         f"got range [{y.min()}, {y.max()}]")
    return y.astype(np.intp, copy=False)


class _GradientHead:
    """Shared machinery: seen-class mask, optimizer, weights access, state."""

    #: Names of the output layer's weight matrix and bias (subclasses).
    _output: tuple[str, str] = ("W", "b")

    def __init__(self, embedding_size: int, max_classes: int, optimizer: str = "sgd", lr: float = 0.01,
                 momentum: float = 0.9, weight_decay: float = 0.0, beta1: float = 0.9,
                 beta2: float = 0.999, eps: float = 1e-8, seed: int = 0) -> None:
        self.embedding_size = embedding_size
        self.max_classes = max_classes
        self.optimizer = optimizer
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.seed = seed

    # ------------------------------------------------------------------ setup
    def _shapes(self) -> dict[str, tuple[int, ...]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    def _ensure_init(self) -> None:
        if hasattr(self, "params_"):
            return
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer: expected one of {OPTIMIZERS}, got {self.optimizer!r}")
        if int(self.embedding_size) <= 0 or int(self.max_classes) <= 1:
            raise ConfigError(f"expected embedding_size >= 1 and max_classes >= 2, got "
                              f"{self.embedding_size} and {self.max_classes}")
        self.params_ = self._init_params(np.random.default_rng(self.seed))
        slots = ("v",) if self.optimizer == "sgd" else ("m", "v")
        self.opt_state_ = {f"{s}.{k}": np.zeros_like(p) for s in slots for k, p in self.params_.items()}
        self.t_ = 0
        self.seen_ = np.zeros(self.max_classes, dtype=bool)

    # -------------------------------------------------------------- validation
    def _check_x(self, x: np.ndarray) -> np.ndarray:
        return check_embeddings(x, self.embedding_size)

    def _check_y(self, y: np.ndarray, n: int) -> np.ndarray:
        return check_labels(y, n, self.max_classes)

    def _input(self, x: np.ndarray) -> np.ndarray:
        return x.astype(_F32, copy=False)

    def mark_seen(self, labels: np.ndarray) -> None:
        """Mark ``labels`` as seen without a gradient step (for a strategy that sets the weights)."""
        self._ensure_init()
        self.seen_[self._check_y(labels, np.asarray(labels).shape[0])] = True

    # ----------------------------------------------------------------- model
    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _backward(self, cache: Any, dlogits: np.ndarray) -> dict[str, np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    def _masked_softmax(self, logits: np.ndarray) -> np.ndarray:
        z = np.where(self.seen_, logits, -np.inf)
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return z

    # ------------------------------------------------------------------ verbs
    def step(self, x: np.ndarray, y: np.ndarray, *,
             logit_grad: LogitGrad | None = None, param_grad: ParamGrad | None = None) -> float:
        """One gradient step on one mini-batch; returns the mean cross-entropy before the step.

        Marks the batch's labels as seen first. Loss: mean cross-entropy over the batch with
        logits of unseen classes masked, plus ``weight_decay / 2 * ||W||^2`` on weight matrices
        (not biases). Update: SGD with momentum ``v = momentum * v + g; p -= lr * v`` or Adam.

        The two optional hooks let a continual-learning strategy add a term to the loss without
        subclassing the head: ``logit_grad(logits)`` returns the gradient of the extra term with
        respect to this mini-batch's raw logits ``(n, max_classes)`` (added to the cross-entropy's,
        e.g. distillation); ``param_grad(params)`` returns ``{name: gradient}`` for some parameters
        (added before weight decay and the update, e.g. an EWC penalty). The returned loss is the
        cross-entropy alone.
        """
        self._ensure_init()
        x = self._check_x(x)
        y = self._check_y(y, x.shape[0])
        if x.shape[0] == 0:
            raise InputError("embeddings: expected at least one row, got an empty batch")
        self.seen_[y] = True
        logits, cache = self._forward(self._input(x))
        proba = self._masked_softmax(logits)
        n = x.shape[0]
        rows = np.arange(n)
        loss = float(-np.log(np.maximum(proba[rows, y], 1e-12)).mean())
        dlogits = proba
        dlogits[rows, y] -= 1.0
        dlogits /= n
        if logit_grad is not None:
            dlogits += logit_grad(logits)
        grads = self._backward(cache, dlogits)
        if param_grad is not None:
            for name, extra in param_grad(self.params_).items():
                grads[name] = grads[name] + extra
        self._apply(grads)
        return loss

    def _apply(self, grads: dict[str, np.ndarray]) -> None:
        self.t_ += 1
        lr = _F32(self.lr)
        for name, p in self.params_.items():
            g = grads[name]
            if self.weight_decay and name.startswith("W"):
                g = g + _F32(self.weight_decay) * p
            if self.optimizer == "sgd":
                v = self.opt_state_[f"v.{name}"]
                v *= _F32(self.momentum)
                v += g
                p -= lr * v
            else:
                m, v = self.opt_state_[f"m.{name}"], self.opt_state_[f"v.{name}"]
                m *= _F32(self.beta1)
                m += _F32(1 - self.beta1) * g
                v *= _F32(self.beta2)
                v += _F32(1 - self.beta2) * (g * g)
                m_hat = m / _F32(1 - self.beta1 ** self.t_)
                v_hat = v / _F32(1 - self.beta2 ** self.t_)
                p -= lr * m_hat / (np.sqrt(v_hat) + _F32(self.eps))

    def partial_fit(self, x: np.ndarray, y: np.ndarray, epochs: int = 1, batch_size: int = 32,
                    rng: np.random.Generator | None = None) -> None:
        """``epochs`` passes of shuffled mini-batches of ``batch_size`` over (x, y). Returns None."""
        self._ensure_init()
        x = self._check_x(x)
        y = self._check_y(y, x.shape[0])
        rng = rng if rng is not None else np.random.default_rng(self.seed)
        n = x.shape[0]
        for _ in range(int(epochs)):
            order = rng.permutation(n)
            for start in range(0, n, int(batch_size)):
                idx = order[start:start + int(batch_size)]
                self.step(x[idx], y[idx])

    def reset(self, seed: int | None = None) -> None:
        """Back to the freshly constructed state: initial weights of ``seed`` (default: the head's
        own), zero optimizer state, nothing seen."""
        for name in ("params_", "opt_state_", "t_", "seen_"):
            self.__dict__.pop(name, None)
        own = self.seed
        self.seed = own if seed is None else int(seed)
        try:
            self._ensure_init()
        finally:
            self.seed = own

    def squared_grad_sum(self, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        """Sum over rows of the squared per-sample gradients of the cross-entropy (no weight decay).

        Divided by the number of rows this is the diagonal of the empirical Fisher information
        (EWC). Exact, without a per-sample loop: each per-sample gradient is an outer product
        ``a_i b_i^T``, whose square is ``a_i^2 (b_i^2)^T``. Does not change any state.
        """
        self._ensure_init()
        x = self._check_x(x)
        y = self._check_y(y, x.shape[0])
        seen = self.seen_.copy()
        self.seen_[y] = True  # the labels are about to be (or were just) trained on
        try:
            logits, cache = self._forward(self._input(x))
            dlogits = self._masked_softmax(logits)
        finally:
            self.seen_[...] = seen
        dlogits[np.arange(x.shape[0]), y] -= 1.0
        return self._squared_backward(cache, dlogits)

    def _squared_backward(self, cache: Any, dlogits: np.ndarray) -> dict[str, np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        """Raw logits ``(N, max_classes)``, unseen classes included (not masked)."""
        self._ensure_init()
        x = self._check_x(x)
        return self._forward(self._input(x))[0]

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, max_classes)``: sum to 1 over seen classes, 0 for unseen."""
        self._ensure_init()
        if not self.seen_.any():
            raise NotFittedError("head: expected at least one seen class before predicting, got none")
        return self._masked_softmax(self.decision_function(x))

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The most probable seen class of each row (int64)."""
        return np.asarray(self.predict_proba(x).argmax(axis=1), dtype=np.int64)

    # ---------------------------------------------------------------- weights
    def get_weights(self) -> dict[str, np.ndarray]:
        """Copies of the parameters by name."""
        self._ensure_init()
        return {name: p.copy() for name, p in self.params_.items()}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Overwrite some parameters by name (cast to float32; optimizer state untouched)."""
        self._ensure_init()
        for name, value in weights.items():
            if name not in self.params_:
                raise InputError(f"head weights: expected names among {sorted(self.params_)}, got {name!r}")
            value = np.asarray(value)
            if value.shape != self.params_[name].shape:
                raise InputError(f"head weights {name!r}: expected shape {self.params_[name].shape}, "
                                 f"got {value.shape}")
        for name, value in weights.items():
            self.params_[name][...] = value

    @property
    def output_layer(self) -> tuple[str, str]:
        """Names of the output layer's weight matrix and bias."""
        return self._output

    def get_output_weights(self) -> np.ndarray:
        """One vector per class ``(max_classes, fan_in + 1)``: its output-layer column, then its bias."""
        self._ensure_init()
        w, b = self._output
        return np.concatenate([self.params_[w].T, self.params_[b][:, None]], axis=1)

    def set_output_weights(self, vectors: np.ndarray, *, reset_optimizer: bool = False) -> None:
        """Inverse of `get_output_weights` (cast to float32); ``reset_optimizer`` also zeroes the
        optimizer slots of the output layer (fresh variables)."""
        self._ensure_init()
        w, b = self._output
        vectors = np.asarray(vectors)
        want = (self.params_[b].shape[0], self.params_[w].shape[0] + 1)
        if vectors.shape != want:
            raise InputError(f"output weights: expected shape {want}, got {vectors.shape}")
        self.params_[w][...] = vectors[:, :-1].T
        self.params_[b][...] = vectors[:, -1]
        if reset_optimizer:
            for key, slot in self.opt_state_.items():
                if key.split(".", 1)[1] in (w, b):
                    slot[...] = 0.0

    # ------------------------------------------------------------------ state
    @property
    def classes_(self) -> np.ndarray:
        """Labels seen so far, sorted."""
        self._ensure_init()
        return np.flatnonzero(self.seen_)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Plain arrays: parameters, optimizer slots, step count, seen mask (copies)."""
        self._ensure_init()
        state = {f"param.{k}": v.copy() for k, v in self.params_.items()}
        state.update({f"opt.{k}": v.copy() for k, v in self.opt_state_.items()})
        state["t"] = np.array(self.t_, dtype=np.int64)
        state["seen"] = self.seen_.copy()
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore from `state_dict` output; shapes and dtypes are checked (InputError)."""
        self._ensure_init()
        expected = self.state_dict()
        missing = sorted(set(expected) - set(state))
        extra = sorted(set(state) - set(expected))
        if missing or extra:
            raise InputError(f"head state: expected keys {sorted(expected)}, missing {missing}, "
                             f"unexpected {extra}")
        for key, ref in expected.items():
            got = np.asarray(state[key])
            if got.shape != ref.shape or got.dtype != ref.dtype:
                raise InputError(f"head state {key!r}: expected {ref.dtype}{ref.shape}, "
                                 f"got {got.dtype}{got.shape}")
        for k in self.params_:
            self.params_[k][...] = state[f"param.{k}"]
        for k in self.opt_state_:
            self.opt_state_[k][...] = state[f"opt.{k}"]
        self.t_ = int(state["t"])
        self.seen_[...] = state["seen"]

    @property
    def nbytes(self) -> int:
        """Bytes held by parameters, optimizer slots and the seen mask."""
        self._ensure_init()
        arrays = [*self.params_.values(), *self.opt_state_.values(), self.seen_]
        return int(sum(a.nbytes for a in arrays))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(embedding_size={self.embedding_size}, max_classes={self.max_classes}, "
                f"optimizer={self.optimizer!r}, lr={self.lr})")


class SoftmaxHead(_GradientHead):
    """Linear softmax classifier: ``logits = x @ W + b``.

    Example:
        >>> import numpy as np
        >>> head = SoftmaxHead(embedding_size=4, max_classes=3)
        >>> head.step(np.ones((2, 4), np.float32), np.array([0, 1])) > 0
        True
        >>> head.classes_.tolist()
        [0, 1]
    """

    def _init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        d, k = int(self.embedding_size), int(self.max_classes)
        return {"W": (rng.standard_normal((d, k)) * 0.01).astype(_F32), "b": np.zeros(k, _F32)}

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, Any]:
        return x @ self.params_["W"] + self.params_["b"], x

    def _backward(self, cache: Any, dlogits: np.ndarray) -> dict[str, np.ndarray]:
        x = cache
        return {"W": x.T @ dlogits, "b": dlogits.sum(axis=0)}

    def _squared_backward(self, cache: Any, dlogits: np.ndarray) -> dict[str, np.ndarray]:
        d2 = dlogits * dlogits
        return {"W": (cache * cache).T @ d2, "b": d2.sum(axis=0)}


class MLPHead(_GradientHead):
    """One hidden ReLU layer: ``logits = relu(x @ W1 + b1) @ W2 + b2`` (He-initialised).

    Example:
        >>> import numpy as np
        >>> head = MLPHead(embedding_size=4, max_classes=3, hidden=8)
        >>> _ = head.step(np.ones((2, 4), np.float32), np.array([0, 2]))
        >>> float(head.predict_proba(np.ones((1, 4), np.float32))[0, 1])
        0.0
    """

    _output = ("W2", "b2")

    def __init__(self, embedding_size: int, max_classes: int, hidden: int = 128, **kwargs: Any) -> None:
        super().__init__(embedding_size, max_classes, **kwargs)
        self.hidden = hidden

    def _init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        d, h, k = int(self.embedding_size), int(self.hidden), int(self.max_classes)
        return {
            "W1": (rng.standard_normal((d, h)) * np.sqrt(2.0 / d)).astype(_F32),
            "b1": np.zeros(h, _F32),
            "W2": (rng.standard_normal((h, k)) * np.sqrt(1.0 / h)).astype(_F32),
            "b2": np.zeros(k, _F32),
        }

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, Any]:
        p = self.params_
        hidden = x @ p["W1"] + p["b1"]
        np.maximum(hidden, 0.0, out=hidden)
        return hidden @ p["W2"] + p["b2"], (x, hidden)

    def _backward(self, cache: Any, dlogits: np.ndarray) -> dict[str, np.ndarray]:
        x, hidden = cache
        dhidden = dlogits @ self.params_["W2"].T
        dhidden *= hidden > 0
        return {"W1": x.T @ dhidden, "b1": dhidden.sum(axis=0),
                "W2": hidden.T @ dlogits, "b2": dlogits.sum(axis=0)}

    def _squared_backward(self, cache: Any, dlogits: np.ndarray) -> dict[str, np.ndarray]:
        x, hidden = cache
        dhidden = dlogits @ self.params_["W2"].T
        dhidden *= hidden > 0
        d2, dh2 = dlogits * dlogits, dhidden * dhidden
        return {"W1": (x * x).T @ dh2, "b1": dh2.sum(axis=0),
                "W2": (hidden * hidden).T @ d2, "b2": d2.sum(axis=0)}


HEADS: dict[str, type[_GradientHead]] = {"softmax": SoftmaxHead, "mlp": MLPHead}


def make_head(kind: str, embedding_size: int, max_classes: int, **params: Any) -> _GradientHead:
    """Build a head by name (``"softmax"`` or ``"mlp"``)."""
    if kind not in HEADS:
        raise ConfigError(f"head: expected one of {sorted(HEADS)}, got {kind!r}")
    if kind == "softmax":
        params.pop("hidden", None)
    return HEADS[kind](embedding_size, max_classes, **params)
