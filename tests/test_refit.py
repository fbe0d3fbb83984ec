"""The `refit` strategy and the converged fit it shares with `cumulative` (`edge.logistic`)."""

from __future__ import annotations

import numpy as np
import pytest

from _edge_common import one_class_teaches
from edge.agent import Agent, AgentConfig
from edge.errors import ConfigError
from edge.logistic import DEFAULT_L2, fit_logistic

DIM, K = 16, 6


def stream(seed: int = 0, rows: int = 25):
    """One teach per class (a device's pattern) and held-out rows (`_edge_common.one_class_teaches`)."""
    return one_class_teaches(seed, rows, K, DIM)


def agent(strategy: str = "refit", **cfg) -> Agent:
    cfg.setdefault("buffer_storage", "float32")
    return Agent(None, AgentConfig(strategy=strategy, max_classes=K, **cfg), embedding_size=DIM)


def test_refit_equals_the_converged_joint_fit_when_the_buffer_holds_everything():
    """Taught one class at a time, the head ends where ONE fit on all the rows from zero ends (the
    joint bound), because the objective is strictly convex and the buffer kept every row."""
    batches, (xt, yt) = stream()
    a = agent()
    for x, y in batches:
        a.learn_embeddings(x, y)
    x_all = np.concatenate([b[0] for b in batches])
    y_all = np.concatenate([b[1] for b in batches])
    bound = fit_logistic(x_all, y_all, K, l2=DEFAULT_L2, tol=1e-6)
    assert a.strategy.last_fit_.converged
    ours = a.head.decision_function(xt)
    theirs = xt @ bound.weights + bound.bias
    assert np.abs(ours - theirs).max() < 1e-2 * np.abs(theirs).max()
    assert (a.predict_embeddings(xt) == theirs.argmax(1)).mean() == 1.0


def test_refit_beats_replay_and_matches_cumulative_on_a_one_class_per_teach_stream():
    batches, (xt, yt) = stream(1, rows=10)
    acc = {}
    for name in ("refit", "replay", "cumulative", "naive"):
        a = agent(name)
        for x, y in batches:
            a.learn_embeddings(x, y)
        acc[name] = a.evaluate_embeddings(xt, yt)
    assert acc["refit"] > max(acc["naive"], acc["replay"]) + 0.05, acc   # two SGD epochs per teach
    assert abs(acc["refit"] - acc["cumulative"]) < 0.01, acc


def test_undo_of_a_teach_gives_the_head_of_never_having_taught_it():
    """The head is a function of the buffer: removing a teach's rows and refitting lands on the
    head of a device that was never taught them (to the fit's tolerance)."""
    batches, (xt, _) = stream(2)
    taught = agent()
    taught.enable_ledger(thumbnail_size=0)
    for x, y in batches:
        taught.teach_embeddings(x, y)
    wrong = batches[0][0][:5], np.full(5, 3)
    taught.teach_embeddings(*wrong)
    assert taught.undo_last()["removal"] == "refit"
    never = agent()
    for x, y in batches:
        never.learn_embeddings(x, y)
    a, b = taught.head.decision_function(xt), never.head.decision_function(xt)
    assert np.abs(a - b).max() < 2e-2 * np.abs(b).max()
    assert (taught.predict_embeddings(xt) == never.predict_embeddings(xt)).all()


def test_refit_needs_the_linear_head():
    a = Agent(None, AgentConfig(strategy="refit", head="mlp", max_classes=K), embedding_size=DIM)
    with pytest.raises(ConfigError, match="expected the linear softmax head"):
        a.learn_embeddings(np.zeros((2, DIM), np.float32), [0, 1])


def test_the_fit_stops_at_a_proven_distance_from_the_optimum_not_at_a_small_gradient():
    """On separable rows with a small penalty the gradient gets tiny long before the weights stop
    moving; the stopping rule bounds the distance to the optimum instead (strong convexity)."""
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(size=(30, 40)) + 3, rng.normal(size=(30, 40)) - 3])
    y = np.repeat([0, 1], 30)
    loose = fit_logistic(x, y, 2, l2=1e-3, tol=1e-1)
    tight = fit_logistic(x, y, 2, l2=1e-3, tol=1e-6, max_iter=20000)
    assert tight.converged and tight.iterations > loose.iterations
    exact = np.concatenate([tight.weights.ravel()])
    got = np.concatenate([loose.weights.ravel()])
    assert np.linalg.norm(got - exact) <= 1e-1 * np.linalg.norm(got) * 1.0001
