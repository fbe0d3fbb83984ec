"""Contract checks (river's ``yield_checks`` idea) over every head x buffer storage x runtime,
over every continual-learning strategy x runtime, and over every strategy that runs on the
``.tflite`` head backend (``supports_tflite_head``) x head kind on that backend.

Each case builds an agent on a real backbone of ``models/tiny`` and runs the same generated
list of checks: inputs are not mutated, probabilities sum to 1 over seen classes and are 0 for
unseen ones, state round-trips bit-exactly, learning is deterministic for a seed, and a wrong
embedding size is refused without changing the state.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from _edge_common import RUNTIME_CASES, backbone, frames_for
from edge.agent import Agent, AgentConfig
from edge.errors import InputError
from edge.strategies import STRATEGIES, tflite_head_strategies

HEADS = ("softmax", "mlp")
STORAGES = ("float32", "float16", "int8")
#: Head files shipped in models/tiny (manifest ``heads``): kind -> what the agent must ask for.
TFLITE_HEADS = {"softmax": {"optimizer": "sgd", "hidden": 128}, "mlp": {"optimizer": "adam", "hidden": 128}}


def make_agent(case: tuple[str, ...], seed: int = 0) -> Agent:
    head, storage, runtime, strategy, backend = (*case, "replay", "numpy")[:5]
    if backend == "tflite":
        cfg = AgentConfig(head=head, buffer_storage=storage, buffer_capacity=16, max_classes=50, epochs=1,
                          batch_size=8, seed=seed, strategy=strategy, head_backend="tflite",
                          **TFLITE_HEADS[head])
    else:
        cfg = AgentConfig(head=head, hidden=32, buffer_storage=storage, buffer_capacity=16,
                          max_classes=6, epochs=1, batch_size=8, seed=seed, strategy=strategy,
                          strategy_params={"dims": 128} if strategy == "ridge" else {})   # a fast projection
    return Agent(backbone(runtime), cfg)


def data(agent: Agent, labels: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    y = np.array(labels, dtype=np.int64)
    return frames_for(y, agent.backbone.manifest.input_shape, seed=seed), y


def check_learn_does_not_mutate_inputs(case):
    agent = make_agent(case)
    frames, labels = data(agent, [0, 1, 0, 1, 2, 2])
    f0, y0 = frames.copy(), labels.copy()
    agent.learn_many(frames, labels)
    emb = agent.embed(frames)
    e0 = emb.copy()
    agent.learn_embeddings(emb, labels)
    assert np.array_equal(frames, f0) and np.array_equal(labels, y0) and np.array_equal(emb, e0)


def check_proba_sums_to_one_over_seen(case):
    agent = make_agent(case)
    frames, labels = data(agent, [0, 3, 0, 3, 0, 3])
    agent.learn_many(frames, labels)
    proba = agent.predict_proba_many(frames)
    assert proba.shape == (6, agent.config.max_classes) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    unseen = [c for c in range(agent.config.max_classes) if c not in (0, 3)]
    assert np.all(proba[:, unseen] == 0.0)
    assert set(agent.predict_many(frames).tolist()) <= {0, 3}
    # A new class arriving in a later batch becomes predictable.
    more, y = data(agent, [5, 5, 5], seed=1)
    agent.learn_many(more, y)
    assert agent.classes_seen().tolist() == [0, 3, 5]
    assert np.all(agent.predict_proba_many(frames)[:, [1, 2, 4]] == 0.0)


def check_state_round_trip(case):
    agent = make_agent(case)
    frames, labels = data(agent, [0, 1, 2, 1, 0, 2, 1, 1])
    agent.learn_many(frames, labels)
    agent.learn_many(frames[:4], labels[:4])
    state = agent.state_dict()
    clone = make_agent(case, seed=99)  # a different seed: everything must come from the state
    clone.load_state_dict(state)
    assert np.array_equal(agent.predict_proba_many(frames), clone.predict_proba_many(frames))
    for key, value in clone.state_dict().items():
        assert np.array_equal(value, state[key]), key
    # Continuing on both gives identical results: the rng and optimizer state round-tripped.
    agent.learn_many(frames, labels)
    clone.learn_many(frames, labels)
    assert np.array_equal(agent.predict_proba_many(frames), clone.predict_proba_many(frames))


def check_deterministic_for_seed(case):
    frames = None
    outs = []
    for _ in range(2):
        agent = make_agent(case, seed=7)
        if frames is None:
            frames, labels = data(agent, [0, 1, 2, 0, 1, 2, 4, 4])
        for _ in range(3):
            agent.learn_many(frames, labels)
        outs.append(agent.predict_proba_many(frames))
    assert np.array_equal(outs[0], outs[1])


def check_wrong_embedding_size_raises(case):
    agent = make_agent(case)
    frames, labels = data(agent, [0, 1])
    agent.learn_many(frames, labels)
    before = agent.state_dict()
    d = agent.embedding_size
    with pytest.raises(InputError, match=f"expected shape \\(N, {d}\\), got \\(2, {d + 1}\\)"):
        agent.learn_embeddings(np.zeros((2, d + 1), np.float32), labels)
    with pytest.raises(InputError, match=str(d)):
        agent.predict_embeddings(np.zeros((3, d - 1), np.float32))
    after = agent.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)


CHECKS = [check_learn_does_not_mutate_inputs, check_proba_sums_to_one_over_seen,
          check_state_round_trip, check_deterministic_for_seed, check_wrong_embedding_size_raises]
CASES = list(itertools.product(HEADS, STORAGES, RUNTIME_CASES))
# Every strategy over every runtime (replay is covered above); ar1_head is meant for the MLP head.
CASES += [("mlp" if name == "ar1_head" else "softmax", "int8", runtime, name)
          for name in sorted(STRATEGIES) if name != "replay" for runtime in RUNTIME_CASES]
# The head backend as a dimension: every strategy that declares it runs on the .tflite head, on
# both shipped head files (one runtime: the backbone is not what these cases test).
CASES += [(head, "int8", "litert-fp32", name, "tflite")
          for name in tflite_head_strategies() for head in HEADS]


@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__[6:] for c in CHECKS])
def test_contract(check, case):
    check(case)
