"""CWR* and the head-only part of AR1* with latent replay (Maltoni & Lomonaco 2019; Pellegrini et al. 2020).

CWR* keeps *consolidated* output weights ``cw`` (one vector per class) and, per class, the number
of patterns it has been trained on, ``past``. For each incoming batch:

1. reset: the output layer's temporary weights ``tw`` are 0 for every class, except the classes in
   the batch that were consolidated before, which start from ``cw``;
2. train on the batch (only the output layer after the first batch for ``cwr_star``; the whole
   head for ``ar1_head``), with a softmax over every output unit (``train_units="all"``, as the
   papers' single head and Avalanche do; ``"seen"`` restricts it to the classes seen so far, and
   then a batch of one class learns nothing);
3. consolidate each class ``j`` of the batch, with ``cur_j`` its patterns in the batch::

       new_j  = tw[j] - mean(tw[classes of the batch])        (one scalar mean over all entries)
       wpast  = sqrt(past_j / cur_j)
       cw[j]  = (cw[j] * wpast + new_j) / (wpast + 1)          (= new_j the first time: past_j = 0)
       past_j = past_j + cur_j

   i.e. a running average in which the past and the present weigh ``sqrt(past_j)`` and
   ``sqrt(cur_j)``, as in the paper's pseudo-code and the authors' released code;
4. predict with ``cw``.

A class vector is the output layer's column for that class plus its bias (the weight of a constant
input of 1): `edge.base.Head.get_output_weights`. Between batches the consolidated weights live in
the head itself (its output layer is overwritten with ``cw`` after every batch), so the strategy's
own state is only ``past``; the optimizer's slots of the output layer are zeroed at each reset
(``tw`` is a fresh variable).

``ar1_head`` adds latent replay from the buffer: the classes and counts of a batch are those of
the new patterns plus the buffer's (as in the authors' AR1* + latent replay code, where the whole
replay memory takes part in every batch), and the lower layer of an MLP head keeps training (AR1*
trains the layers below the output with SI; here replay alone protects them).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge.base import Head
from edge.buffer import ReplayBuffer
from edge.errors import InputError
from edge.strategies.base import (
    LearnSettings,
    Strategy,
    check_state,
    minibatches,
    check_train_units,
    replay_minibatches,
    require_head,
    unit_grad,
)


def cwr_consolidate(cw: np.ndarray, past: np.ndarray, tw: np.ndarray, cur: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """One CWR* consolidation; returns new ``(cw, past)`` (inputs are not changed).

    Args:
        cw: consolidated class vectors ``(K, F)``.
        past: patterns each class was trained on before this batch ``(K,)``.
        tw: class vectors after training on the batch ``(K, F)``.
        cur: patterns of each class in the batch ``(K,)``; classes with 0 are left alone.

    Example (two batches, hand-computed):
        >>> cw, past = np.zeros((2, 2)), np.zeros(2)
        >>> cw, past = cwr_consolidate(cw, past, np.array([[3., 1.], [0., 0.]]), np.array([4, 0]))
        >>> cw.tolist(), past.tolist()          # mean of class 0's entries is 2
        ([[1.0, -1.0], [0.0, 0.0]], [4.0, 0.0])
    """
    cls = np.flatnonzero(cur > 0)
    cw = np.array(cw, dtype=np.float64, copy=True)
    past = np.array(past, dtype=np.float64, copy=True)
    if cls.size == 0:
        return cw, past
    rows = np.asarray(tw, np.float64)[cls]
    new = rows - rows.mean()
    wpast = np.sqrt(past[cls] / np.asarray(cur, np.float64)[cls])
    cw[cls] = (cw[cls] * wpast[:, None] + new) / (wpast + 1.0)[:, None]
    past[cls] += np.asarray(cur, np.float64)[cls]
    return cw, past


class CWRStarStrategy(Strategy):
    """CWR*: consolidated per-class output weights (Lomonaco & Maltoni 2017; Maltoni & Lomonaco 2019).

    Args:
        freeze_below: keep the layers below the output layer (an MLP head's hidden layer) fixed
            after the first batch, as CWR* does with the feature extractor (default True).
        train_units: the output units the training softmax spans: ``"all"`` (default: every unit
            of the head, as in the papers' single-head network and Avalanche's ``CWRStarPlugin``;
            units of other classes start each batch at 0 and are pushed down, which is what lets
            a batch of ONE class learn anything) or ``"seen"`` (only classes seen so far; a batch
            of one new class then has nothing to compete with and learns nothing).
        consolidate_bias: treat each class's output bias as one more CWR weight (reset, trained,
            mean-shifted and averaged with the rest of its vector; default True) or leave the
            biases out of CWR and let them train on every batch (False: what Avalanche's
            ``CWRStarPlugin`` does with a biased layer; the papers' layer has no bias).
        reset_momentum: zero the optimizer's slots of the output layer at each reset (default
            True: ``tw`` is a fresh variable, as in the papers) or keep them (False: Avalanche
            resets the weights but keeps the optimizer state across experiences).
    """

    name = "cwr_star"
    replay = False

    def __init__(self, freeze_below: bool = True, train_units: str = "all",
                 consolidate_bias: bool = True, reset_momentum: bool = True) -> None:
        self.freeze_below = freeze_below
        self.train_units = train_units
        self.consolidate_bias = consolidate_bias
        self.reset_momentum = reset_momentum

    def params(self) -> dict[str, Any]:
        return {"freeze_below": self.freeze_below, "train_units": self.train_units,
                "consolidate_bias": self.consolidate_bias, "reset_momentum": self.reset_momentum}

    def _batch_counts(self, labels: np.ndarray, buffer: ReplayBuffer, k: int) -> np.ndarray:
        return np.bincount(labels, minlength=k).astype(np.int64)

    def _train(self, head: Head, buffer: ReplayBuffer, emb: np.ndarray, labels: np.ndarray,
               rng: np.random.Generator, cfg: LearnSettings) -> None:
        hook = unit_grad(head, self.train_units)
        for idx in minibatches(emb.shape[0], cfg.epochs, cfg.batch_size, rng):
            head.step(emb[idx], labels[idx], logit_grad=hook)

    def learn(self, head: Head | None, buffer: ReplayBuffer, emb: np.ndarray, labels: np.ndarray,
              rng: np.random.Generator, cfg: LearnSettings) -> None:
        head = require_head(head, self.name)
        check_train_units(self.name, self.train_units)
        output = head.output_layer
        k = int(head.max_classes)
        if getattr(self, "past_", None) is None:
            self.past_ = np.zeros(k, np.int64)
            self.n_batches_ = 0
        if self.past_.shape != (k,):
            raise InputError(f"cwr state: expected {k} classes, got {self.past_.shape[0]}")
        cur = self._batch_counts(labels, buffer, k)
        cls = np.flatnonzero(cur > 0)
        # The head's output layer holds the consolidated weights between batches.
        cw = head.get_output_weights().astype(np.float64)
        # 1. reset: tw = 0, except consolidated classes of this batch (past > 0) which start from cw.
        start = np.zeros_like(cw)
        old = cls[self.past_[cls] > 0]
        start[old] = cw[old]
        if not self.consolidate_bias:   # the bias is not a CWR weight: it keeps training
            start[:, -1] = cw[:, -1]
        head.set_output_weights(start, reset_optimizer=self.reset_momentum)
        frozen = {}
        if self.freeze_below and self.n_batches_ > 0:
            frozen = {n: p for n, p in head.get_weights().items() if n not in output}
        # 2. train.
        self._train(head, buffer, emb, labels, rng, cfg)
        if frozen:
            head.set_weights(frozen)
        # 3. consolidate, 4. write cw into the head for prediction.
        tw = head.get_output_weights()
        if self.consolidate_bias:
            cw, past = cwr_consolidate(cw, self.past_, tw, cur)
        else:
            cw[:, :-1], past = cwr_consolidate(cw[:, :-1], self.past_, tw[:, :-1], cur)
            cw[:, -1] = tw[:, -1]
        head.set_output_weights(cw)
        self.past_ = past.astype(np.int64)
        self.n_batches_ += 1

    def state_dict(self) -> dict[str, np.ndarray]:
        if getattr(self, "past_", None) is None:
            return {}
        return {"past": self.past_.copy(), "n_batches": np.array(self.n_batches_, np.int64)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        if not state:
            self._forget("past_", "n_batches_")
            return
        arrays = check_state(self.name, state, {"past": (np.int64, (None,)), "n_batches": (np.int64, ())})
        if (arrays["past"] < 0).any():
            raise InputError(f"{self.name} state 'past': expected counts >= 0, got {arrays['past'].min()}")
        self.past_ = arrays["past"].copy()
        self.n_batches_ = int(arrays["n_batches"])


class AR1HeadStrategy(CWRStarStrategy):
    """AR1* with latent replay, head only: CWR* on the output layer + replay from the buffer.

    Meant for the MLP head (``AgentConfig(head="mlp")``): its hidden layer keeps learning, with
    replayed embeddings mixed into every mini-batch; with the softmax head it is CWR* + replay.

    Args:
        replay_ratio: share of each mini-batch drawn from the buffer (default: the agent's).
        freeze_below: keep the hidden layer fixed after the first batch (default False: AR1*).
        train_units: as for `CWRStarStrategy` (default ``"all"``).
    """

    name = "ar1_head"
    uses_buffer = True

    def __init__(self, replay_ratio: float | None = None, freeze_below: bool = False,
                 train_units: str = "all") -> None:
        super().__init__(freeze_below=freeze_below, train_units=train_units)
        self.replay_ratio = replay_ratio

    def params(self) -> dict[str, Any]:
        return {"replay_ratio": self.replay_ratio, "freeze_below": self.freeze_below,
                "train_units": self.train_units}

    def _batch_counts(self, labels: np.ndarray, buffer: ReplayBuffer, k: int) -> np.ndarray:
        counts = np.bincount(labels, minlength=k).astype(np.int64)
        stored = buffer.class_counts()
        counts[: stored.shape[0]] += stored[:k]
        return counts

    def _train(self, head: Head, buffer: ReplayBuffer, emb: np.ndarray, labels: np.ndarray,
               rng: np.random.Generator, cfg: LearnSettings) -> None:
        ratio = cfg.replay_ratio if self.replay_ratio is None else self.replay_ratio
        hook = unit_grad(head, self.train_units)
        for x, y in replay_minibatches(emb, labels, buffer, ratio, rng, cfg):
            head.step(x, y, logit_grad=hook)
