"""One way from an embedding to an answer (issue 21, section 2): `Agent.answer_embeddings`, one
"unknown" rule (`edge.openset.OpenSetPolicy`) with one default for ``predict`` and ``run``, one
copy of the class statistics (`edge.stats`), names where users see them, and no module reaching
into the agent's private parts."""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from _edge_common import ROOT, frames_for, need_model
from edge.errors import InputError
from edge.openset import UNKNOWN, OpenSetPolicy, decide
from edge.stats import ClassStatistics
from edge.strategies import STRATEGIES

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from make_answer_golden import NEWER  # noqa: E402
from make_answer_golden import STRATEGIES as GOLDEN_STRATEGIES  # noqa: E402
from make_answer_golden import make_agent, stream  # noqa: E402

GOLDEN = Path(__file__).parent / "fixtures" / "answer_golden.npz"


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as data:
        return {k: data[k] for k in data.files}


def old_state(golden, name: str) -> dict[str, np.ndarray]:
    prefix = f"{name}/state/"
    return {k[len(prefix):]: v for k, v in golden.items() if k.startswith(prefix)}


# ------------------------------------------------------------ bit identity with the old code
def test_the_golden_file_covers_every_strategy():
    assert sorted(GOLDEN_STRATEGIES + NEWER) == sorted(STRATEGIES)


@pytest.mark.parametrize("name", GOLDEN_STRATEGIES)
def test_answers_are_bit_identical_to_the_code_before_shared_statistics(golden, name):
    """The seeded stream of ``make_answer_golden.py`` through today's agent gives the labels,
    probabilities the previous code (02a37fb) wrote, bit for bit. The open-set score and its
    calibration changed on purpose in issue 23 (MDS++, leave-one-burst-out; tests/test_openset.py):
    only the closed-set part of the answer is compared; the novelty must be finite."""
    batches, probe = stream()
    np.testing.assert_array_equal(probe, golden["probe"])
    agent = make_agent(name)
    for x, y in batches:
        agent.learn_embeddings(x, y)
    np.testing.assert_array_equal(agent.predict_embeddings(probe), golden[f"{name}/closed"])
    np.testing.assert_array_equal(agent.predict_proba_embeddings(probe), golden[f"{name}/proba"])
    assert np.isfinite(agent.novelty_embeddings(probe)).all()
    answer = agent.answer_embeddings(probe, OpenSetPolicy(reject_novel=True, min_probability=0.0))
    np.testing.assert_array_equal(answer.best, golden[f"{name}/closed"])
    assert set(answer.index[answer.unknown].tolist()) <= {-1}


@pytest.mark.parametrize("name", GOLDEN_STRATEGIES)
def test_checkpoints_written_by_the_old_code_load_and_answer_the_same(golden, name):
    _, probe = stream()
    state = old_state(golden, name)
    assert not any(k.startswith("stats.") for k in state)           # the old format
    agent = make_agent(name)
    agent.load_state_dict(state)
    np.testing.assert_array_equal(agent.predict_embeddings(probe), golden[f"{name}/closed"])
    # their statistics predate the direction statistics: open-set rejection is off (NaN novelty)
    np.testing.assert_array_equal(agent.predict_embeddings(probe, unknown=True), golden[f"{name}/closed"])
    np.testing.assert_array_equal(agent.predict_proba_embeddings(probe), golden[f"{name}/proba"])
    new = agent.state_dict()
    assert {"stats.count", "stats.sum", "stats.sq"} <= set(new)
    assert not {"openset.count", "openset.sum", "strategy.mean", "strategy.count"} & set(new)
    np.testing.assert_array_equal(new["stats.count"], state["openset.count"])
    again = make_agent(name)
    again.load_state_dict(new)                                        # the new format round-trips
    np.testing.assert_array_equal(again.predict_proba_embeddings(probe), golden[f"{name}/proba"])


@pytest.mark.parametrize("name", ["slda", "ncm"])
def test_checkpoints_from_before_open_set_rejection_load_their_class_sums_from_the_strategy(golden, name):
    _, probe = stream()
    state = {k: v for k, v in old_state(golden, name).items() if not k.startswith("openset.")}
    agent = make_agent(name)
    agent.load_state_dict(state)
    np.testing.assert_array_equal(agent.predict_embeddings(probe), golden[f"{name}/closed"])
    assert agent.novelty_threshold == float("inf")                   # calibration relearns
    np.testing.assert_array_equal(agent.stats.count_, old_state(golden, name)["openset.count"])


