"""The on-device learner: a frozen backbone, a head, a replay buffer and a strategy.

The agent owns standardisation: embeddings are standardised once (`edge.base.Standardizer`, with
the backbone's pretraining statistics, when ``AgentConfig.standardize``) before they reach the
head and the strategy. The replay buffer stores rows as the backbone produced them and returns
them standardised. A strategy that owns its classifier (``slda``, ``ncm``) gets no gradient head.

Example (embedding-only: no backbone, as the simulator does with cached embeddings):
    >>> import numpy as np
    >>> from edge.agent import Agent, AgentConfig
    >>> agent = Agent(None, AgentConfig(max_classes=4, buffer_capacity=20), embedding_size=8)
    >>> rng = np.random.default_rng(0)
    >>> centers = rng.normal(size=(4, 8)).astype(np.float32) * 3
    >>> for c in range(4):   # one class per batch: replay keeps the old ones
    ...     agent.learn_embeddings(centers[c] + rng.normal(size=(30, 8)).astype(np.float32), np.full(30, c))
    >>> agent.evaluate_embeddings(centers, np.arange(4))
    1.0
    >>> agent.classes_seen().tolist()
    [0, 1, 2, 3]

One call answers (`answer_embeddings` / `answer_many`: probabilities, class index or `UNKNOWN`,
top probability, and the novelty when the rule uses it or ``novelty=True`` asks; the "unknown" rule
is `edge.openset.OpenSetPolicy`'s):
    >>> answer = agent.answer_embeddings(centers[:2])
    >>> answer.index.tolist(), answer.unknown.tolist()
    ([0, 1], [False, False])

With a backbone, frames go through ``learn_many`` / ``answer_many`` / ``predict_many``:
    >>> from edge.runtimes import open_backbone
    >>> agent = Agent(open_backbone("models/tiny"), AgentConfig())   # doctest: +SKIP
    >>> agent.learn_many(frames_uint8, labels)                           # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import logging

import numpy as np

from edge.base import Head, Standardizer
from edge.buffer import ReplayBuffer, _rng_from_array, _rng_state_array
from edge.config import HEAD_BACKENDS as HEAD_BACKENDS  # re-exported, as before edge.config
from edge.config import AgentConfig as AgentConfig  # re-exported: `from edge.agent import AgentConfig`
from edge.errors import ConfigError, InputError
from edge.heads import make_head
from edge.knowledge.ledger import Ledger
from edge.openset import UNKNOWN, Answer, OpenSet, OpenSetPolicy, decide, exclude_classes
from edge.preprocess import as_frame_batch
from edge.runtimes import Backbone, limit_blas_threads
from edge.stats import ClassStatistics
from edge.strategies import STRATEGIES, Strategy, make_strategy, tflite_head_strategies
from edge.strategies.lda import subtract_scatter

__all__ = ["Agent", "AgentConfig", "Answer", "OpenSetPolicy", "UNKNOWN"]

logger = logging.getLogger(__name__)


class Agent:
    """Continual learner on embeddings of a frozen backbone.

    Args:
        backbone: a `Backbone` (`edge.runtimes.open_backbone`), or None to work on embeddings only.
        config: an `AgentConfig` (defaults if None).
        embedding_size: required when ``backbone`` is None.
        embedding_mean, embedding_std: standardisation statistics when ``backbone`` is None
            (with a backbone they come from its manifest). Used when ``config.standardize``.

    Verbs: ``learn_many`` / ``learn_embeddings`` mutate the state and return None;
    ``answer_many`` (the device's answer: `edge.openset.Answer`, the "unknown" rule of
    `edge.openset.OpenSetPolicy`), ``predict_many`` (closed-set labels) / ``predict_proba_many`` /
    ``novelty_many`` / ``evaluate`` take frames and their ``*_embeddings`` twins take precomputed
    embeddings. Every input is validated before any state changes; errors are `InputError` with
    expected vs got. Other modules use only these public verbs and attributes (``stats``,
    ``openset``, ``strategy``, ``buffer``, ``config``, ...), never a ``_private`` one
    (tests/test_answer.py scans ``edge/`` and ``firmware_sim/``).
    """

    def __init__(self, backbone: Backbone | None, config: AgentConfig | None = None, *,
                 embedding_size: int | None = None,
                 embedding_mean: np.ndarray | Sequence[float] | None = None,
                 embedding_std: np.ndarray | Sequence[float] | None = None) -> None:
        self.backbone = backbone
        self.config = config if config is not None else AgentConfig()
        cfg = self.config
        if backbone is not None:
            # the head's small matmuls follow each invoke: BLAS threads would only fight the
            # runtime's (edge.runtimes.limit_blas_threads has the measurement)
            limit_blas_threads(1)
            manifest = backbone.manifest
            if embedding_size is not None and embedding_size != manifest.embedding_size:
                raise InputError(f"embedding_size: expected {manifest.embedding_size} (the backbone's), "
                                 f"got {embedding_size}")
            embedding_size = manifest.embedding_size
            embedding_mean = manifest.embedding_mean if embedding_mean is None else embedding_mean
            embedding_std = manifest.embedding_std if embedding_std is None else embedding_std
        if embedding_size is None or int(embedding_size) <= 0:
            raise ConfigError(f"embedding_size: expected a positive int when backbone is None, "
                              f"got {embedding_size!r}")
        self.embedding_size = int(embedding_size)
        self.standardizer: Standardizer | None = None
        if cfg.standardize and embedding_mean is not None:
            self.standardizer = Standardizer(np.asarray(embedding_mean, np.float32),
                                             None if embedding_std is None else np.asarray(embedding_std, np.float32))
            if self.standardizer.embedding_size != self.embedding_size:
                raise ConfigError(f"embedding_mean/std: expected shape ({self.embedding_size},), got "
                                  f"({self.standardizer.embedding_size},)")
        #: Per-class counts and sums (`edge.stats`): the one copy the open-set score and the
        #: statistics strategies (``slda``, ``ncm``) read.
        self.stats = ClassStatistics(cfg.max_classes, self.embedding_size, directions=True)
        self.strategy: Strategy = make_strategy(cfg.strategy, **cfg.strategy_params)
        self.strategy.attach_statistics(self.stats)
        if cfg.head_backend == "tflite" and not type(self.strategy).supports_tflite_head:
            raise ConfigError(f"AgentConfig.strategy: the tflite head backend supports "
                              f"{tflite_head_strategies()} (plain gradient steps), got "
                              f"{cfg.strategy!r}, which changes the head's loss or weights; "
                              "use one of those (--strategy replay) or head_backend='numpy'")
        self.head: Head | None = self._new_head()
        capacity = cfg.buffer_capacity if self.strategy.uses_buffer else 0
        self.buffer = ReplayBuffer(capacity, self.embedding_size, cfg.buffer_policy,
                                   cfg.buffer_storage, cfg.max_classes, seed=cfg.seed + 1,
                                   standardizer=self.standardizer)
        self.rng_ = np.random.default_rng(cfg.seed + 2)
        #: Open-set score (`edge.openset`): novelty from ``stats`` + its calibrated threshold.
        self.openset = OpenSet(self.stats)
        self.step_ = 0
        self.n_learned_ = 0
        #: The teach ledger (`edge.knowledge.ledger.Ledger`): None until `enable_ledger`; saved in
        #: the state under ``knowledge.*`` when on.
        self.knowledge: Ledger | None = None

    def _new_head(self) -> Head | None:
        """A fresh head of the configured kind and backend (same seed: same initial weights), or
        None when the strategy owns its classifier."""
        cfg = self.config
        if STRATEGIES[cfg.strategy].owns_classifier:
            return None
        params: dict[str, Any] = {"hidden": cfg.hidden, "optimizer": cfg.optimizer, "lr": cfg.lr,
                                  "momentum": cfg.momentum, "weight_decay": cfg.weight_decay,
                                  "seed": cfg.seed}
        if cfg.head_backend == "numpy":
            return make_head(cfg.head, self.embedding_size, cfg.max_classes, **params)
        from edge.tflite_head import TFLiteHead, find_head_file

        path: str | Path | None = cfg.head_file
        if path is None:
            if self.backbone is None:
                raise ConfigError("AgentConfig.head_file: expected the path of a head .tflite file for "
                                  "head_backend='tflite' on an embeddings-only agent, got None")
            path = find_head_file(Path(self.backbone.info.file).parent, self.backbone.manifest, cfg)
        return TFLiteHead(path, self.embedding_size, cfg.max_classes, kind=cfg.head, **params)

    # -------------------------------------------------------------- validation
    def _check_labels(self, labels: Any, n: int) -> np.ndarray:
        y = np.asarray(labels)
        if y.ndim == 0:
            y = y.reshape(1)
        if y.ndim != 1:
            raise InputError(f"labels: expected a 1-D array, got shape {y.shape}")
        if y.shape[0] != n:
            raise InputError(f"labels: expected {n} labels (one per frame/embedding), got {y.shape[0]}")
        if y.size and not np.issubdtype(y.dtype, np.integer):
            if np.issubdtype(y.dtype, np.floating) and np.isfinite(y).all() and (y == np.round(y)).all():
                y = y.astype(np.int64)
            else:
                raise InputError(f"labels: expected integers, got dtype {y.dtype}")
        y = y.astype(np.int64, copy=False)
        if y.size and (y.min() < 0 or y.max() >= self.config.max_classes):
            bad = y[(y < 0) | (y >= self.config.max_classes)][0]
            raise InputError(f"labels: expected values in [0, {self.config.max_classes - 1}] "
                             f"(max_classes={self.config.max_classes}), got {bad}")
        return y

    def _check_embeddings(self, emb: Any) -> np.ndarray:
        x = np.asarray(emb)
        if x.ndim == 1:
            x = x.reshape(1, -1)
        if x.ndim != 2 or x.shape[1] != self.embedding_size:
            raise InputError(f"embeddings: expected shape (N, {self.embedding_size}), got {x.shape}")
        if x.shape[0] == 0:
            raise InputError("embeddings: expected at least one row, got an empty batch")
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise InputError(f"embeddings: expected float32, got {x.dtype}")
        x = x.astype(np.float32, copy=False)
        if not np.isfinite(x).all():
            raise InputError("embeddings: expected finite values, got NaN or inf")
        return x

    def embed(self, frames: np.ndarray) -> np.ndarray:
        """Frames -> validated embeddings (needs a backbone)."""
        if self.backbone is None:
            raise InputError("frames: this agent has no backbone (embedding-only); "
                             "expected precomputed embeddings, got frames")
        return self._embed_batch(as_frame_batch(frames))

    def _embed_batch(self, batch: np.ndarray) -> np.ndarray:
        """Trusted path: frames validated by `as_frame_batch` -> float32 ``(N, embedding_size)``
        (the backbone's output shape and dtype are fixed at load)."""
        if self.backbone is None:
            raise InputError("frames: this agent has no backbone (embedding-only); "
                             "expected precomputed embeddings, got frames")
        return self.backbone.embed_batch(batch)

    # ------------------------------------------------------------------ verbs
    def learn_many(self, frames: np.ndarray, labels: Any) -> None:
        """Embed a batch of frames once, then let the strategy learn from it. Returns None."""
        batch = as_frame_batch(frames)
        y = self._check_labels(labels, batch.shape[0])
        x = self._embed_batch(batch)
        if not np.isfinite(x).all():  # never let a broken backbone output reach the learned state
            raise InputError("embeddings: expected finite values from the backbone, got NaN or inf")
        self._learn(x, y)

    def learn_embeddings(self, emb: np.ndarray, labels: Any) -> None:
        """Learn from precomputed embeddings ``(N, embedding_size)``. Returns None."""
        x = self._check_embeddings(emb)
        y = self._check_labels(labels, x.shape[0])
        self._learn(x, y)

    def _standardize(self, x: np.ndarray) -> np.ndarray:
        return x if self.standardizer is None else self.standardizer(x)

    def _learn(self, x: np.ndarray, y: np.ndarray) -> None:
        z = self._standardize(x)
        self.strategy.learn(self.head, self.buffer, z, y, self.rng_, self.config)  # sees stats before z
        self.stats.update(z, y, units=x)
        self.strategy.refresh()  # e.g. SLDA's precision, here on the learning thread, not at predict
        self.openset.calibrate(x, y)
        self._refresh_openset()
        self._calibrate_probabilities()
        self.strategy.remember(self.buffer, x, y)
        self.step_ += 1
        self.n_learned_ += int(x.shape[0])

    def _refresh_openset(self) -> None:
        """Derive the open-set whitening now (the learning thread) when novelty is in use
        (`edge.openset.OpenSet.in_use`); otherwise nothing: an agent that never computes a novelty
        never pays for it (a d x d Cholesky and inverse: ~0.26 s and 13 MB at d = 1280)."""
        if self.openset.in_use:
            self.openset.refresh()

    def _calibrate_probabilities(self) -> None:
        """Refit the probability temperature of a strategy that has one (``slda``, ``ncm``:
        `edge.strategies.lda.fit_temperature`) on leave-one-burst-out scores of the rows the
        open-set calibration keeps (`edge.openset.OpenSet.held_out_rows`), here on the learning
        thread. Temperature 1 until some class was taught in two learn calls."""
        calibrate = getattr(self.strategy, "calibrate_probabilities", None)
        if calibrate is None:
            return
        x, y, burst_sum, burst_n = self.openset.held_out_rows()   # at most its capacity (256)
        if y.size == 0:
            calibrate(np.zeros((0, self.embedding_size)), y, x, burst_n)
            return
        n = burst_n.astype(np.float64)[:, None]
        z = self._standardize(x.astype(np.float32)).astype(np.float64)
        burst_z = self._standardize((burst_sum / n).astype(np.float32)).astype(np.float64) * n
        calibrate(z, y, burst_z, burst_n)

    def _require_head(self) -> Head:
        if self.head is None:
            raise ConfigError(f"agent: strategy {self.config.strategy!r} has no gradient head")
        return self.head

    def predict_proba_embeddings(self, emb: np.ndarray) -> np.ndarray:
        """``(N, max_classes)`` probabilities; 0 for classes never seen."""
        return self._proba_standardized(self._standardize(self._check_embeddings(emb)))

    def _proba_standardized(self, z: np.ndarray) -> np.ndarray:
        if self.strategy.owns_classifier:
            return self.strategy.predict_proba(self.head, z)
        return self._require_head().predict_proba(z)

    def answer_embeddings(self, emb: np.ndarray, policy: OpenSetPolicy | None = None, *,
                          exclude: np.ndarray | None = None, validate: bool = True,
                          novelty: bool = False) -> Answer:
        """The agent's answer for each row: probabilities, class index or `UNKNOWN`, top
        probability, novelty (`edge.openset.Answer`), embeddings standardised once.

        The novelty score is computed only when the rule needs it (``policy.reject_novel``) or the
        caller asks (``novelty=True``: to show or study it); otherwise ``Answer.novelty`` is NaN and
        ``Answer.threshold`` NaN (nothing computed: at d = 1280 the score is ~90 % of an answer's
        time after the embedding).

        Args:
            emb: ``(N, embedding_size)`` embeddings (one row may be given as ``(embedding_size,)``).
            policy: the "unknown" rule's knobs (default `edge.openset.OpenSetPolicy()`: novelty
                rejection off, unknown below top probability 0.5).
            exclude: bool ``(max_classes,)``: classes never to answer (e.g. forgotten ones); their
                probability is zeroed and the rows renormalised.
            validate: False skips the shape/dtype/finiteness checks, for a caller that guarantees a
                finite float32 ``(N, embedding_size)`` array (the device loop checks the backbone's
                output for finiteness once per frame).
            novelty: also compute the novelty (and its threshold) when the rule does not need it.
        """
        x = self._check_embeddings(emb) if validate else emb
        z = self._standardize(x)  # once, for the classifier and the open-set score
        proba = self._proba_standardized(z)
        if exclude is not None:
            proba = exclude_classes(proba, exclude)
        policy = policy if policy is not None else OpenSetPolicy()
        if not (novelty or policy.reject_novel):
            return decide(proba, np.full(x.shape[0], np.nan), float("nan"), policy)
        return decide(proba, self.openset.novelty(x), self.openset.threshold_at(policy.unknown_rate), policy)

    def answer_many(self, frames: np.ndarray, policy: OpenSetPolicy | None = None, *,
                    exclude: np.ndarray | None = None, novelty: bool = False) -> Answer:
        """Frames -> `answer_embeddings` (embedded once)."""
        return self.answer_embeddings(self.embed(frames), policy, exclude=exclude, validate=False,
                                      novelty=novelty)

    def predict_embeddings(self, emb: np.ndarray, unknown: bool = False) -> np.ndarray:
        """Most probable seen class per row (int64): closed set by default (accuracies, edge-sim);
        with ``unknown``, `UNKNOWN` (-1) where the novelty is above the calibrated threshold (the
        novelty rule of `answer_embeddings` alone)."""
        return self._predict(self._check_embeddings(emb), unknown)

    def _predict(self, x: np.ndarray, unknown: bool) -> np.ndarray:
        if unknown:
            return self.answer_embeddings(x, OpenSetPolicy(reject_novel=True, min_probability=0.0),
                                          validate=False).index
        labels: np.ndarray = self._proba_standardized(self._standardize(x)).argmax(axis=1).astype(np.int64)
        return labels

    def novelty_embeddings(self, emb: np.ndarray) -> np.ndarray:
        """Open-set score per row (float64): MDS++, the Mahalanobis distance of the row's direction
        to the nearest learned class mean direction (`edge.openset`); above `novelty_threshold` a
        row is novel (NaN for a checkpoint that predates the direction statistics: never novel)."""
        return self.openset.novelty(self._check_embeddings(emb))

    def novelty_many(self, frames: np.ndarray) -> np.ndarray:
        """Frames -> open-set score per frame (see `novelty_embeddings`)."""
        return self.openset.novelty(self.embed(frames))

    @property
    def novelty_threshold(self) -> float:
        """The calibrated novelty threshold (+inf before calibration)."""
        return self.openset.threshold

    def evaluate_embeddings(self, emb: np.ndarray, labels: Any) -> float:
        """Accuracy in [0, 1] on precomputed embeddings (closed set)."""
        x = self._check_embeddings(emb)
        y = self._check_labels(labels, x.shape[0])
        return float((self._predict(x, False) == y).mean())

    def predict_proba_many(self, frames: np.ndarray) -> np.ndarray:
        """Frames -> ``(N, max_classes)`` probabilities."""
        return self._proba_standardized(self._standardize(self.embed(frames)))

    def predict_many(self, frames: np.ndarray, unknown: bool = False) -> np.ndarray:
        """Frames -> predicted labels (int64), closed set by default; with ``unknown``,
        `UNKNOWN` (-1) for a frame whose novelty is above the calibrated threshold. For the
        device's answer (with the probability rule and its default) use `answer_many`."""
        return self._predict(self.embed(frames), unknown)

    def evaluate(self, frames: np.ndarray, labels: Any) -> float:
        """Accuracy in [0, 1] on frames (closed set)."""
        batch = as_frame_batch(frames)
        y = self._check_labels(labels, batch.shape[0])
        return float((self.predict_many(batch) == y).mean())

    # ------------------------------------------------------------------ state
    def classes_seen(self) -> np.ndarray:
        """Labels learned so far, sorted."""
        if self.strategy.owns_classifier:
            return self.strategy.classes_
        return self._require_head().classes_

    def state_dict(self) -> dict[str, np.ndarray]:
        """Flat dict of plain arrays: ``head.*`` (none when the strategy owns its classifier),
        ``buffer.*``, ``strategy.*``, ``agent.*``."""
        state: dict[str, np.ndarray] = {}
        parts: list[tuple[str, Any]] = [("buffer", self.buffer), ("strategy", self.strategy)]
        if self.head is not None:
            parts.insert(0, ("head", self.head))
        for prefix, part in parts:
            state.update({f"{prefix}.{k}": v for k, v in part.state_dict().items()})
        state.update({f"stats.{k}": v for k, v in self.stats.state_dict().items()})
        state.update({f"openset.{k}": v for k, v in self.openset.state_dict().items()})
        state["agent.rng"] = _rng_state_array(self.rng_)
        state["agent.step"] = np.array(self.step_, dtype=np.int64)
        state["agent.n_learned"] = np.array(self.n_learned_, dtype=np.int64)
        if self.knowledge is not None:
            state.update(self.knowledge.state_dict())
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore everything from `state_dict` output; nothing changes if any part is invalid."""
        parts: dict[str, dict[str, np.ndarray]] = {"head": {}, "buffer": {}, "strategy": {}, "agent": {},
                                                   "stats": {}, "openset": {}, "knowledge": {}}
        for key, value in state.items():
            prefix, _, name = key.partition(".")
            if prefix not in parts:
                raise InputError(f"agent state: expected keys prefixed head./buffer./strategy./agent./stats./openset., "
                                 f"got {key!r}")
            parts[prefix][name] = value
        missing = {"rng", "step", "n_learned"} - set(parts["agent"])
        if missing:
            raise InputError(f"agent state: expected agent.{sorted(missing)}, got none")
        # Validate into fresh components first, then swap: a bad state leaves this agent intact.
        head = self._new_head()
        if head is not None:
            head.load_state_dict(parts["head"])
        elif parts["head"]:
            # Checkpoints written before slda/ncm lost their gradient head carry that head's
            # state; it was never trained (nothing seen), so it is dropped. Anything else is refused.
            seen = parts["head"].get("seen")
            if seen is None or np.asarray(seen).any():
                raise InputError(f"agent state: expected no head.* keys for strategy "
                                 f"{self.config.strategy!r} (it owns its classifier), got "
                                 f"{sorted(parts['head'])}")
        buffer = ReplayBuffer(self.buffer.capacity, self.buffer.embedding_size, self.buffer.policy,
                              self.buffer.storage, self.buffer.max_classes, self.buffer.seed,
                              standardizer=self.standardizer)
        try:
            buffer.load_state_dict(parts["buffer"])
        except KeyError as exc:
            raise InputError(f"buffer state: expected key {exc}, got none") from exc
        strategy = make_strategy(self.config.strategy, **self.config.strategy_params)
        stats = ClassStatistics(self.config.max_classes, self.embedding_size, directions=True)
        strategy_state, stats_state, openset_state = self._split_legacy(strategy, parts)
        strategy.load_state_dict(strategy_state)
        if stats_state:
            stats.load_state_dict(stats_state)
        strategy.attach_statistics(stats)
        rng = _rng_from_array(parts["agent"]["rng"])
        openset = OpenSet(stats)
        if openset_state:  # checkpoints written before open-set rejection have none: it relearns
            openset.load_state_dict(openset_state)
        knowledge = (Ledger.from_state(parts["knowledge"], self.embedding_size, self.config.max_classes)
                     if parts["knowledge"] else None)
        self.knowledge = knowledge
        self.head, self.buffer, self.strategy, self.rng_ = head, buffer, strategy, rng
        # Nothing derived here: a loaded state is usually learned from next (the device loop's
        # learner copies the agent, then teaches the copy, which derives once, after the change).
        self.stats, self.openset = stats, openset
        self.step_ = int(parts["agent"]["step"])
        self.n_learned_ = int(parts["agent"]["n_learned"])

    def _split_legacy(self, strategy: Strategy, parts: dict[str, dict[str, np.ndarray]]
                      ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
        """``(strategy, stats, openset)`` states; a checkpoint written before `edge.stats` is mapped:
        the class counts and sums come from ``slda``'s/``ncm``'s own (then their predictions are
        what they were) or else from ``openset.count/sum``; the squared norms from ``openset.sq``
        (when its counts agree), else from a unit-variance prior (the open-set spread of those
        classes is assumed, not known: ``d`` per row in standardised space)."""
        strategy_state, stats_state = strategy.split_legacy_state(dict(parts["strategy"]))
        openset_state = dict(parts["openset"])
        old_open: dict[str, np.ndarray] = {k: openset_state.pop(k) for k in ("count", "sum", "sq")
                                           if k in openset_state}
        if parts["stats"]:
            if stats_state is not None or old_open:
                raise InputError("agent state: expected class statistics once (stats.*), got them also "
                                 "under strategy.* or openset.*")
            return strategy_state, dict(parts["stats"]), openset_state
        if stats_state is None and not old_open:
            return strategy_state, {}, openset_state
        if stats_state is None:
            if set(old_open) != {"count", "sum", "sq"}:
                raise InputError(f"openset state: expected keys ['count', 'n_scores', 'scores', 'sq', 'sum'], "
                                 f"got {sorted(parts['openset'])}")
            return strategy_state, old_open, openset_state
        count = np.asarray(stats_state["count"])
        sums = np.asarray(stats_state["sum"], np.float64)
        if "sq" in old_open and np.array_equal(np.asarray(old_open.get("count")), count):
            sq = np.asarray(old_open["sq"])
        else:
            if old_open:
                logger.warning("agent state: open-set statistics disagree with the strategy's; class "
                               "spreads assumed (unit variance) until relearned")
            n = np.maximum(count, 1).astype(np.float64)
            sq = (sums * sums).sum(1) / n + np.maximum(count - 1, 0) * float(sums.shape[-1])
        return strategy_state, {"count": count, "sum": sums, "sq": sq}, openset_state

    def copy(self) -> Agent:
        """An independent agent with the same backbone, config, standardisation and (copied) state."""
        clone = Agent(self.backbone, self.config,
                      embedding_size=self.embedding_size if self.backbone is None else None)
        clone.standardizer = self.standardizer
        clone.buffer.standardizer = self.standardizer
        clone.load_state_dict(self.state_dict())
        return clone

    # ------------------------------------------------------------------ knowledge
    def enable_ledger(self, thumbnail_size: int = 128, **budgets: int) -> Ledger:
        """Turn the teach ledger on (no-op when on); returns it. ``budgets``: ``thumbnail_budget``,
        ``row_budget`` in bytes (`edge.knowledge.ledger`)."""
        if self.knowledge is None:
            self.knowledge = Ledger(self.embedding_size, thumbnail_size, **budgets)
        return self.knowledge

    def teach(self, frames: np.ndarray, labels: Any, *, source: str = "api",
              thumbnail_frames: Sequence[np.ndarray] | None = None) -> list[int]:
        """`learn_many`, then record the teach in the ledger (when on) with a thumbnail of each
        frame (of ``thumbnail_frames`` when given: the original pictures, any size, one per frame,
        so that a model with a larger input can re-embed them). Returns the new event ids (one per
        distinct label; [] with the ledger off)."""
        batch = as_frame_batch(frames)
        y = self._check_labels(labels, batch.shape[0])
        x = self._embed_batch(batch)
        if not np.isfinite(x).all():
            raise InputError("embeddings: expected finite values from the backbone, got NaN or inf")
        thumbs = None
        if self.knowledge is not None and self.knowledge.thumbnail_size > 0:
            from edge.knowledge.thumbnails import encode_thumbnail

            pictures = batch if thumbnail_frames is None else thumbnail_frames
            if len(pictures) != batch.shape[0]:
                raise InputError(f"thumbnail_frames: expected {batch.shape[0]} (one per frame), got {len(pictures)}")
            thumbs = [encode_thumbnail(f, self.knowledge.thumbnail_size) for f in pictures]
        self._learn(x, y)
        if self.knowledge is None:
            return []
        return self.knowledge.record(x, y, source=source, thumbnails=thumbs)

    def teach_embeddings(self, emb: np.ndarray, labels: Any, *, source: str = "api",
                         thumbnails: Sequence[bytes] | None = None) -> list[int]:
        """`learn_embeddings`, then record the teach in the ledger (when on). Returns event ids."""
        x = self._check_embeddings(emb)
        y = self._check_labels(labels, x.shape[0])
        self.learn_embeddings(x, y)   # the public verb (what callers and tests wrap)
        if self.knowledge is None:
            return []
        return self.knowledge.record(x, y, source=source, thumbnails=thumbnails)

    @property
    def removal_is_exact(self) -> bool:
        """True when removing rows subtracts them exactly (statistics strategies ``slda``, ``ncm``,
        ``ridge`` and any strategy with ``subtract_statistics``); False: the rows leave the buffer
        and the head is refitted from what remains. ``refit_slda``: exact once SLDA answers."""
        if hasattr(self.strategy, "forget_rows"):
            return bool(getattr(self.strategy, "uses_slda_", False))
        return bool(self.strategy.owns_classifier and (self.strategy.name in ("slda", "ncm")
                                                       or hasattr(self.strategy, "subtract_statistics")))

    def forget_samples(self, rows: np.ndarray, labels: Any) -> str:
        """Remove rows learned before (as the backbone produced them) with their labels.

        Statistics strategies: their per-row terms are subtracted (class statistics, SLDA's shared
        scatter by the inverse of its parallel update, NCM's squares): the state equals one that
        never learned the rows, up to float rounding. Gradient strategies: the rows leave the replay
        buffer and the head (and the strategy) are refitted from what remains (the buffer, or the
        ledger's rows for a strategy without a buffer). ``refit_slda``: the rows leave the buffer
        and SLDA's scatter; the head is refitted when the buffer holds every remaining row
        (`edge.strategies.refit_slda`). The open-set calibration sample is kept.
        Returns ``"exact"`` or ``"refit"``. Nothing changes if the rows were not learned (`InputError`).
        """
        x = self._check_embeddings(rows)
        y = self._check_labels(labels, x.shape[0])
        z = self._standardize(x)
        batch = ClassStatistics.of_rows(z, y, self.config.max_classes,
                                        units=x if self.stats.directions else None)
        remaining = self.stats.copy()
        remaining.subtract(batch)           # raises (nothing changed) when more rows than learned
        forget_rows = getattr(self.strategy, "forget_rows", None)
        if forget_rows is not None:         # refit_slda: buffer, exact scatter, head refitted when complete
            self.buffer.remove(x, y)
            how = str(forget_rows(self.buffer, z, y, batch, remaining))
            self.stats.subtract(batch)
            self.strategy.refresh()
        elif self.removal_is_exact:
            self._subtract_from_strategy(z, y, batch, remaining)
            self.stats.subtract(batch)
            how = "exact"
            refresh = getattr(self.strategy, "refresh", None)
            if refresh is not None:  # a strategy that derives its classifier after each change
                refresh()
        else:
            self.buffer.remove(x, y)
            self.stats.subtract(batch)
            self._refit()
            how = "refit"
        self._refresh_openset()   # the open-set whitening follows the statistics, here, not at predict
        self._calibrate_probabilities()
        self.n_learned_ = max(0, self.n_learned_ - int(x.shape[0]))
        self.step_ += 1
        return how

    def _subtract_from_strategy(self, z: np.ndarray, y: np.ndarray, batch: ClassStatistics,
                                remaining: ClassStatistics) -> None:
        strategy: Any = self.strategy
        if hasattr(strategy, "subtract_statistics"):   # ridge: its own sufficient statistics
            strategy.subtract_statistics(strategy.statistics_of(z, y, self.config.max_classes))
            return
        z64 = z.astype(np.float64)
        if strategy.name == "ncm" and getattr(strategy, "sq_", None) is not None:
            strategy.sq_ -= (z64 * z64).sum(axis=0)
        elif strategy.name == "slda" and getattr(strategy, "scatter_", None) is not None:
            strategy.scatter_ = subtract_scatter(strategy.scatter_, z64, y, batch, remaining)

    def _refit(self) -> None:
        """A fresh head and strategy fitted on what remains (buffer rows, or the ledger's)."""
        if self.strategy.uses_buffer:
            z, y = self.buffer.contents()
        elif self.knowledge is not None and len(self.knowledge):
            z, y = self._standardize(self.knowledge.rows), self.knowledge.sample_label.copy()
        else:
            z, y = np.zeros((0, self.embedding_size), np.float32), np.zeros(0, np.int64)
        head = self._new_head()
        strategy = make_strategy(self.config.strategy, **self.config.strategy_params)
        strategy.attach_statistics(self.stats)
        if z.shape[0]:
            empty = ReplayBuffer(0, self.embedding_size, self.buffer.policy, self.buffer.storage,
                                 self.config.max_classes)
            strategy.learn(head, empty, z, y, self.rng_, self.config)
        self.head, self.strategy = head, strategy

    def _require_ledger(self) -> Ledger:
        if self.knowledge is None:
            raise ConfigError("teach ledger: expected a state with a ledger (taught with it on), got none: "
                              "this state's teaches cannot be undone one by one (forget the class instead)")
        return self.knowledge

    def remove_event(self, event_id: int) -> dict[str, Any]:
        """Undo one teach event (its samples); returns ``{"event", "label", "samples", "removal"}``."""
        ledger = self._require_ledger()
        positions = ledger.samples_of_event(event_id)
        info = ledger.event(event_id)
        how = self.forget_samples(ledger.rows[positions], ledger.sample_label[positions])
        ledger.take(positions)
        return {"event": int(event_id), "label": int(info["label"]), "samples": int(positions.size),
                "removal": how}

    def remove_sample(self, sample_id: int) -> dict[str, Any]:
        """Remove one taught sample; returns ``{"sample", "label", "removal"}``."""
        ledger = self._require_ledger()
        positions = ledger.position_of_sample(sample_id)
        how = self.forget_samples(ledger.rows[positions], ledger.sample_label[positions])
        _, labels = ledger.take(positions)
        return {"sample": int(sample_id), "label": int(labels[0]), "removal": how}

    def undo_last(self) -> dict[str, Any]:
        """Undo the newest teach event still in the ledger (`remove_event`)."""
        last = self._require_ledger().last_event()
        if last is None:
            raise InputError("undo: expected a teach to undo, got an empty ledger")
        return self.remove_event(last.id)

    def remove_label(self, label: int) -> dict[str, Any]:
        """Remove every ledger sample of one class; ``complete`` says whether that was all of it
        (the class then holds no row; else rows learned before the ledger remain)."""
        ledger = self._require_ledger()
        positions = ledger.samples_of_label(label)
        how = "none"
        if positions.size:
            how = self.forget_samples(ledger.rows[positions], ledger.sample_label[positions])
            ledger.take(positions)
        left = int(self.stats.count_[int(label)])
        return {"label": int(label), "samples": int(positions.size), "removal": how, "complete": left == 0}

    def memory_bytes(self) -> dict[str, int]:
        """Bytes of learned state: ``head``, ``buffer``, ``strategy``, ``stats`` (class
        statistics), ``openset`` (calibration scores) and ``total``."""
        sizes = {"head": 0 if self.head is None else self.head.nbytes, "buffer": self.buffer.nbytes,
                 "strategy": self.strategy.nbytes, "stats": self.stats.nbytes, "openset": self.openset.nbytes}
        sizes["total"] = sum(sizes.values())
        return sizes

    def close(self) -> None:
        """Close the backbone, if any."""
        if self.backbone is not None:
            self.backbone.close()

    def __repr__(self) -> str:
        return (f"Agent(backbone={self.backbone!r}, head={self.config.head!r}, "
                f"strategy={self.config.strategy!r}, step={self.step_})")
