"""Export a trainable head to a ``.tflite`` file that trains on device with builtin ops only.

The official TFLite on-device-training recipe differentiates with a gradient tape; its gradient
kernels come out as Flex (select TF) ops (``FlexReluGrad``, ``FlexBroadcastGradientArgs``...) that
LiteRT / tflite-runtime builds on a Raspberry Pi do not have. Here the forward pass, the gradient
and the optimizer update of the two NumPy heads of `edge.heads` are written by hand with ops that
map onto TFLite builtins (FULLY_CONNECTED / BATCH_MATMUL, ONE_HOT, SELECT_V2, EXP, LOG, SUM, ...),
so the same file trains in plain LiteRT, in a C++ or Android LiteRT app, and in `edge.tflite_head`.
The export fails if a Flex or custom op appears in the file.

Signatures (all state in resource variables):

* ``train(embeddings[B, D] f32, labels[B] i32, weights[B] f32) -> loss``: one step on a batch of
  FIXED size ``B``. ``weights`` is 1 for real rows and 0 for padding, so a partial batch of
  ``n < B`` rows gives exactly the update of the NumPy head on those ``n`` rows (loss and gradient
  are weighted means over the real rows). Labels of the batch's real rows are marked *seen* first.
* ``infer(embeddings[N, D] f32) -> probabilities, logits``: masked softmax (0 for unseen classes)
  and the raw, unmasked logits; ``N`` is dynamic.
* ``get_weights() -> {param_W, ..., opt_v_W, ..., t, seen}`` and ``set_weights(same) -> ok``.
* ``config() -> {lr, weight_decay, momentum | beta1, beta2, eps}``: the baked hyperparameters.

Inputs are *standardised* embeddings: the wrapper applies the manifest's embedding mean/std
exactly as the NumPy head does (``(x - mean) / max(std, 1e-6)``) before calling ``train``/``infer``.

Example:
    >>> from host.export_head import HeadSpec, export_head
    >>> export_head("models/tiny", HeadSpec(kind="softmax"))   # doctest: +SKIP
    PosixPath('models/tiny/head_softmax_sgd_b32_c50.tflite')
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.manifest import HeadFile, load_manifest, sha256_file, write_manifest
from edge.tflite_head import head_file_name, param_shapes, slot_names
from host import __version__ as tool_version
from host.export import ExportError, check_builtin_ops

log = logging.getLogger(__name__)

_SIGNATURES = ("train", "infer", "get_weights", "set_weights", "config")


@dataclass(frozen=True)
class HeadSpec:
    """What to export: head kind, capacity, optimizer and its hyperparameters, batch size.

    Defaults match `edge.agent.AgentConfig`, so a default agent can use a default head file.
    """

    kind: str = "softmax"
    max_classes: int = 50
    optimizer: str = "sgd"
    batch_size: int = 32
    hidden: int | None = None
    hyperparameters: dict[str, float] = field(default_factory=dict)

    def resolved_hyperparameters(self) -> dict[str, float]:
        """lr, weight_decay and the optimizer's own constants, defaults filled in."""
        hp = {"lr": 0.01, "weight_decay": 1e-4}
        hp.update({"momentum": 0.9} if self.optimizer == "sgd" else {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8})
        unknown = sorted(set(self.hyperparameters) - set(hp))
        if unknown:
            raise ExportError(f"hyperparameters: expected a subset of {sorted(hp)} for {self.optimizer}, "
                              f"got {unknown}")
        hp.update({k: float(v) for k, v in self.hyperparameters.items()})
        return hp

    def validate(self) -> None:
        if self.kind not in ("softmax", "mlp"):
            raise ExportError(f"head kind: expected 'softmax' or 'mlp', got {self.kind!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise ExportError(f"optimizer: expected 'sgd' or 'adam', got {self.optimizer!r}")
        if self.max_classes < 2 or self.batch_size < 1:
            raise ExportError(f"expected max_classes >= 2 and batch_size >= 1, got "
                              f"{self.max_classes} and {self.batch_size}")
        if self.kind == "mlp" and (self.hidden is None or self.hidden < 1):
            raise ExportError(f"mlp head: expected hidden >= 1, got {self.hidden!r}")
        if self.resolved_hyperparameters()["lr"] <= 0:
            raise ExportError("lr: expected > 0")


def _one_minus_power(tf: Any, beta: float, t: Any) -> Any:
    """``1 - beta**t`` in float32 to ~1e-7 relative: ``-expm1(t * log(beta))``, with expm1 as a
    6-term Taylor series for ``|z| < 0.1`` (builtin ops have no EXPM1) and ``exp(z) - 1`` above."""
    z = t * tf.constant(math.log(beta), tf.float32)
    series = z * (1.0 + z / 2.0 * (1.0 + z / 3.0 * (1.0 + z / 4.0 * (1.0 + z / 5.0 * (1.0 + z / 6.0)))))
    return -tf.where(tf.abs(z) < 0.1, series, tf.exp(z) - 1.0)


def _build_module(spec: HeadSpec, embedding_size: int) -> Any:
    """A tf.Module with the four signatures, weights zero-initialised (the device sets them)."""
    import tensorflow as tf

    hp = spec.resolved_hyperparameters()
    d, k, b = int(embedding_size), int(spec.max_classes), int(spec.batch_size)
    shapes = param_shapes(spec.kind, d, k, spec.hidden)
    slots = slot_names(spec.optimizer)
    f32 = tf.float32

    specs = [tf.TensorSpec(s, f32, name=f"param_{n}") for n, s in shapes.items()]
    specs += [tf.TensorSpec(shp, f32, name=f"opt_{s}_{n}") for s in slots for n, shp in shapes.items()]
    specs += [tf.TensorSpec([], tf.int32, name="t"), tf.TensorSpec([k], f32, name="seen")]

    class TrainableHead(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.params = {n: tf.Variable(tf.zeros(s, f32), name=f"param_{n}") for n, s in shapes.items()}
            self.slots = {f"{s}_{n}": tf.Variable(tf.zeros(shp, f32), name=f"opt_{s}_{n}")
                          for s in slots for n, shp in shapes.items()}
            self.t = tf.Variable(0, dtype=tf.int32, name="t")
            self.seen = tf.Variable(tf.zeros([k], f32), name="seen")

        # --- model (hand-written forward and backward)
        def _forward(self, x):
            p = self.params
            if spec.kind == "softmax":
                return tf.matmul(x, p["W"]) + p["b"], None
            hidden = tf.nn.relu(tf.matmul(x, p["W1"]) + p["b1"])
            return tf.matmul(hidden, p["W2"]) + p["b2"], hidden

        def _backward(self, x, hidden, dlogits):
            p = self.params
            if spec.kind == "softmax":
                return {"W": tf.matmul(x, dlogits, transpose_a=True), "b": tf.reduce_sum(dlogits, 0)}
            dhidden = tf.matmul(dlogits, p["W2"], transpose_b=True)
            dhidden = dhidden * tf.cast(hidden > 0.0, f32)
            return {"W1": tf.matmul(x, dhidden, transpose_a=True), "b1": tf.reduce_sum(dhidden, 0),
                    "W2": tf.matmul(hidden, dlogits, transpose_a=True), "b2": tf.reduce_sum(dlogits, 0)}

        def _masked_softmax(self, logits, seen):
            neg_inf = tf.fill(tf.shape(logits), tf.constant(float("-inf"), f32))
            z = tf.where(seen > 0.5, logits, neg_inf)
            z = z - tf.reduce_max(z, axis=1, keepdims=True)
            e = tf.exp(z)
            return e / tf.reduce_sum(e, axis=1, keepdims=True)

        def _apply(self, grads):
            t = self.t.assign_add(1)
            tf_t = tf.cast(t, f32)
            lr = tf.constant(hp["lr"], f32)
            if spec.optimizer == "adam":
                bias1 = _one_minus_power(tf, hp["beta1"], tf_t)
                bias2 = _one_minus_power(tf, hp["beta2"], tf_t)
            for name, p in self.params.items():
                g = grads[name]
                if hp["weight_decay"] and name.startswith("W"):
                    g = g + tf.constant(hp["weight_decay"], f32) * p
                if spec.optimizer == "sgd":
                    v = self.slots[f"v_{name}"].assign(tf.constant(hp["momentum"], f32) * self.slots[f"v_{name}"] + g)
                    p.assign_sub(lr * v)
                else:
                    # (1 - beta) and the bias corrections 1 - beta**t are formed in float64 by the
                    # NumPy head; in float32, 1 - 0.999f is off by 1.3e-5 relative, so use the
                    # float64 constants and an accurate -expm1(t * log(beta)).
                    b1, b2 = tf.constant(hp["beta1"], f32), tf.constant(hp["beta2"], f32)
                    c1, c2 = tf.constant(1.0 - hp["beta1"], f32), tf.constant(1.0 - hp["beta2"], f32)
                    m = self.slots[f"m_{name}"].assign(b1 * self.slots[f"m_{name}"] + c1 * g)
                    v = self.slots[f"v_{name}"].assign(b2 * self.slots[f"v_{name}"] + c2 * (g * g))
                    m_hat = m / bias1
                    v_hat = v / bias2
                    p.assign_sub(lr * m_hat / (tf.sqrt(v_hat) + tf.constant(hp["eps"], f32)))

        # --- signatures
        @tf.function(input_signature=[tf.TensorSpec([b, d], f32, name="embeddings"),
                                      tf.TensorSpec([b], tf.int32, name="labels"),
                                      tf.TensorSpec([b], f32, name="weights")])
        def train(self, embeddings, labels, weights):
            onehot = tf.one_hot(labels, k, dtype=f32)
            marked = tf.reduce_max(onehot * weights[:, None], axis=0)
            seen = self.seen.assign(tf.maximum(self.seen, tf.cast(marked > 0.0, f32)))
            logits, hidden = self._forward(embeddings)
            proba = self._masked_softmax(logits, seen)
            total = tf.reduce_sum(weights)
            picked = tf.reduce_sum(proba * onehot, axis=1)
            loss = -tf.reduce_sum(weights * tf.math.log(tf.maximum(picked, 1e-12))) / total
            dlogits = (proba - onehot) * (weights / total)[:, None]
            self._apply(self._backward(embeddings, hidden, dlogits))
            return {"loss": loss}

        @tf.function(input_signature=[tf.TensorSpec([None, d], f32, name="embeddings")])
        def infer(self, embeddings):
            logits, _ = self._forward(embeddings)
            return {"probabilities": self._masked_softmax(logits, self.seen), "logits": logits}

        @tf.function(input_signature=[])
        def get_weights(self):
            out = {f"param_{n}": tf.identity(v) for n, v in self.params.items()}
            out.update({f"opt_{n}": tf.identity(v) for n, v in self.slots.items()})
            out["t"] = tf.identity(self.t)
            out["seen"] = tf.identity(self.seen)
            return out

        @tf.function(input_signature=[])
        def config(self):
            return {name: tf.identity(tf.constant(value, f32)) for name, value in hp.items()}

        @tf.function(input_signature=specs)
        def set_weights(self, *values):
            variables = [*self.params.values(), *self.slots.values(), self.t, self.seen]
            for var, value in zip(variables, values):
                var.assign(value)
            return {"ok": tf.constant(1, tf.int32)}

    return TrainableHead()


def convert_head(spec: HeadSpec, embedding_size: int) -> bytes:
    """The ``.tflite`` bytes of a trainable head (builtin ops only; `ExportError` otherwise)."""
    import tensorflow as tf

    spec.validate()
    module = _build_module(spec, embedding_size)
    with tempfile.TemporaryDirectory(prefix="edge-head-") as tmp:
        tf.saved_model.save(module, tmp, signatures={name: getattr(module, name) for name in _SIGNATURES})
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=list(_SIGNATURES))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.experimental_enable_resource_variables = True
        try:
            content = converter.convert()
        except Exception as exc:  # the converter raises ConverterError and friends
            raise ExportError(f"head {spec.kind}/{spec.optimizer}: conversion with TFLITE_BUILTINS "
                              f"only failed: {exc}") from exc
    check_builtin_ops(content, f"head {spec.kind}/{spec.optimizer}")
    return content


def export_head(model_dir: str | os.PathLike[str], spec: HeadSpec) -> Path:
    """Convert a head for ``model_dir``'s backbone, write it there and list it in the manifest.

    The file is ``head_<kind>_<optimizer>_b<B>_c<C>[_h<H>].tflite`` so several heads coexist. An
    entry with the same path is replaced. The backbone's ``files`` (and so its fingerprint) are
    left untouched.
    """
    root = Path(model_dir)
    manifest = load_manifest(root)
    spec.validate()
    spec = HeadSpec(kind=spec.kind, max_classes=spec.max_classes, optimizer=spec.optimizer,
                    batch_size=spec.batch_size, hidden=spec.hidden if spec.kind == "mlp" else None,
                    hyperparameters=spec.resolved_hyperparameters())
    content = convert_head(spec, manifest.embedding_size)
    name = head_file_name(spec.kind, spec.optimizer, spec.batch_size, spec.max_classes, spec.hidden)
    target = root / name
    fd, tmp = tempfile.mkstemp(prefix=".head-", suffix=".tmp", dir=root)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o644)
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    import tensorflow as tf

    entry = HeadFile(
        path=name, sha256=sha256_file(target), bytes=target.stat().st_size, kind=spec.kind,
        optimizer=spec.optimizer, batch_size=spec.batch_size, max_classes=spec.max_classes,
        embedding_size=manifest.embedding_size, hidden=spec.hidden,
        hyperparameters=dict(spec.hyperparameters),
        producer={"tool": f"edge-host {tool_version}", "tensorflow": tf.__version__,
                  "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                  "ops": check_builtin_ops(content, name)},
    )
    heads = tuple(h for h in manifest.heads if h.path != name) + (entry,)
    write_manifest(manifest.with_updates(heads=heads), root)
    log.info("wrote %s (%d bytes) and listed it in %s/manifest.json", target, entry.bytes, root)
    return target


__all__ = ["HeadSpec", "convert_head", "export_head"]
