"""A trainable head that runs *inside* a ``.tflite`` file, on LiteRT's signature runner.

``edge-host export-head`` writes ``head_<kind>_<optimizer>_b<B>_c<C>[_h<H>].tflite`` next to the
backbone: the forward pass, a hand-written gradient and the optimizer update of the NumPy heads of
`edge.heads`, with builtin ops only (no Flex), in four signatures (``train``, ``infer``,
``get_weights``, ``set_weights``) plus ``config`` (the baked hyperparameters). `TFLiteHead` wraps
such a file with the `edge.base.Head` protocol the NumPy heads implement, so strategies that train
by plain gradient steps (those with ``supports_tflite_head``: naive, replay, cumulative) use it
unchanged, and a checkpoint moves between the two backends (same state keys, shapes and dtypes).

What differs from the NumPy head:

* the hyperparameters (optimizer, lr, momentum or Adam's betas/eps, weight decay), the capacity
  (``max_classes``, ``hidden``) and the training batch size ``B`` are baked into the file; the
  constructor checks the ones it is given against the file (expected vs got);
* a ``step`` on ``n < B`` rows is padded with zero-weight rows, which gives exactly the NumPy
  update on the ``n`` rows; ``n > B`` is refused (`InputError`);
* like the NumPy heads it trains on the embeddings it is given: the agent standardises them first.

The runtime is imported lazily: ``ai_edge_litert``, else ``tflite_runtime``. No TensorFlow.

Example:
    >>> import numpy as np
    >>> from edge.tflite_head import TFLiteHead
    >>> head = TFLiteHead("models/tiny/head_softmax_sgd_b32_c50.tflite", embedding_size=256,
    ...                   max_classes=50, weight_decay=1e-4)                  # doctest: +SKIP
    >>> head.step(np.ones((5, 256), np.float32), np.arange(5))             # doctest: +SKIP
    3.91...
    >>> head.classes_.tolist()                                             # doctest: +SKIP
    [0, 1, 2, 3, 4]
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from edge.base import LogitGrad, ParamGrad
from edge.errors import ConfigError, InputError, ModelLoadError, NotFittedError
from edge.heads import check_embeddings, check_labels

_F32 = np.float32

#: Hyperparameters baked into a head file, by optimizer (the ``config`` signature returns them).
HYPERPARAMETERS: dict[str, tuple[str, ...]] = {
    "sgd": ("lr", "weight_decay", "momentum"),
    "adam": ("lr", "weight_decay", "beta1", "beta2", "eps"),
}


def param_shapes(kind: str, embedding_size: int, max_classes: int,
                 hidden: int | None = None) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of a head, in the NumPy heads' order."""
    d, k = int(embedding_size), int(max_classes)
    if kind == "softmax":
        return {"W": (d, k), "b": (k,)}
    if kind == "mlp":
        h = int(hidden or 0)
        return {"W1": (d, h), "b1": (h,), "W2": (h, k), "b2": (k,)}
    raise ConfigError(f"head kind: expected 'softmax' or 'mlp', got {kind!r}")


def slot_names(optimizer: str) -> tuple[str, ...]:
    """Optimizer slots per parameter: ``("v",)`` for sgd-momentum, ``("m", "v")`` for adam."""
    if optimizer not in HYPERPARAMETERS:
        raise ConfigError(f"optimizer: expected one of {sorted(HYPERPARAMETERS)}, got {optimizer!r}")
    return ("v",) if optimizer == "sgd" else ("m", "v")


def head_file_name(kind: str, optimizer: str, batch_size: int, max_classes: int,
                   hidden: int | None = None) -> str:
    """``head_<kind>_<optimizer>_b<B>_c<C>[_h<H>].tflite``: several heads can share a model dir."""
    if kind == "mlp" and hidden is None:
        raise ConfigError("hidden: expected the hidden width of an mlp head, got None")
    tail = f"_h{int(hidden)}" if kind == "mlp" and hidden is not None else ""
    return f"head_{kind}_{optimizer}_b{int(batch_size)}_c{int(max_classes)}{tail}.tflite"


