"""NumPy heads and strategies: learn separable problems, masking, gradients, replay vs naive."""

from __future__ import annotations

import numpy as np
import pytest

from _edge_common import blobs
from edge.agent import Agent, AgentConfig
from edge.base import Standardizer
from edge.errors import InputError, NotFittedError
from edge.heads import MLPHead, SoftmaxHead, make_head
from edge.strategies import STRATEGIES, Strategy, make_strategy


@pytest.mark.parametrize("kind", ["softmax", "mlp"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_head_learns_a_separable_problem(kind, optimizer):
    x, y = blobs(40, 5, 16, seed=1)
    head = make_head(kind, 16, 10, hidden=32, optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 0.01,
                     weight_decay=1e-4, seed=0)
    rng = np.random.default_rng(0)
    probe = rng.permutation(len(y))[:32]
    first = head.step(x[probe], y[probe])
    head.partial_fit(x, y, epochs=10, batch_size=16, rng=rng)
    assert head.step(x[probe], y[probe]) < first / 5
    assert (head.predict(x) == y).mean() >= 0.95
    assert set(head.predict(x + 100.0).tolist()) <= set(range(5))  # never an unseen class


@pytest.mark.parametrize("cls", [SoftmaxHead, MLPHead])
def test_gradient_matches_finite_differences(cls):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 5)).astype(np.float64)
    y = np.array([0, 1, 2, 0, 1, 2])
    head = cls(5, 4, lr=1.0, momentum=0.0, weight_decay=0.0, seed=0)
    head._ensure_init()
    head.seen_[:3] = True
    for k in head.params_:
        head.params_[k] = head.params_[k].astype(np.float64)
    logits, cache = head._forward(x)
    proba = head._masked_softmax(logits)
    d = proba.copy()
    d[np.arange(6), y] -= 1
    grads = head._backward(cache, d / 6)

    def loss() -> float:
        p = head._masked_softmax(head._forward(x)[0])
        return float(-np.log(p[np.arange(6), y]).mean())

    for name, param in head.params_.items():
        idx = tuple(int(rng.integers(s)) for s in param.shape)
        old = param[idx]
        param[idx] = old + 1e-6
        up = loss()
        param[idx] = old - 1e-6
        down = loss()
        param[idx] = old
        assert abs((up - down) / 2e-6 - grads[name][idx]) < 1e-5, name


def test_unseen_classes_masked_and_not_fitted():
    head = SoftmaxHead(4, 6, seed=0)
    with pytest.raises(NotFittedError, match="expected at least one seen class"):
        head.predict_proba(np.zeros((1, 4), np.float32))
    head.step(np.ones((3, 4), np.float32), np.array([1, 4, 4]))
    proba = head.predict_proba(np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32))
    np.testing.assert_allclose(proba.sum(1), 1, rtol=1e-6)
    assert np.all(proba[:, [0, 2, 3, 5]] == 0) and head.classes_.tolist() == [1, 4]
    with pytest.raises(InputError, match=r"expected values in \[0, 5\], got range \[0, 6\]"):
        head.step(np.ones((2, 4), np.float32), np.array([0, 6]))


def test_nbytes_and_state_dict_are_plain_arrays():
    head = MLPHead(16, 10, hidden=8, optimizer="adam")
    expected = (16 * 8 + 8 + 8 * 10 + 10) * 4 * 3 + 10  # params + adam m, v + seen mask
    assert head.nbytes == expected
    state = head.state_dict()
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in state.values())
    other = MLPHead(16, 10, hidden=8, optimizer="adam", seed=5)
    other.load_state_dict(state)
    x = np.ones((2, 16), np.float32)
    assert np.array_equal(other.decision_function(x), head.decision_function(x))
    with pytest.raises(InputError, match="expected float32\\(17, 8\\), got float32\\(16, 8\\)"):
        MLPHead(17, 10, hidden=8, optimizer="adam").load_state_dict(state)


def test_standardisation_uses_given_statistics():
    x, y = blobs(30, 3, 8, seed=2)
    shifted = x * 50 + 1000  # badly scaled embeddings
    standardize = Standardizer(shifted.mean(0), shifted.std(0))
    np.testing.assert_allclose(standardize(shifted).mean(0), 0, atol=1e-3)
    head = SoftmaxHead(8, 3, lr=0.05, seed=0)
    head.partial_fit(standardize(shifted), y, epochs=5, batch_size=16, rng=np.random.default_rng(0))
    assert (head.predict(standardize(shifted)) == y).mean() == 1.0
    assert np.isfinite(head.state_dict()["param.W"]).all()
    # The agent standardises before the head: same weights as training the head on standardised rows.
    agent = Agent(None, AgentConfig(max_classes=3, strategy="naive", epochs=5, batch_size=16, lr=0.05),
                  embedding_size=8, embedding_mean=shifted.mean(0), embedding_std=shifted.std(0))
    agent.learn_embeddings(shifted, y)
    assert agent.evaluate_embeddings(shifted, y) == 1.0
    with pytest.raises(ValueError, match=r"expected shape \(8,\), got \(3,\)"):
        Agent(None, AgentConfig(max_classes=3), embedding_size=8, embedding_mean=np.zeros(3))


def test_replay_remembers_where_naive_forgets():
    x, y = blobs(60, 6, 32, seed=3, spread=2.0)
    scores = {}
    for name in ("naive", "replay"):
        agent = Agent(None, AgentConfig(max_classes=6, strategy=name, buffer_capacity=120, epochs=3,
                                        lr=0.02, seed=0), embedding_size=32)
        for c in range(6):  # class-incremental: one class per batch
            agent.learn_embeddings(x[y == c], y[y == c])
        scores[name] = agent.evaluate_embeddings(x, y)
    assert scores["replay"] >= 0.95 and scores["replay"] - scores["naive"] >= 0.2, scores


def test_strategy_registry_and_seam():
    assert set(STRATEGIES) >= {"naive", "replay"}
    with pytest.raises(ValueError, match="expected one of"):
        make_strategy("nope")
    with pytest.raises(ValueError, match="bad parameters"):
        make_strategy("naive", foo=1)
    assert make_strategy("replay", replay_ratio=0.25).params() == {"replay_ratio": 0.25}

    class Constant(Strategy):  # a strategy that owns its classifier (like NCM or SLDA would)
        name = "constant"
        owns_classifier = True

        def learn(self, head, buffer, emb, labels, rng, cfg):
            self.last_ = int(labels[-1])

        def predict_proba(self, head, emb):
            out = np.zeros((len(emb), head.max_classes), np.float32)
            out[:, self.last_] = 1.0
            return out

    agent = Agent(None, AgentConfig(strategy="replay", max_classes=4), embedding_size=3)   # builds a head
    agent.strategy = Constant()
    agent.learn_embeddings(np.ones((2, 3), np.float32), [0, 2])
    assert agent.predict_embeddings(np.zeros((3, 3), np.float32)).tolist() == [2, 2, 2]


def test_agent_config_json_round_trip_and_validation():
    cfg = AgentConfig(head="mlp", strategy="replay", strategy_params={"replay_ratio": 0.3}, buffer_storage="float16")
    assert AgentConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown keys"):
        AgentConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="buffer_storage: expected"):
        AgentConfig(buffer_storage="int4")
    agent = Agent(None, cfg, embedding_size=16)
    mem = agent.memory_bytes()
    assert mem["buffer"] == 1000 * (16 * 2 + 2) and mem["total"] == mem["head"] + mem["buffer"] + mem["strategy"] + mem["stats"] + mem["openset"]
