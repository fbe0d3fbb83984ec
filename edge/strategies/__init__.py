"""Continual-learning strategies: how one incoming batch trains the head and updates the buffer.

The seam is one small class. `Strategy.learn(head, buffer, emb, labels, rng, cfg)` does all the
work of one training batch and returns None; the agent then calls `Strategy.remember(buffer, raw,
labels)`, which offers the batch to the replay buffer when the strategy ``uses_buffer``. The head
is reached only through the `edge.base.Head` protocol, and ``emb`` is already standardised by the
agent (the buffer stores raw rows and returns them standardised). A strategy may keep its own state (`state_dict`,
`load_state_dict`, `nbytes`: plain arrays, stored by the agent under ``strategy.*``). A strategy
that owns its own classifier instead of training the gradient head (streaming LDA, nearest class
mean) sets ``owns_classifier = True`` and implements `predict_proba(head, emb)` and ``classes_``;
the agent then builds no gradient head (``head`` is None) and asks the strategy. ``uses_buffer``
tells the agent whether to allocate replay-buffer rows; ``supports_tflite_head`` whether the
strategy runs on the ``.tflite`` head backend (plain gradient steps only).

``cfg`` is any object with the attributes ``epochs``, ``batch_size``, ``replay_ratio`` and
``max_classes`` (the `edge.agent.AgentConfig` in practice).

========== ============================================ ================================ ===========
name       what                                         parameters (defaults)            memory
========== ============================================ ================================ ===========
naive      fine-tune the head on each batch             -                                head
replay     latent replay, class-balanced buffer          replay_ratio (agent's, 0.75)     head+buffer
refit      head fitted to convergence on the buffer      l2 (1e-2), max_iter, tol          head+buffer
refit_slda refit while the buffer holds every row, then  l2, max_iter, tol, shrinkage      head+buffer
           slda (the default of edge-agent)                                               (+1.5 d x d)
cumulative train on everything seen, to convergence     epochs (None), solver ('auto')   UNBOUNDED
cwr_star   CWR* consolidated output weights             train_units ('all'), ...         head+K ints
ar1_head   CWR* + latent replay, MLP head trains        replay_ratio, freeze_below=False head+buffer
slda       Deep Streaming LDA                            shrinkage ('auto': OAS)          1.5 d x d
ncm        nearest class mean                           standardize ('auto')             K x d
ridge      ridge on a random ReLU projection (GCV)      dims (2048), lam ('auto')        D x D
ewc        online EWC on the head's weights             ewc_lambda (1000), gamma (1.0)   3 x head
lwf        distillation to the head before the batch    alpha (2.0), temperature (2.0)   head
========== ============================================ ================================ ===========

Example:
    >>> import numpy as np
    >>> from types import SimpleNamespace
    >>> from edge.buffer import ReplayBuffer
    >>> from edge.heads import SoftmaxHead
    >>> cfg = SimpleNamespace(epochs=1, batch_size=8, replay_ratio=0.5, max_classes=3)
    >>> head, buf = SoftmaxHead(4, 3), ReplayBuffer(10, 4, max_classes=3)
    >>> s = make_strategy("replay")
    >>> x, y = np.ones((6, 4), np.float32), np.zeros(6, np.int64)
    >>> s.learn(head, buf, x, y, np.random.default_rng(0), cfg)
    >>> s.remember(buf, x, y)
    >>> len(buf), head.classes_.tolist()
    (6, [0])
    >>> sorted(STRATEGIES)
    ['ar1_head', 'cumulative', 'cwr_star', 'ewc', 'lwf', 'naive', 'ncm', 'refit', 'refit_slda', 'replay', 'ridge',
     'slda']
"""

from __future__ import annotations

from typing import Any

from edge.errors import ConfigError
from edge.strategies.base import LearnSettings, Strategy
from edge.strategies.basic import CumulativeStrategy, NaiveStrategy, ReplayStrategy
from edge.strategies.cwr import AR1HeadStrategy, CWRStarStrategy, cwr_consolidate
from edge.strategies.lda import NCMStrategy, SLDAStrategy
from edge.strategies.refit import RefitStrategy
from edge.strategies.refit_slda import RefitSLDAStrategy
from edge.strategies.regularized import EWCStrategy, LwFStrategy
from edge.strategies.ridge import RidgeStrategy

__all__ = ["STRATEGIES", "Strategy", "LearnSettings", "make_strategy", "NaiveStrategy", "ReplayStrategy",
           "CumulativeStrategy", "CWRStarStrategy", "AR1HeadStrategy", "SLDAStrategy", "NCMStrategy",
           "EWCStrategy", "LwFStrategy", "RidgeStrategy", "RefitStrategy",
           "RefitSLDAStrategy", "cwr_consolidate", "tflite_head_strategies"]

#: Strategy classes by name; `make_strategy` builds one.
STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (NaiveStrategy, ReplayStrategy, CumulativeStrategy, CWRStarStrategy,
                              AR1HeadStrategy, SLDAStrategy, NCMStrategy, EWCStrategy, LwFStrategy,
                              RidgeStrategy, RefitStrategy, RefitSLDAStrategy)
}


def tflite_head_strategies() -> list[str]:
    """Names of the strategies that run on the ``.tflite`` head backend (``supports_tflite_head``)."""
    return sorted(name for name, cls in STRATEGIES.items() if cls.supports_tflite_head)


def make_strategy(name: str, **params: Any) -> Strategy:
    """Build a registered strategy; unknown names or parameters raise `ConfigError` (a ValueError)."""
    if name not in STRATEGIES:
        raise ConfigError(f"strategy: expected one of {sorted(STRATEGIES)}, got {name!r}")
    try:
        return STRATEGIES[name](**params)
    except TypeError as exc:
        raise ConfigError(f"strategy {name!r}: bad parameters {params}: {exc}") from exc