def test_a_bad_old_or_new_statistics_state_is_refused_and_changes_nothing(golden):
    agent = make_agent("ncm")
    agent.load_state_dict(old_state(golden, "ncm"))
    before = agent.state_dict()
    bad_old = dict(old_state(golden, "ncm"), **{"openset.count": np.zeros(3, np.int64)})
    bad_old.pop("strategy.sum")
    bad_old.pop("strategy.count")
    bad_new = dict(before, **{"stats.sum": np.full_like(before["stats.sum"], np.nan)})
    both = dict(before, **{"openset.sum": before["stats.sum"]})
    for bad, message in ((bad_old, "class statistics state 'count': expected int64"),
                         (bad_new, "expected finite sums"), (both, "class statistics once")):
        with pytest.raises(InputError, match=message):
            agent.load_state_dict(bad)
        assert all(np.array_equal(v, before[k]) for k, v in agent.state_dict().items())


# ------------------------------------------------------------ one class-statistics object
@pytest.mark.parametrize("name", ["slda", "ncm", "replay"])
def test_every_consumer_reads_the_agents_one_statistics_object(name):
    batches, probe = stream()
    agent = make_agent(name)
    for x, y in batches:
        agent.learn_embeddings(x, y)
    assert agent.openset.stats is agent.stats
    if STRATEGIES[name].reads_statistics:
        assert agent.strategy.stats is agent.stats
    clone = make_agent(name)
    clone.load_state_dict(agent.state_dict())
    assert clone.openset.stats is clone.stats and clone.stats is not agent.stats
    if STRATEGIES[name].reads_statistics:
        assert clone.strategy.stats is clone.stats
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    z = (x - 1.5) / 2.0                                      # the agent's standardisation (make_agent)
    np.testing.assert_array_equal(agent.stats.count_, np.bincount(y, minlength=agent.config.max_classes))
    for c in np.unique(y):
        np.testing.assert_allclose(agent.stats.means()[c], z[y == c].astype(np.float64).mean(0), rtol=1e-9)