def find_head_file(model_dir: str | os.PathLike[str], manifest: Any, settings: Any) -> Path:
    """The head file of ``manifest`` (in ``model_dir``) that fits an agent configuration.

    ``settings`` has ``head``, ``optimizer``, ``max_classes``, ``hidden``, ``batch_size``, ``lr``,
    ``weight_decay`` and ``momentum`` (an `edge.agent.AgentConfig`). A head fits when kind,
    optimizer, capacity (and ``hidden`` for mlp) and its baked lr / weight decay (/ momentum for
    sgd) are the same (and it was made for this embedding size); among those, the one with ``batch_size`` equal to the configuration's wins,
    else the smallest larger one (smaller batches are padded exactly). `ManifestError` otherwise,
    listing what the manifest has.
    """
    from edge.errors import ManifestError

    def fits(h: Any) -> bool:
        wanted = {"lr": settings.lr, "weight_decay": settings.weight_decay}
        if settings.optimizer == "sgd":
            wanted["momentum"] = settings.momentum
        same_hp = all(abs(h.hyperparameters.get(k, float("nan")) - float(v)) <= 1e-6 * max(abs(float(v)), 1e-12)
                      for k, v in wanted.items())
        return (h.kind == settings.head and h.optimizer == settings.optimizer
                and h.embedding_size == manifest.embedding_size
                and h.max_classes == settings.max_classes and h.batch_size >= settings.batch_size
                and (h.kind != "mlp" or h.hidden == settings.hidden) and same_hp)

    candidates = sorted((h for h in manifest.heads if fits(h)),
                        key=lambda h: (h.batch_size != settings.batch_size, h.batch_size))
    if not candidates:
        have = "; ".join(f"{h.path} ({h.kind}/{h.optimizer}, batch {h.batch_size}, {h.max_classes} classes, "
                         f"{h.hyperparameters})" for h in manifest.heads) or "none"
        want = (f"{settings.head}/{settings.optimizer}, batch >= {settings.batch_size}, {settings.max_classes} "
                f"classes, lr={settings.lr}, weight_decay={settings.weight_decay}"
                + (f", momentum={settings.momentum}" if settings.optimizer == "sgd" else "")
                + (f", hidden={settings.hidden}" if settings.head == "mlp" else ""))
        raise ManifestError(f"model {manifest.name!r} has no trainable head {want}; it has: {have}. "
                            "Export one with `edge-host export-head`")
    return Path(model_dir, candidates[0].path)


def _state_key(sig_name: str) -> str:
    """Signature tensor name -> NumPy head state key (``opt_v_W`` -> ``opt.v.W``)."""
    if sig_name.startswith("param_"):
        return "param." + sig_name[len("param_"):]
    if sig_name.startswith("opt_"):
        slot, _, name = sig_name[len("opt_"):].partition("_")
        return f"opt.{slot}.{name}"
    return sig_name


