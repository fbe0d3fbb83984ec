"""The streaming ridge head (`edge.strategies.ridge`): exact, order-independent, mergeable, GCV lambda."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from edge.agent import Agent, AgentConfig
from edge.errors import ConfigError, InputError
from edge.strategies import make_strategy
from edge.strategies.ridge import RidgeStrategy, gcv_ridge

D, K, DIMS = 12, 4, 96
CFG = SimpleNamespace(max_classes=K)


def blobs(seed: int, n: int = 120, spread: float = 1.0):
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(99).normal(0, 2, size=(K, D))
    y = rng.integers(0, K, n)
    return (centers[y] + spread * rng.normal(size=(n, D))).astype(np.float32), y.astype(np.int64)


def learned(batches, **params) -> RidgeStrategy:
    s = RidgeStrategy(dims=DIMS, **params)
    for x, y in batches:
        s.learn(None, None, x, y, np.random.default_rng(0), CFG)
    s.refresh()
    return s


def test_statistics_are_the_exact_sums_and_the_solution_is_ridge():
    x, y = blobs(0)
    s = learned([(x[:50], y[:50]), (x[50:], y[50:])], lam=0.5)
    h = np.maximum(x @ s.projection(D), 0).astype(np.float64)   # the projection is float32: 1e-6
    np.testing.assert_allclose(s.gram_, h.T @ h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s.sums_, h.T @ np.eye(K)[y], rtol=1e-5, atol=1e-6)
    h = s.features(x)
    w = np.linalg.solve(h.T @ h + 0.5 * np.eye(DIMS), h.T @ np.eye(K)[y])
    np.testing.assert_allclose(s._solve()[0], w, rtol=1e-4, atol=1e-6)


def test_order_independent_and_mergeable_by_addition():
    x, y = blobs(1)
    one = learned([(x[i:i + 7], y[i:i + 7]) for i in range(0, len(y), 7)])
    rev = learned([(x[i:i + 7], y[i:i + 7]) for i in range(0, len(y), 7)][::-1])
    # equal up to float32 rounding of the projected rows (the GEMM kernel depends on the batch size)
    np.testing.assert_allclose(one.gram_, rev.gram_, rtol=1e-5, atol=1e-6)
    a, b = learned([(x[:60], y[:60])]), learned([(x[60:], y[60:])])
    a.add_statistics(b.state_dict())            # two devices' knowledge, merged
    a.refresh()
    np.testing.assert_allclose(a.gram_, one.gram_, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a.predict_proba(None, x).argmax(1), one.predict_proba(None, x).argmax(1))
    a.subtract_statistics(b.state_dict())        # undo: back to the first device alone
    only = learned([(x[:60], y[:60])])
    np.testing.assert_allclose(a.gram_, only.gram_, rtol=1e-9, atol=1e-6)
    with pytest.raises(InputError, match="at most the rows learned"):
        only.subtract_statistics(one.state_dict())


def test_gcv_picks_more_penalty_for_noisier_labels():
    """GCV on the sufficient statistics: the penalty grows when the labels carry less signal."""
    lams = []
    for spread in (0.3, 3.0):
        x, y = blobs(2, n=300, spread=spread)
        lams.append(learned([(x, y)]).lam_used_)
    assert lams[1] > lams[0]


def test_gcv_matches_its_definition_on_the_rows():
    rng = np.random.default_rng(3)
    h = rng.normal(size=(80, 10))
    yy = np.eye(3)[rng.integers(0, 3, 80)]
    s, v = np.linalg.eigh(h.T @ h)
    _, scores = gcv_ridge(s, v.T @ (h.T @ yy), 80, exponents=np.array([-1.0, 0.0]))
    for lam, score in zip(s.mean() * 10.0 ** np.array([-1.0, 0.0]), scores):
        hat = h @ np.linalg.solve(h.T @ h + lam * np.eye(10), h.T)
        rss = ((yy - hat @ yy) ** 2).sum()
        assert score == pytest.approx((rss / 80) / (1 - np.trace(hat) / 80) ** 2, rel=1e-8)


def test_agent_learns_saves_and_reloads():
    x, y = blobs(4)
    cfg = AgentConfig(strategy="ridge", strategy_params={"dims": DIMS}, max_classes=K)
    agent = Agent(None, cfg, embedding_size=D)
    agent.learn_embeddings(x[:60], y[:60])
    agent.learn_embeddings(x[60:], y[60:])
    assert agent.evaluate_embeddings(x, y) > 0.9
    clone = Agent(None, cfg, embedding_size=D)
    clone.load_state_dict(agent.state_dict())
    np.testing.assert_array_equal(clone.predict_proba_embeddings(x), agent.predict_proba_embeddings(x))
    assert "strategy.gram" in agent.state_dict() and agent.memory_bytes()["strategy"] >= DIMS * DIMS * 8


@pytest.mark.parametrize("params, match", [({"dims": 0}, "dims"), ({"lam": -1.0}, "lam"), ({"lam": "gcv"}, "lam"),
                                           ({"temperature": 0}, "temperature")])
def test_bad_parameters_are_config_errors(params, match):
    s = make_strategy("ridge", **params)
    with pytest.raises(ConfigError, match=match):
        s.learn(None, None, *blobs(5, n=10), np.random.default_rng(0), CFG)