def test_class_statistics_add_and_subtract_are_exact_up_to_rounding():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(60, 5)), rng.integers(0, 4, 60)
    whole = ClassStatistics.of_rows(x, y, 4)
    a, b = ClassStatistics(4, 5), ClassStatistics(4, 5)
    a.update(x[:25], y[:25])
    b.update(x[25:], y[25:])
    merged = a.copy()
    merged.add(b)                                            # two devices merged = one device taught all
    np.testing.assert_array_equal(merged.count_, whole.count_)
    np.testing.assert_allclose(merged.sum_, whole.sum_, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(merged.sq_, whole.sq_, rtol=1e-12)
    version = merged.version
    merged.subtract(b)                                       # undo b's rows
    assert merged.version > version
    np.testing.assert_array_equal(merged.count_, a.count_)
    np.testing.assert_allclose(merged.sum_, a.sum_, rtol=1e-12, atol=1e-12)
    only = ClassStatistics.of_rows(x[y == 2], y[y == 2], 4)
    whole.subtract(only)                                     # a class removed entirely: exact zeros
    assert whole.count_[2] == 0 and not whole.sum_[2].any() and whole.sq_[2] == 0.0
    before = whole.state_dict()
    with pytest.raises(InputError, match="expected at most 0 rows of class 2"):
        whole.subtract(only)
    assert all(np.array_equal(v, before[k]) for k, v in whole.state_dict().items())
    with pytest.raises(InputError, match="max_classes, embedding_size"):
        whole.add(ClassStatistics(3, 5))


def test_slda_follows_the_statistics_when_they_change_without_a_teach():
    """SLDA's cached precision is keyed to the statistics' version: a subtraction (undo) is seen."""
    batches, probe = stream()
    agent = make_agent("slda")
    for x, y in batches:
        agent.learn_embeddings(x, y)
    before = agent.predict_proba_embeddings(probe)
    z = (batches[-1][0] - 1.5) / 2.0
    agent.stats.subtract(ClassStatistics.of_rows(z, batches[-1][1], agent.config.max_classes,
                                                units=batches[-1][0]))
    assert not np.array_equal(agent.predict_proba_embeddings(probe), before)


# ------------------------------------------------------------ one rule, one default
def test_the_unknown_rule_and_its_default():
    policy = OpenSetPolicy()
    assert (policy.reject_novel, policy.min_probability) == (False, 0.5)
    proba = np.array([[0.9, 0.1], [0.45, 0.4], [0.0, 0.0], [1.0, 0.0]], np.float32)
    novelty = np.array([0.5, 0.5, 0.5, 99.0])
    answer = decide(proba, novelty, threshold=2.0)
    assert answer.index.tolist() == [0, UNKNOWN, UNKNOWN, 0]           # unsure; no class left; novelty off
    assert answer.best.tolist() == [0, 0, 0, 0] and answer.unknown.tolist() == [False, True, True, False]
    strict = decide(proba, novelty, 2.0, OpenSetPolicy(reject_novel=True, min_probability=0.0))
    assert strict.index.tolist() == [0, 0, UNKNOWN, UNKNOWN]
    assert answer.score.tolist() == pytest.approx([0.9, 0.45, 0.0, 1.0])
    with pytest.raises(ValueError, match="min_probability: expected a value in \\[0, 1\\]"):
        OpenSetPolicy(min_probability=1.5)
    assert policy.unknown_rate == 0.05                                  # --unknown-rate's default
    for bad in (-0.1, 1.0, "x"):
        with pytest.raises(ValueError, match="unknown_rate: expected a rate in \\[0, 1\\)"):
            OpenSetPolicy(unknown_rate=bad)


def test_predict_and_run_have_the_same_default_rule():
    from edge.cli import _policy, build_parser
    from edge.device.loop import LoopOptions

    parser = build_parser()
    predict = _policy(parser.parse_args(["predict", "--state", "s", "x.png"]))
    run = _policy(parser.parse_args(["run", "--state", "s", "--source", "camera:0"]))
    assert predict == run == OpenSetPolicy() == LoopOptions().policy
    flags = ["--reject-novel", "--unknown-threshold", "0.7"]
    assert (_policy(parser.parse_args(["predict", "--state", "s", *flags, "x.png"]))
            == _policy(parser.parse_args(["run", "--state", "s", "--source", "camera:0", *flags]))
            == OpenSetPolicy(reject_novel=True, min_probability=0.7))


def test_answer_validates_its_input_and_excludes_classes():
    batches, probe = stream()
    agent = make_agent("ncm")
    for x, y in batches:
        agent.learn_embeddings(x, y)
    for bad, message in ((probe[:, :3], "expected shape"), (np.full_like(probe, np.nan), "finite")):
        with pytest.raises(InputError, match=message):
            agent.answer_embeddings(bad)
    exclude = np.zeros(agent.config.max_classes, bool)
    full = agent.answer_embeddings(probe, OpenSetPolicy(min_probability=0.0))
    exclude[int(full.best[0])] = True
    masked = agent.answer_embeddings(probe, OpenSetPolicy(min_probability=0.0), exclude=exclude)
    assert masked.best[0] != full.best[0] and not masked.probabilities[:, exclude].any()
    np.testing.assert_allclose(masked.probabilities.sum(1), 1.0, rtol=1e-6)


# ------------------------------------------------------------ the same image, every entry point
@pytest.fixture
def taught_state(tmp_path):
    """A state taught two named classes through ``edge-agent learn``; images to ask about."""
    from PIL import Image

    from edge.cli import main

    need_model()
    labels = np.array([0] * 4 + [1] * 4 + [0, 1, 5])
    frames = frames_for(labels, (48, 40, 3), seed=9)
    taught, asked = tmp_path / "taught", tmp_path / "asked"
    taught.mkdir()
    asked.mkdir()
    paths = []
    for i, frame in enumerate(frames):
        path = (taught if i < 8 else asked) / f"img{i:02d}.png"
        Image.fromarray(frame).save(path)
        paths.append(str(path))
    state = str(tmp_path / "state")
    assert main(["learn", "--model", str(need_model()), "--state", state, "--label", "cup", *paths[:4]]) == 0
    assert main(["learn", "--model", str(need_model()), "--state", state, "--label", "ball", *paths[4:8]]) == 0
    return state, sorted(paths[8:]), asked


def test_the_same_image_gets_the_same_answer_from_predict_and_the_device_loop(taught_state, capsys, tmp_path):
    from edge.cli import main

    state, asked_paths, asked_dir = taught_state
    capsys.readouterr()
    assert main(["predict", "--model", str(need_model()), "--state", state, "--json", *asked_paths]) == 0
    rows = {Path(r["path"]).name: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    events = tmp_path / "events.jsonl"
    assert main(["run", "--model", str(need_model()), "--state", state, "--source", f"folder:{asked_dir}", "--exit-at-end", "--no-http",
                 "--events", str(events)]) == 0
    found = [json.loads(line) for line in events.read_text().splitlines()]
    answers = {e["file"]: e for e in found if e["event"] == "prediction"}
    assert set(answers) == set(rows) and len(rows) == 3
    keys = ("label", "index", "score", "novelty", "unknown")
    for name, row in rows.items():
        assert {k: row[k] for k in keys} == {k: answers[name][k] for k in keys}, name
    assert {rows["img08.png"]["label"], rows["img09.png"]["label"]} <= {"cup", "ball", "unknown"}
    assert rows["img08.png"]["label"] == "cup" and rows["img09.png"]["label"] == "ball"


# ------------------------------------------------------------ names where users see them
def test_predict_json_has_the_keys_of_get_prediction_and_status_prints_names(taught_state, capsys):
    from edge.cli import main

    state, asked_paths, _ = taught_state
    capsys.readouterr()
    assert main(["predict", "--model", str(need_model()), "--state", state, "--json", asked_paths[0]]) == 0
    row = json.loads(capsys.readouterr().out)
    # GET /prediction: label, index, score, novelty, unknown, top (+ frame, frame_time, name there)
    assert set(row) == {"path", "label", "index", "score", "novelty", "unknown", "top"}
    assert row["label"] == "cup" and row["index"] == 0 and isinstance(row["novelty"], float)
    assert row["top"][0] == {"label": "cup", "p": row["top"][0]["p"]}
    assert main(["predict", "--model", str(need_model()), "--state", state, "--unknown-threshold", "1.0", "--json", asked_paths[0]]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["label"] == "unknown" and row["index"] is None and row["unknown"] is True
    assert main(["status", "--model", str(need_model()), "--state", state]) == 0
    text = capsys.readouterr().out
    assert "classes: cup (index 0, 4 samples), ball (index 1, 4 samples)" in text
    assert "{" not in text and "[" not in text
    assert main(["status", "--model", str(need_model()), "--state", state, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["classes"] == [{"index": 0, "name": "cup", "samples": 4}, {"index": 1, "name": "ball", "samples": 4}]


def test_closed_set_is_a_deprecated_alias_with_one_line(taught_state, capsys, caplog):
    from edge.cli import main

    state, asked_paths, _ = taught_state
    capsys.readouterr()
    assert main(["predict", "--model", str(need_model()), "--state", state, "--closed-set", "--unknown-threshold", "1.0", asked_paths[0]]) == 0
    assert capsys.readouterr().out.split("\t")[1] == "cup"   # always a learned class
    notes = [r for r in caplog.records if "deprecated" in r.getMessage()]
    assert len(notes) == 1 and notes[0].levelname == "WARNING" and "--closed-set" in notes[0].getMessage()


# ------------------------------------------------------------ nobody reaches into the agent
AGENTISH = re.compile(r"(^|[._])(agent|clone|deployed|teacher)$", re.IGNORECASE)


def private_agent_uses(source: str) -> list[str]:
    """``<something named like an agent>._private`` in Python source (dunders allowed)."""
    return [f"{node.lineno}: {ast.unparse(node)}" for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
            and AGENTISH.search(ast.unparse(node.value))]


def test_the_scan_sees_private_uses():
    found = private_agent_uses("loop.agent._proba(x)\nself._agent._standardize(x)\nagent.answer_embeddings(x)\n"
                               "self._agent.step_\nagent.__class__")
    assert found == ["1: loop.agent._proba", "2: self._agent._standardize"]


def test_no_module_outside_the_agent_uses_its_private_parts():
    files = [p for folder in ("edge", "firmware_sim") for p in sorted((ROOT / folder).rglob("*.py"))
             if p != ROOT / "edge" / "agent.py"]
    assert len(files) > 20
    found = [f"{p.relative_to(ROOT)}:{hit}" for p in files for hit in private_agent_uses(p.read_text("utf-8"))]
    assert found == []
