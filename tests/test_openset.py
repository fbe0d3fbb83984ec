"""Open-set rejection (issue 12, "Knowing what it does not know"): a novelty score per prediction,
a threshold calibrated on the agent's own data, `UNKNOWN` from `Agent.answer_many` with novelty
rejection on, and ``unknown`` from ``edge-agent predict --reject-novel``. Novelty rejection is off
by default (`edge.openset.OpenSetPolicy`); tests/test_answer.py checks the default. Issue 23: the
score is MDS++ over the direction statistics, calibrated leave-one-burst-out
(tests/test_openset_calibration.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _edge_common import backbone, need_model
from edge.agent import Agent, AgentConfig
from edge.errors import InputError
from edge.openset import UNKNOWN, OpenSet, OpenSetPolicy, accuracy_at_false_accept, auroc
from edge.stats import ClassStatistics
from edge.strategies import STRATEGIES


def object_views(seed: int, n: int):
    """``n`` generated views (uint8 frames) of one object, and of a different object."""
    from firmware_sim.data.generator import make_pretraining_set

    x, y = make_pretraining_set(n_objects=2, frames=n, sessions=1, seed=seed)
    return x[y == 0], x[y == 1]


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_after_one_class_taught_in_three_learn_calls_a_black_frame_is_unknown(strategy):
    bb = backbone("litert-fp32")
    size = bb.manifest.input_shape[0]
    views, _ = object_views(3, 30)
    views = np.stack([np.asarray(v) for v in views])
    assert views.shape[1] == size, views.shape
    head = "mlp" if strategy == "ar1_head" else "softmax"
    agent = Agent(bb, AgentConfig(strategy=strategy, head=head, buffer_capacity=50))
    black = np.zeros((1, *views.shape[1:]), np.uint8)
    novel = OpenSetPolicy(reject_novel=True)
    agent.learn_many(views[:10], np.zeros(10, np.int64))
    # one learn call: no burst held out, nothing calibrated, nothing rejected
    assert agent.openset.calibrated_on == "nothing" and agent.novelty_threshold == float("inf")
    assert agent.answer_many(black, novel).index.tolist() == [0]
    agent.learn_many(views[10:20], np.zeros(10, np.int64))
    agent.learn_many(views[20:], np.zeros(10, np.int64))
    assert agent.openset.calibrated_on == "held-out bursts"
    assert agent.answer_many(black, novel).index.tolist() == [UNKNOWN]
    assert agent.predict_many(black, unknown=True).tolist() == [UNKNOWN]
    assert agent.predict_many(black).tolist() == [0]                         # closed set: the one class
    assert agent.answer_many(black).index.tolist() == [0]                    # the default: novelty off
    # the taught views themselves are known
    assert (agent.answer_many(views, novel).index == 0).mean() >= 0.8


def bursts_of(rng: np.random.Generator, centres: np.ndarray, n_bursts: int, rows: int = 40):
    """Teach bursts: each a class centre + a burst offset (its conditions) + row noise, positive."""
    for _ in range(n_bursts):
        for c in range(len(centres)):
            offset = rng.normal(size=centres.shape[1]) * 0.6
            yield np.abs(centres[c] + offset + rng.normal(size=(rows, centres.shape[1])) * 0.4), np.full(rows, c)


def test_novelty_threshold_holds_its_false_reject_rate_on_unseen_bursts():
    rng = np.random.default_rng(0)
    stats = ClassStatistics(max_classes=5, embedding_size=16, directions=True)
    o = OpenSet(stats)
    centres = np.abs(rng.normal(size=(5, 16))) * 3
    for x, y in bursts_of(rng, centres, 6):
        stats.update(x, y, units=x)
        o.calibrate(x, y)
    assert o.calibrated_on == "held-out bursts"
    new = np.concatenate([x for x, _ in bursts_of(rng, centres, 8)])          # new conditions
    rejected = o.is_unknown(new).mean()
    assert 0.01 <= rejected <= 0.12, rejected
    assert (o.novelty(new) > o.threshold_at(0.2)).mean() > rejected          # one knob: the rate
    far = np.abs(rng.normal(size=(100, 16))) * 3
    assert o.is_unknown(far).mean() > 0.9
    assert OpenSet(ClassStatistics(3, 4, directions=True)).threshold == float("inf")   # nothing learned


def test_openset_state_round_trips_through_a_checkpoint_and_old_files_still_load(tmp_path):
    rng = np.random.default_rng(1)
    a = Agent(None, AgentConfig(strategy="ncm", max_classes=4), embedding_size=8)
    centres = np.abs(rng.normal(size=(2, 8))) * 3
    for x, y in bursts_of(rng, centres, 3, rows=12):
        a.learn_embeddings(x, y)
    state = a.state_dict()
    assert {"stats.count", "stats.unit_outer", "openset.rows"} <= set(state) and "openset.count" not in state
    b = Agent(None, a.config, embedding_size=8)
    b.load_state_dict(state)
    probe = np.abs(rng.normal(size=(10, 8))) * 3
    assert a.novelty_threshold < float("inf")
    np.testing.assert_array_equal(a.predict_embeddings(probe, unknown=True), b.predict_embeddings(probe, unknown=True))
    old = {k: v for k, v in state.items() if not k.startswith("openset.")}
    c = Agent(None, a.config, embedding_size=8)
    c.load_state_dict(old)                         # no calibration rows: it relearns them
    assert c.openset.threshold == float("inf")
    np.testing.assert_array_equal(a.predict_embeddings(probe), c.predict_embeddings(probe))
    # a checkpoint of the score before MDS++: its calibration is dropped, its statistics lack directions
    legacy = {k: v for k, v in old.items() if k not in ("stats.unit_sum", "stats.unit_outer")}
    legacy.update({"openset.scores": np.zeros(1024, np.float32), "openset.n_scores": np.array(5, np.int64)})
    d = Agent(None, a.config, embedding_size=8)
    d.load_state_dict(legacy)
    assert np.isnan(d.novelty_embeddings(probe)).all()                         # open set off, never unknown
    assert (d.predict_embeddings(probe, unknown=True) == a.predict_embeddings(probe)).all()
    d.learn_embeddings(probe, np.zeros(10, np.int64))                           # still learns
    bad = dict(state, **{"openset.rows": np.zeros(3, np.float32)})
    with pytest.raises(InputError, match="openset state 'rows': expected float32"):
        Agent(None, a.config, embedding_size=8).load_state_dict(bad)
    # checkpoints written before the shared class statistics: tests/test_answer.py


def test_novelty_is_computed_only_when_used_and_then_derived_on_the_learning_thread():
    """Issue 23: with rejection off an answer computes no novelty and a learn derives no whitening
    (a d x d Cholesky + inverse at every learn, 13 MB at d = 1280); the first use (an answer that
    asks, a threshold) switches it on, the state carries that, and an old state loads as unused."""
    rng = np.random.default_rng(4)
    d = 16
    a = Agent(None, AgentConfig(strategy="slda", max_classes=4), embedding_size=d)
    centres = np.abs(rng.normal(size=(2, d))) * 3
    bursts = list(bursts_of(rng, centres, 3, rows=12))
    for x, y in bursts[:4]:
        a.learn_embeddings(x, y)
    reservoir = a.memory_bytes()["openset"]
    probe = np.abs(rng.normal(size=(5, d))) * 3
    plain = a.answer_embeddings(probe)
    assert not a.openset.in_use and np.isnan(plain.novelty).all() and np.isnan(plain.threshold)
    assert a.memory_bytes()["openset"] == reservoir                  # nothing derived, nothing held
    asked = a.answer_embeddings(probe, novelty=True)                 # first use: derived now
    assert a.openset.in_use and np.isfinite(asked.novelty).all() and np.isfinite(asked.threshold)
    np.testing.assert_array_equal(asked.index, plain.index)          # the answer itself is the same
    np.testing.assert_array_equal(asked.novelty, a.novelty_embeddings(probe))
    assert a.memory_bytes()["openset"] >= reservoir + d * d * 8      # the whitening, now held
    # a learn while in use derives the new whitening itself (a prediction finds it ready)
    x, y = bursts[4]
    a.learn_embeddings(x, y)
    assert a.openset.in_use and a.memory_bytes()["openset"] >= reservoir + d * d * 8
    # the flag travels with the state (the device loop's learner teaches a copy); old states: unused
    state = a.state_dict()
    assert int(state["openset.used"]) == 1
    b = Agent(None, a.config, embedding_size=d)
    b.load_state_dict(state)
    assert b.openset.in_use
    np.testing.assert_allclose(b.answer_embeddings(probe, novelty=True).novelty,
                               a.answer_embeddings(probe, novelty=True).novelty, rtol=1e-12)
    old = {k: v for k, v in state.items() if k != "openset.used"}
    c = Agent(None, a.config, embedding_size=d)
    c.load_state_dict(old)
    assert not c.openset.in_use and np.isnan(c.answer_embeddings(probe).novelty).all()
    # with rejection on, the rule needs the score: computed without being asked
    strict = c.answer_embeddings(probe, OpenSetPolicy(reject_novel=True))
    assert c.openset.in_use and np.isfinite(strict.novelty).all()
    np.testing.assert_array_equal(strict.novelty, c.novelty_embeddings(probe))


def test_auroc_and_accuracy_at_false_accept():
    assert auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 0.0
    assert auroc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5
    rng = np.random.default_rng(0)
    k, u = rng.normal(size=500), rng.normal(size=500) + 1.0
    assert 0.70 < auroc(k, u) < 0.82           # separation of 1 std: Phi(1 / sqrt 2) = 0.76
    acc, t = accuracy_at_false_accept(k, np.ones(500, bool), u, 0.05)
    assert (u <= t).mean() == pytest.approx(0.05, abs=0.01)
    assert acc == pytest.approx((k <= t).mean())


def test_edge_agent_predict_prints_unknown_for_a_black_frame(tmp_path, capsys):
    from PIL import Image

    from edge.cli import main

    views, _ = object_views(4, 30)
    paths = []
    for i, v in enumerate(views):
        paths.append(str(tmp_path / f"cup{i}.png"))
        Image.fromarray(np.asarray(v)).save(paths[-1])
    black = tmp_path / "black.png"
    Image.fromarray(np.zeros_like(np.asarray(views[0]))).save(black)
    state = str(tmp_path / "state")
    for burst in (paths[:10], paths[10:20], paths[20:]):   # three teach bursts: a calibrated threshold
        assert main(["learn", "--model", str(need_model()), "--state", state, "--label", "cup", *burst]) == 0
    capsys.readouterr()
    assert main(["predict", "--model", str(need_model()), "--state", state, "--reject-novel", "--json", str(black), paths[0]]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[0]["label"] == "unknown" and rows[0]["index"] is None and rows[0]["unknown"] is True
    assert rows[1]["label"] == "cup" and rows[1]["index"] == 0 and rows[1]["unknown"] is False
    assert main(["predict", "--model", str(need_model()), "--state", state, "--reject-novel", str(black)]) == 0
    assert capsys.readouterr().out.split("\t")[1] == "unknown"
    # one knob: a target false-reject rate of 0 rejects nothing as novel
    assert main(["predict", "--model", str(need_model()), "--state", state, "--reject-novel", "--unknown-rate", "0",
                 str(black)]) == 0
    assert capsys.readouterr().out.split("\t")[1] == "cup"
    assert main(["predict", "--model", str(need_model()), "--state", state, str(black)]) == 0    # the default: novelty rejection off
    shown = capsys.readouterr().out.split("\t")
    assert shown[1] == "cup" and shown[2].strip() == "0.9999"   # one class: probability 1, never shown as 1.0000


def test_open_set_protocol_holds_classes_out_and_the_histograms_plot(tmp_path):
    from firmware_sim.data.protocols import open_set_classes
    from firmware_sim.measure.report import plot_score_histograms

    held = open_set_classes(50, 10, seed=0)
    assert len(held) == 10 and held == sorted(set(held)) and held == open_set_classes(50, 10, seed=0)
    assert open_set_classes(5, [4, 0]) == [0, 4]
    for bad in (0, 50, [50], [0, 1, 2, 3, 4]):
        with pytest.raises(ValueError, match="held_out: expected"):
            open_set_classes(50 if bad != [0, 1, 2, 3, 4] else 5, bad)
    pytest.importorskip("matplotlib")
    png = plot_score_histograms(tmp_path / "h.png", {"ncm": [1.0, 1.5, 0.8]}, {"ncm": [4.0, 9.0]}, {"ncm": 2.0})
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
