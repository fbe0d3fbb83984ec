"""Regularisation strategies on the head: EWC (Kirkpatrick et al. 2017) and LwF (Li & Hoiem 2017).

Both train like ``naive`` (same mini-batches, same order) and add one term to the loss through the
head's ``step`` hooks: with the term switched off (``ewc_lambda=0``, ``alpha=0``) they are
``naive`` exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge.base import FisherHead, Head, LogitGrad, ParamGrad
from edge.buffer import ReplayBuffer
from edge.errors import ConfigError, InputError
from edge.strategies.base import (
    LearnSettings,
    Strategy,
    add_grads,
    check_state,
    check_train_units,
    minibatches,
    require_head,
    unit_grad,
)


class EWCStrategy(Strategy):
    """Elastic weight consolidation on the head's weights, online form (Schwarz et al. 2018).

    Every incoming batch is an experience (the device does not know task boundaries). After
    training on a batch, the diagonal of the empirical Fisher information on that batch
    (mean over its rows of the squared per-sample gradient of the cross-entropy, true labels) is
    folded into a running Fisher ``F = gamma * F + F_batch`` and the weights are stored as the
    anchor ``theta*``. While training on the next batches the loss gets
    ``ewc_lambda / 2 * sum(F * (theta - theta*)^2)``, whose gradient ``ewc_lambda * F * (theta - theta*)``
    is added to every step (``ewc_lambda * F`` is capped at ``1 / lr`` per weight: a stiffer
    penalty makes plain gradient steps overshoot the anchor and diverge). Memory: the running
    Fisher and the anchor, two copies of the head's parameters.

    Args:
        ewc_lambda: strength of the penalty (0: exactly ``naive``).
        gamma: decay of the running Fisher per batch (1: plain sum over all batches).
    """

    name = "ewc"
    fisher_: dict[str, np.ndarray]
    anchor_: dict[str, np.ndarray]

    def __init__(self, ewc_lambda: float = 1000.0, gamma: float = 1.0) -> None:
        self.ewc_lambda = ewc_lambda
        self.gamma = gamma

    def params(self) -> dict[str, Any]:
        return {"ewc_lambda": self.ewc_lambda, "gamma": self.gamma}

    def learn(self, head: Head | None, buffer: ReplayBuffer, emb: np.ndarray, labels: np.ndarray,
              rng: np.random.Generator, cfg: LearnSettings) -> None:
        if not float(self.ewc_lambda) >= 0 or not 0.0 <= float(self.gamma) <= 1.0:
            raise ConfigError(f"ewc: expected ewc_lambda >= 0 and gamma in [0, 1], got "
                              f"{self.ewc_lambda} and {self.gamma}")
        head = require_head(head, self.name)
        if not isinstance(head, FisherHead):
            raise ConfigError(f"ewc: expected a head with squared_grad_sum (a NumPy head), got "
                              f"{type(head).__name__}")
        fisher = getattr(self, "fisher_", None)
        hook: ParamGrad | None = None
        if fisher is not None:
            # Stability: with plain gradient steps a penalty stiffer than 1/lr overshoots the
            # anchor and diverges, so lambda * F is capped at 1/lr per weight.
            cap = np.float32(1.0 / float(head.lr))
            strength = {name: np.minimum(np.float32(self.ewc_lambda) * f, cap) for name, f in fisher.items()}
            anchor = self.anchor_

            def penalty(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
                return {name: strength[name] * (params[name] - anchor[name]) for name in strength}

            hook = penalty
        for idx in minibatches(emb.shape[0], cfg.epochs, cfg.batch_size, rng):
            head.step(emb[idx], labels[idx], param_grad=hook)
        sq = head.squared_grad_sum(emb, labels)
        n = np.float32(emb.shape[0])
        if fisher is None:
            self.fisher_ = {name: (g / n).astype(np.float32) for name, g in sq.items()}
        else:
            for name, g in sq.items():
                fisher[name] *= np.float32(self.gamma)
                fisher[name] += (g / n).astype(np.float32)
        self.anchor_ = head.get_weights()

    def state_dict(self) -> dict[str, np.ndarray]:
        if getattr(self, "fisher_", None) is None:
            return {}
        state = {f"fisher.{k}": v.copy() for k, v in self.fisher_.items()}
        state.update({f"anchor.{k}": v.copy() for k, v in self.anchor_.items()})
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        if not state:
            self._forget("fisher_", "anchor_")
            return
        names = sorted({k.split(".", 1)[1] for k in state if "." in k})
        spec = {f"{part}.{n}": (np.float32, (None,) * np.asarray(state.get(f"fisher.{n}", 0)).ndim)
                for part in ("fisher", "anchor") for n in names}
        arrays = check_state("ewc", state, spec)
        for n in names:
            if arrays[f"fisher.{n}"].shape != arrays[f"anchor.{n}"].shape:
                raise InputError(f"ewc state: expected fisher.{n} and anchor.{n} of one shape, got "
                                 f"{arrays[f'fisher.{n}'].shape} and {arrays[f'anchor.{n}'].shape}")
        self.fisher_ = {n: arrays[f"fisher.{n}"].copy() for n in names}
        self.anchor_ = {n: arrays[f"anchor.{n}"].copy() for n in names}


class LwFStrategy(Strategy):
    """Learning without Forgetting on the head (single head, class-incremental form).

    At the start of each batch the current head is the frozen "previous model": its logits on the
    batch are computed once (no copy of the weights is kept). Each step adds
    ``alpha * KL(softmax(old / T) || softmax(new / T))`` over the classes the previous head had
    seen (Li & Hoiem's loss, and Avalanche's), whose gradient with respect to the new logits of
    those classes is ``alpha / T * (softmax(new / T) - softmax(old / T)) / n``; with
    ``t_squared=True`` the term is multiplied by ``T^2`` (Hinton et al.'s distillation scaling, which
    keeps the gradient's size independent of ``T``). Memory: nothing between batches.

    Args:
        alpha: weight of the distillation term (0 with ``train_units="seen"``: exactly ``naive``).
        temperature: distillation temperature ``T``.
        train_units: the output units the cross-entropy's softmax spans: ``"all"`` (default: the
            single head of Li & Hoiem's class-incremental form and of Avalanche's ``LwF``, where
            units of classes not seen yet are pushed down too) or ``"seen"`` (the head's mask).
        t_squared: multiply the distillation term by ``T^2`` (default False: the paper's loss).
    """

    name = "lwf"

    def __init__(self, alpha: float = 2.0, temperature: float = 2.0, train_units: str = "all",
                 t_squared: bool = False) -> None:
        self.alpha = alpha
        self.temperature = temperature
        self.train_units = train_units
        self.t_squared = t_squared

    def params(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "temperature": self.temperature, "train_units": self.train_units,
                "t_squared": self.t_squared}

    def learn(self, head: Head | None, buffer: ReplayBuffer, emb: np.ndarray, labels: np.ndarray,
              rng: np.random.Generator, cfg: LearnSettings) -> None:
        if not float(self.alpha) >= 0 or not float(self.temperature) > 0:
            raise ConfigError(f"lwf: expected alpha >= 0 and temperature > 0, got {self.alpha} and "
                              f"{self.temperature}")
        head = require_head(head, self.name)
        check_train_units(self.name, self.train_units)
        units = unit_grad(head, self.train_units)
        old_classes = head.classes_
        old_p = None
        if old_classes.size:
            t = float(self.temperature)
            old_p = _softmax(head.decision_function(emb)[:, old_classes] / t)
            scale = np.float32(float(self.alpha) * (t if self.t_squared else 1.0 / t))
        for idx in minibatches(emb.shape[0], cfg.epochs, cfg.batch_size, rng):
            hook: LogitGrad | None = None
            if old_p is not None:
                target = old_p[idx]

                def distill(logits: np.ndarray, target: np.ndarray = target) -> np.ndarray:
                    grad = np.zeros_like(logits)
                    new_p = _softmax(logits[:, old_classes] / t)
                    grad[:, old_classes] = scale * (new_p - target) / logits.shape[0]
                    return grad

                hook = distill

            head.step(emb[idx], labels[idx], logit_grad=add_grads(units, hook))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True), dtype=np.float32)
