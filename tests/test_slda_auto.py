"""SLDA that tunes itself: shrinkage by OAS from the running scatter, precision computed when learning."""

from __future__ import annotations

import numpy as np
import pytest

from edge.agent import Agent, AgentConfig
from edge.errors import ConfigError
from edge.stats import ClassStatistics
from edge.strategies import make_strategy
from edge.strategies.lda import SLDAStrategy, oas_shrinkage


def blobs(seed: int, n: int, d: int, k: int = 5, spectrum: float = 0.0):
    """Gaussian classes with a shared covariance whose eigenvalues fall like ``i**-spectrum``."""
    rng = np.random.default_rng(seed)
    scale = (1.0 + np.arange(d)) ** (-spectrum / 2)
    centers = rng.normal(0, 1, size=(k, d)) * scale
    y = rng.integers(0, k, n)
    return (centers[y] + rng.normal(size=(n, d)) * scale).astype(np.float32), y.astype(np.int64)


def oas_reference(x: np.ndarray) -> float:
    """OAS (Chen et al. 2010, eq. 23) from centred rows, written from the paper, not the strategy."""
    n, p = x.shape
    s = x.T @ x / n
    tr, tr2 = np.trace(s), np.trace(s @ s)
    return min(1.0, ((1 - 2 / p) * tr2 + tr ** 2) / ((n + 1 - 2 / p) * (tr2 - tr ** 2 / p)))


def test_oas_is_the_published_estimate_and_falls_as_rows_arrive():
    x = np.random.default_rng(0).normal(size=(50, 20)) * np.linspace(0.5, 2, 20)
    x -= x.mean(0)
    rho, mu = oas_shrinkage(x.T @ x / 50, 50)
    assert rho == pytest.approx(oas_reference(x), rel=1e-12) and mu == pytest.approx(np.trace(x.T @ x / 50) / 20)
    rhos = []
    for n in (40, 400, 4000):
        z, y = blobs(1, n, 32, spectrum=1.0)
        agent = Agent(None, AgentConfig(strategy="slda", max_classes=5), embedding_size=32)
        agent.learn_embeddings(z, y)
        rhos.append(agent.strategy.shrinkage_used_)
    assert rhos[0] > rhos[1] > rhos[2]


def test_auto_shrinkage_is_order_independent_and_precomputed_by_the_learn():
    z, y = blobs(2, 300, 24)
    agents = []
    for order in (np.arange(300), np.arange(300)[::-1]):
        agent = Agent(None, AgentConfig(strategy="slda", max_classes=5), embedding_size=24)
        for part in np.array_split(order, 7):
            agent.learn_embeddings(z[part], y[part])
        agents.append(agent)
    assert agents[0].strategy.shrinkage_used_ == pytest.approx(agents[1].strategy.shrinkage_used_, rel=1e-9)
    strategy = agents[0].strategy
    cache = strategy._cache
    assert cache is not None and cache[0] == agents[0].stats.version   # computed by learn_embeddings
    assert cache[1].dtype == np.float32 and cache[1].shape == (24, 24)  # the d x d precision, float32
    agents[0].predict_embeddings(z)
    assert strategy._cache is cache                                      # prediction computed nothing
    np.testing.assert_array_equal(agents[0].predict_embeddings(z), agents[1].predict_embeddings(z))


def test_old_checkpoints_load():
    z, y = blobs(5, 60, 8)
    old = Agent(None, AgentConfig(strategy="slda", strategy_params={"shrinkage": 1e-4}, max_classes=5),
                embedding_size=8)
    old.learn_embeddings(z, y)
    state = old.state_dict()
    # written before the statistics moved to the agent: mean, count and scatter in the strategy
    legacy = {k: v for k, v in state.items() if not k.startswith("stats.")}
    legacy["strategy.mean"] = old.stats.means()
    legacy["strategy.count"] = old.stats.count_.copy()
    small = {**state, "strategy.scatter": state["strategy.scatter"].astype(np.float32)}
    for saved in (state, legacy, small):
        new = Agent(None, AgentConfig(strategy="slda", strategy_params={"shrinkage": 1e-4}, max_classes=5),
                    embedding_size=8)
        new.load_state_dict(saved)
        np.testing.assert_array_equal(new.predict_embeddings(z), old.predict_embeddings(z))


@pytest.mark.parametrize("value", ["oas", 0.0, 1.5, True])
def test_bad_shrinkage_is_a_config_error(value):
    s = make_strategy("slda", shrinkage=value)
    s.attach_statistics(ClassStatistics(2, 3))
    with pytest.raises(ConfigError, match="shrinkage"):
        s.learn(None, None, np.zeros((2, 3), np.float32), np.array([0, 1]), None, None)


@pytest.mark.slow
def test_the_automatic_shrinkage_differs_between_the_tiny_and_the_imagenet_backbone_on_real_photos():
    """Real photographs (the foolbox wheel's CIFAR-10 samples), taught as crops of one photo per
    class through each backbone: OAS picks a much larger shrinkage on the 1280-d ImageNet features
    (measured 0.15-0.21) than on the 256-d tiny ones (0.04-0.05)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    import _real_photos as rp

    from edge.preprocess import fit_frame
    from edge.runtimes import open_backbone

    photo_set = rp.photo_sets_or_skip()["cifar10"]
    s = rp.split(photo_set, 0, teach=30, test_crops=1)
    root = Path(__file__).parent.parent / "models"
    chosen = {}
    for model, precision in (("tiny", "fp32"), ("efficientnet_lite0_224", "int8")):
        with open_backbone(root / model, precision=precision) as bb:
            agent = Agent(bb, AgentConfig(strategy="slda", max_classes=len(s.classes)))
            for c, frames in enumerate(s.teach):
                agent.learn_many(np.stack([fit_frame(f, bb.manifest) for f in frames]), np.full(len(frames), c))
            assert isinstance(agent.strategy, SLDAStrategy)
            chosen[model] = agent.strategy.shrinkage_used_
    assert chosen["efficientnet_lite0_224"] > 2 * chosen["tiny"], chosen
