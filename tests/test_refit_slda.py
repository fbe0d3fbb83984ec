"""`refit_slda` (the default of `edge-agent`): the converged head while the buffer holds every taught
row, Deep Streaming LDA from the teach that overflows it; removal, state and the switch."""

from __future__ import annotations

import numpy as np
import pytest

from _edge_common import one_class_teaches
from edge.agent import Agent, AgentConfig
from edge.errors import InputError
from edge.logistic import DEFAULT_L2, fit_logistic

DIM, K = 16, 6


def stream(seed: int = 0, rows: int = 25):
    """One teach per class (a device's pattern) and held-out rows (`_edge_common.one_class_teaches`)."""
    return one_class_teaches(seed, rows, K, DIM)


def agent(strategy: str = "refit_slda", **cfg) -> Agent:
    cfg.setdefault("buffer_storage", "float32")   # stored rows equal to the taught ones
    return Agent(None, AgentConfig(strategy=strategy, max_classes=K, **cfg), embedding_size=DIM)


def taught(a: Agent, batches) -> Agent:
    for x, y in batches:
        a.learn_embeddings(x, y)
    return a


def test_it_is_the_default_strategy():
    assert AgentConfig().strategy == "refit_slda"


def test_while_the_buffer_holds_every_row_it_answers_with_the_joint_bound_and_keeps_no_slda_state():
    batches, (xt, _) = stream()
    a = taught(agent(), batches)                       # 150 rows, buffer of 1,000
    assert not a.strategy.uses_slda_ and a.strategy.last_fit_.converged
    assert not any(k.startswith("slda.") for k in a.strategy.state_dict())
    x_all = np.concatenate([b[0] for b in batches])
    y_all = np.concatenate([b[1] for b in batches])
    bound = fit_logistic(x_all, y_all, K, l2=DEFAULT_L2, tol=1e-7)
    theirs = xt @ bound.weights + bound.bias
    ours = np.log(a.predict_proba_embeddings(xt))
    ours -= ours.mean(1, keepdims=True)
    theirs -= theirs.mean(1, keepdims=True)
    assert np.abs(ours - theirs).max() < 1e-2 * np.abs(theirs).max()
    assert (a.predict_embeddings(xt) == theirs.argmax(1)).all()


def test_once_the_buffer_overflows_it_answers_exactly_as_slda_taught_every_row():
    batches, (xt, _) = stream(1)
    a = agent(buffer_capacity=60)
    for i, (x, y) in enumerate(batches):
        a.learn_embeddings(x, y)
        assert a.strategy.uses_slda_ == (25 * (i + 1) > 60), i   # switches on the teach that overflows
    slda = taught(agent("slda"), batches)
    np.testing.assert_allclose(a.strategy.slda.scatter_, slda.strategy.scatter_, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(a.predict_proba_embeddings(xt), slda.predict_proba_embeddings(xt), atol=1e-6)
    assert a.memory_bytes()["strategy"] > 8 * DIM * DIM


def test_undo_after_the_overflow_is_exact():
    batches, (xt, _) = stream(2)
    a = agent(buffer_capacity=60)
    a.enable_ledger(thumbnail_size=0)
    for x, y in batches:
        a.teach_embeddings(x, y)
    a.teach_embeddings(batches[0][0][:5], np.full(5, 3))   # a wrong teach
    assert a.removal_is_exact
    assert a.undo_last()["removal"] == "exact"
    never = taught(agent("slda"), batches)
    np.testing.assert_allclose(a.predict_proba_embeddings(xt), never.predict_proba_embeddings(xt), atol=1e-5)


def test_undo_before_the_overflow_refits_the_head_of_never_having_taught_it():
    batches, (xt, _) = stream(3)
    a = agent()
    a.enable_ledger(thumbnail_size=0)
    for x, y in batches:
        a.teach_embeddings(x, y)
    a.teach_embeddings(batches[0][0][:5], np.full(5, 3))
    assert not a.removal_is_exact
    assert a.undo_last()["removal"] == "refit"
    never = taught(agent(), batches)
    assert not a.strategy.uses_slda_
    np.testing.assert_allclose(a.predict_proba_embeddings(xt), never.predict_proba_embeddings(xt), atol=2e-2)
    assert (a.predict_embeddings(xt) == never.predict_embeddings(xt)).all()


@pytest.mark.parametrize("capacity", [1000, 60])
def test_state_round_trip_gives_the_same_answers(capacity):
    batches, (xt, _) = stream(4)
    a = taught(agent(buffer_capacity=capacity), batches)
    b = a.copy()
    assert b.strategy.uses_slda_ == a.strategy.uses_slda_ == (capacity == 60)
    np.testing.assert_array_equal(a.predict_proba_embeddings(xt), b.predict_proba_embeddings(xt))
    x, y = stream(5)[0][2]
    a.learn_embeddings(x, y)
    b.learn_embeddings(x, y)
    np.testing.assert_allclose(a.predict_proba_embeddings(xt), b.predict_proba_embeddings(xt), atol=1e-6)


def test_bad_states_are_refused_with_expected_and_got():
    batches, _ = stream(6)
    state = taught(agent(buffer_capacity=60), batches).strategy.state_dict()
    fresh = agent().strategy
    with pytest.raises(InputError, match="expected SLDA's scatter"):
        fresh.load_state_dict({"uses_slda": np.array(True)})
    with pytest.raises(InputError, match="expected a bool scalar"):
        fresh.load_state_dict({**state, "uses_slda": np.array([1, 0])})
    with pytest.raises(InputError, match="unexpected keys"):
        fresh.load_state_dict({**state, "extra": np.zeros(2)})
    with pytest.raises(InputError, match="weights"):
        fresh.load_state_dict({"weights": np.zeros((DIM, K)), "bias": np.zeros(K, np.float32)})