class TFLiteHead:
    """Gradient head whose training runs in a ``.tflite`` file (see the module docstring).

    Args:
        path: the head file (``edge-host export-head``).
        embedding_size, max_classes, kind, hidden, optimizer, lr, momentum, weight_decay, beta1,
            beta2, eps: what the caller expects; each is checked against the file (`ModelLoadError`
            with expected vs got). ``hidden`` is ignored for a softmax head.
        seed: initial weights drawn exactly as the NumPy head with this seed draws them.
        num_threads: LiteRT threads (default: the runtime's choice).
    """

    def __init__(self, path: str | os.PathLike[str], embedding_size: int, max_classes: int,
                 kind: str = "softmax", hidden: int = 128, optimizer: str = "sgd", lr: float = 0.01,
                 momentum: float = 0.9, weight_decay: float = 0.0, beta1: float = 0.9,
                 beta2: float = 0.999, eps: float = 1e-8, seed: int = 0,
                 num_threads: int | None = None) -> None:
        self.path = Path(path)
        self.embedding_size = embedding_size
        self.max_classes = max_classes
        self.kind = kind
        self.hidden = hidden
        self.optimizer = optimizer
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.seed = seed
        self.num_threads = num_threads
        self._open()
        self._reset()

    # ------------------------------------------------------------------ setup
    def _open(self) -> None:
        if not self.path.is_file():
            raise ModelLoadError(f"TFLite head file not found: {self.path}")
        from edge.runtimes import import_litert_interpreter, litert_log_to_logging

        interpreter_cls, _ = import_litert_interpreter()
        try:
            with litert_log_to_logging():
                self._interpreter = interpreter_cls(model_path=str(self.path), num_threads=self.num_threads)
                signatures = self._interpreter.get_signature_list()
                missing = sorted({"train", "infer", "get_weights", "set_weights", "config"} - set(signatures))
                if missing:
                    raise ModelLoadError(f"{self.path}: expected signatures train/infer/get_weights/"
                                         f"set_weights/config, missing {missing}")
                self._train = self._interpreter.get_signature_runner("train")
                self._infer = self._interpreter.get_signature_runner("infer")
                self._get = self._interpreter.get_signature_runner("get_weights")
                self._set = self._interpreter.get_signature_runner("set_weights")
                baked = {k: float(np.asarray(v)) for k, v in
                         self._interpreter.get_signature_runner("config")().items()}
                train_in = self._train.get_input_details()
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"{self.path}: LiteRT cannot load this head: {exc}") from exc
        batch, dim = (int(v) for v in train_in["embeddings"]["shape"])
        classes = int(self._set.get_input_details()["seen"]["shape"][0])
        set_in = self._set.get_input_details()
        kind = "mlp" if "param_W1" in set_in else "softmax"
        optimizer = "adam" if any(k.startswith("opt_m_") for k in set_in) else "sgd"
        hidden = int(set_in["param_b1"]["shape"][0]) if kind == "mlp" else None
        checks: list[tuple[str, Any, Any]] = [
            ("embedding_size", self.embedding_size, dim), ("max_classes", self.max_classes, classes),
            ("kind", self.kind, kind), ("optimizer", self.optimizer, optimizer)]
        if kind == "mlp":
            checks.append(("hidden", self.hidden, hidden))
        for name in HYPERPARAMETERS[optimizer]:
            checks.append((name, float(getattr(self, name)), baked[name]))
        for name, want, got in checks:
            same = (abs(float(want) - got) <= 1e-6 * max(abs(got), 1e-12)
                    if isinstance(got, float) else want == got)
            if not same:
                raise ModelLoadError(f"{self.path}: {name} expected {want!r} (from the caller), got "
                                     f"{got!r} (baked into the file); export a matching head with "
                                     "`edge-host export-head`")
        self.batch_size = batch
        self._shapes = param_shapes(kind, dim, classes, hidden)
        self._set_specs = {_state_key(name): (name, tuple(int(v) for v in d["shape"]), np.dtype(d["dtype"]))
                           for name, d in set_in.items()}

    def _reset(self, seed: int | None = None) -> None:
        """Initial state: the NumPy head's initial weights for ``seed`` (default: the head's own),
        zero slots, nothing seen."""
        from edge.heads import make_head

        ref = make_head(self.kind, self.embedding_size, self.max_classes, hidden=self.hidden,
                        optimizer=self.optimizer, seed=self.seed if seed is None else int(seed))
        state = ref.state_dict()
        self.seen_ = np.zeros(self.max_classes, dtype=bool)
        self.t_ = 0
        self.load_state_dict(state)

    # -------------------------------------------------------------- validation
    def _check_x(self, x: np.ndarray) -> np.ndarray:
        return check_embeddings(x, self.embedding_size)

    def _check_y(self, y: np.ndarray, n: int) -> np.ndarray:
        return check_labels(y, n, self.max_classes)

    def _input(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x, dtype=_F32)

    # ------------------------------------------------------------------ verbs
    def step(self, x: np.ndarray, y: np.ndarray, *, logit_grad: LogitGrad | None = None,
             param_grad: ParamGrad | None = None) -> float:
        """One gradient step in the file on one mini-batch of at most ``batch_size`` rows;
        returns the mean cross-entropy before the step (as the NumPy head).

        The NumPy head's strategy hooks (``logit_grad``, ``param_grad``) cannot reach inside the
        file: passing one raises NotImplementedError.
        """
        if logit_grad is not None or param_grad is not None:
            raise NotImplementedError(
                "TFLiteHead.step: the tflite head backend trains inside the .tflite file and cannot "
                "add a strategy's loss terms (logit_grad/param_grad); use head_backend='numpy'")
        x = self._check_x(x)
        y = self._check_y(y, x.shape[0])
        n, b = x.shape[0], self.batch_size
        if n == 0:
            raise InputError("embeddings: expected at least one row, got an empty batch")
        if n > b:
            raise InputError(f"embeddings: expected at most {b} rows (the batch size baked into "
                             f"{self.path.name}), got {n}")
        feed = np.zeros((b, self.embedding_size), _F32)
        feed[:n] = self._input(x)
        labels = np.zeros(b, np.int32)
        labels[:n] = y
        weights = np.zeros(b, _F32)
        weights[:n] = 1.0
        out = self._train(embeddings=feed, labels=labels, weights=weights)
        self.seen_[y] = True
        self.t_ += 1
        return float(np.asarray(out["loss"]))

    def partial_fit(self, x: np.ndarray, y: np.ndarray, epochs: int = 1, batch_size: int = 32,
                    rng: np.random.Generator | None = None) -> None:
        """``epochs`` passes of shuffled mini-batches of ``batch_size`` over (x, y). Returns None."""
        x = self._check_x(x)
        y = self._check_y(y, x.shape[0])
        if int(batch_size) > self.batch_size:
            raise InputError(f"batch_size: expected at most {self.batch_size} (baked into "
                             f"{self.path.name}), got {batch_size}")
        rng = rng if rng is not None else np.random.default_rng(self.seed)
        n = x.shape[0]
        for _ in range(int(epochs)):
            order = rng.permutation(n)
            for start in range(0, n, int(batch_size)):
                idx = order[start:start + int(batch_size)]
                self.step(x[idx], y[idx])

    def mark_seen(self, labels: np.ndarray) -> None:
        """Mark ``labels`` as seen without a training step (for a strategy that sets the weights);
        the mask is one of the file's variables (the graph masks with it), so it is written there."""
        y = self._check_y(labels, np.asarray(labels).shape[0])
        state = self.state_dict()
        state["seen"] = state["seen"].copy()
        state["seen"][y] = True
        self.load_state_dict(state)

    def reset(self, seed: int | None = None) -> None:
        """Back to the freshly constructed state: initial weights of ``seed`` (default: the head's
        own), zero optimizer state, nothing seen."""
        self._reset(seed)

    def _run_infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        x = self._check_x(x)
        if x.shape[0] == 0:
            k = self.max_classes
            return {"logits": np.zeros((0, k), _F32), "probabilities": np.zeros((0, k), _F32)}
        out: dict[str, np.ndarray] = self._infer(embeddings=self._input(x))  # the runner is untyped
        return out

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        """Raw logits ``(N, max_classes)``, unseen classes included (not masked)."""
        return np.array(self._run_infer(x)["logits"], dtype=_F32)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, max_classes)``: sum to 1 over seen classes, 0 for unseen."""
        if not self.seen_.any():
            raise NotFittedError("head: expected at least one seen class before predicting, got none")
        return np.array(self._run_infer(x)["probabilities"], dtype=_F32)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The most probable seen class of each row (int64)."""
        return np.asarray(self.predict_proba(x).argmax(axis=1), dtype=np.int64)

    # ---------------------------------------------------------------- weights
    def get_weights(self) -> dict[str, np.ndarray]:
        """Copies of the parameters by name, read from the file's variables."""
        return {key[len("param."):]: value for key, value in self.state_dict().items()
                if key.startswith("param.")}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Overwrite some parameters by name (shapes checked; optimizer state untouched)."""
        state = self.state_dict()
        for name, value in weights.items():
            key = f"param.{name}"
            if key not in state:
                raise InputError(f"head weights: expected names among {sorted(self._shapes)}, got {name!r}")
            value = np.asarray(value)
            if value.shape != state[key].shape:
                raise InputError(f"head weights {name!r}: expected shape {state[key].shape}, got {value.shape}")
            state[key] = value.astype(_F32)
        self.load_state_dict(state)

    @property
    def output_layer(self) -> tuple[str, str]:
        """Names of the output layer's weight matrix and bias."""
        return ("W", "b") if self.kind == "softmax" else ("W2", "b2")

    def get_output_weights(self) -> np.ndarray:
        """One vector per class ``(max_classes, fan_in + 1)``: its output-layer column, then its bias."""
        weights = self.get_weights()
        w, b = self.output_layer
        return np.concatenate([weights[w].T, weights[b][:, None]], axis=1)

    def set_output_weights(self, vectors: np.ndarray, *, reset_optimizer: bool = False) -> None:
        """Inverse of `get_output_weights`; ``reset_optimizer`` also zeroes the output layer's slots."""
        w, b = self.output_layer
        state = self.state_dict()
        vectors = np.asarray(vectors)
        want = (state[f"param.{b}"].shape[0], state[f"param.{w}"].shape[0] + 1)
        if vectors.shape != want:
            raise InputError(f"output weights: expected shape {want}, got {vectors.shape}")
        state[f"param.{w}"] = np.ascontiguousarray(vectors[:, :-1].T, dtype=_F32)
        state[f"param.{b}"] = np.ascontiguousarray(vectors[:, -1], dtype=_F32)
        if reset_optimizer:
            for key in state:
                if key.startswith("opt.") and key.rsplit(".", 1)[1] in (w, b):
                    state[key] = np.zeros_like(state[key])
        self.load_state_dict(state)

    # ------------------------------------------------------------------ state
    @property
    def classes_(self) -> np.ndarray:
        """Labels seen so far, sorted."""
        return np.flatnonzero(self.seen_)

    def state_dict(self) -> dict[str, np.ndarray]:
        """The NumPy heads' keys, shapes and dtypes: ``param.*``, ``opt.*``, ``t`` (int64),
        ``seen`` (bool), read from the file's variables through ``get_weights``."""
        raw = self._get()
        state: dict[str, np.ndarray] = {}
        for key, (name, _, _) in self._set_specs.items():
            value = np.array(raw[name])
            if key == "t":
                value = value.astype(np.int64).reshape(())
            elif key == "seen":
                value = value > 0.5
            state[key] = value
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore from a `state_dict` of either backend; keys, shapes and dtypes are checked
        (`InputError`) before anything is written."""
        missing = sorted(set(self._set_specs) - set(state))
        extra = sorted(set(state) - set(self._set_specs))
        if missing or extra:
            raise InputError(f"head state: expected keys {sorted(self._set_specs)}, missing {missing}, "
                             f"unexpected {extra}")
        feed: dict[str, np.ndarray] = {}
        for key, (name, shape, dtype) in self._set_specs.items():
            got = np.asarray(state[key])
            want_dtype = {"t": np.dtype(np.int64), "seen": np.dtype(bool)}.get(key, np.dtype(_F32))
            if got.shape != shape or got.dtype != want_dtype:
                raise InputError(f"head state {key!r}: expected {want_dtype}{shape}, "
                                 f"got {got.dtype}{got.shape}")
            feed[name] = np.ascontiguousarray(got, dtype=dtype)
        self._set(**feed)
        self.seen_ = np.asarray(state["seen"], dtype=bool).copy()
        self.t_ = int(state["t"])

    @property
    def nbytes(self) -> int:
        """Bytes of the file's variables: parameters, optimizer slots, step count, seen mask
        (float32 in the file). The interpreter's arena and the file itself are not counted."""
        return int(sum(int(np.prod(shape)) * dtype.itemsize for _, shape, dtype in self._set_specs.values()))

    def close(self) -> None:
        """Release the interpreter."""
        self._interpreter = self._train = self._infer = self._get = self._set = None

    def __repr__(self) -> str:
        return (f"TFLiteHead(path={self.path.name!r}, kind={self.kind!r}, embedding_size={self.embedding_size}, "
                f"max_classes={self.max_classes}, optimizer={self.optimizer!r}, lr={self.lr}, "
                f"batch_size={getattr(self, 'batch_size', None)})")
