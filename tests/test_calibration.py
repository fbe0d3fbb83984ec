"""Probabilities a threshold can use (issue 23): ``slda`` and ``ncm`` fit a temperature on
leave-one-burst-out scores of the rows the agent keeps (`edge.strategies.lda.fit_temperature`).

The real-data check: the 1,797 handwritten digits of scikit-learn (8x8, 43 writers; read from the
``digits.csv.gz`` inside the scikit-learn 1.6.1 wheel, fetched with ``pip download`` into the cache
like the foolbox photos of tests/_real_photos.py: scikit-learn is never imported or installed),
shown to the tiny backbone as 32x32 frames. The first 1,200 digits are taught in bursts of 10 of
one class (a user teaching one digit at a time); the last 597 are held out (never taught). Run
``python tests/test_calibration.py [MODEL_DIR ...]`` for the table of docs/strategies.md.
"""

from __future__ import annotations

import gzip
import io
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edge.agent import Agent, AgentConfig
from edge.errors import InputError
from edge.strategies.lda import MIN_CALIBRATION_ROWS, TEMPERATURE_KEY, fit_temperature

ROOT = Path(__file__).resolve().parent.parent
WHEEL = "scikit_learn-1.6.1"
TAUGHT = 1200
BURST = 10


# ------------------------------------------------------------------------ the fit itself
def test_the_fitted_temperature_undoes_a_known_sharpening_and_never_sharpens():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4000, 4)) * 2.0
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = (rng.random(4000)[:, None] > p.cumsum(1)).sum(1)         # drawn from softmax(logits): T = 1
    seen = np.ones(4, bool)
    assert fit_temperature(logits * 40.0, y, seen) == pytest.approx(40.0, rel=0.1)
    assert fit_temperature(logits / 5.0, y, seen) == 1.0          # under-confident: never sharpened
    assert fit_temperature(logits[:MIN_CALIBRATION_ROWS - 1] * 40, y[:MIN_CALIBRATION_ROWS - 1], seen) == 1.0
    assert fit_temperature(logits * 40.0, y, np.array([True, False, False, False])) == 1.0   # one class


def bursts(seed: int, d: int = 12, k: int = 3, n_bursts: int = 4, rows: int = 15):
    """Teach bursts: class centre + a burst offset (its conditions) + row noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 2.0
    for _ in range(n_bursts):
        for c in range(k):
            yield (centres[c] + rng.normal(size=d) * 1.5 + rng.normal(size=(rows, d)) * 0.5).astype(np.float32), \
                np.full(rows, c)


@pytest.mark.parametrize("strategy", ["slda", "ncm"])
def test_the_temperature_is_fitted_when_learning_stored_and_old_states_load_with_one(strategy):
    agent = Agent(None, AgentConfig(strategy=strategy, max_classes=4), embedding_size=12)
    teach = list(bursts(1))
    for x, y in teach[:3]:                       # every class taught once: nothing held out
        agent.learn_embeddings(x, y)
    assert agent.strategy.fitted_temperature_ == 1.0
    assert TEMPERATURE_KEY not in {k.split(".", 1)[1] for k in agent.state_dict() if k.startswith("strategy.")}
    for x, y in teach[3:]:
        agent.learn_embeddings(x, y)
    t = agent.strategy.fitted_temperature_
    assert t > 1.0                               # bursts differ by more than rows do: softened
    state = agent.state_dict()
    assert float(state[f"strategy.{TEMPERATURE_KEY}"]) == t
    probe = np.concatenate([x for x, _ in bursts(2)])
    again = Agent(None, agent.config, embedding_size=12)
    again.load_state_dict(state)
    np.testing.assert_array_equal(again.predict_proba_embeddings(probe), agent.predict_proba_embeddings(probe))
    old = Agent(None, agent.config, embedding_size=12)
    old.load_state_dict({k: v for k, v in state.items() if k != f"strategy.{TEMPERATURE_KEY}"})
    assert old.strategy.fitted_temperature_ == 1.0
    sharp, soft = old.predict_proba_embeddings(probe).max(1), agent.predict_proba_embeddings(probe).max(1)
    assert (sharp >= soft - 1e-6).all() and (sharp > soft).any()          # same answers, less sure
    np.testing.assert_array_equal(old.predict_embeddings(probe), agent.predict_embeddings(probe))
    bad = dict(state, **{f"strategy.{TEMPERATURE_KEY}": np.array(0.0)})
    with pytest.raises(InputError, match=TEMPERATURE_KEY):
        Agent(None, agent.config, embedding_size=12).load_state_dict(bad)


def test_the_held_out_scores_take_the_burst_out_of_its_class_mean_exactly():
    """The leave-one-burst-out scores equal those of an agent that never learned the burst (NCM
    exactly; SLDA's shared covariance keeps the burst, so its own-class score is checked against
    that covariance)."""
    teach = list(bursts(3, n_bursts=3))
    full = Agent(None, AgentConfig(strategy="ncm", max_classes=3), embedding_size=12)
    for x, y in teach:
        full.learn_embeddings(x, y)
    last_x, last_y = teach[-1]
    without = Agent(None, full.config, embedding_size=12)
    for x, y in teach[:-1]:
        without.learn_embeddings(x, y)
    burst_sum = last_x.astype(np.float64).sum(0)[None].repeat(len(last_y), 0)
    got = full.strategy.held_out_scores(last_x, last_y, burst_sum, np.full(len(last_y), len(last_y)))
    want = -0.5 * without.strategy.sq_distances(last_x)
    c = int(last_y[0])
    np.testing.assert_allclose(got[:, c], want[:, c], rtol=1e-9)


# ------------------------------------------------------------- NCM's scale chosen from data
def scaled_bursts(seed: int, informative_spread: float, n_bursts: int = 4, rows: int = 12, d: int = 16, k: int = 4):
    """Bursts of ``k`` classes whose means differ on dims 0-3 only (by ~``informative_spread``,
    row noise 3 there) and unit noise on the other dims; then held-out rows of the same kind."""
    rng = np.random.default_rng(seed)
    centres = np.zeros((k, d))
    centres[:, :4] = rng.normal(size=(k, 4)) * informative_spread

    def rows_of(c: int, n: int) -> np.ndarray:
        x = centres[c] + rng.normal(size=(n, d))
        x[:, :4] += rng.normal(size=(n, 4)) * 2.0
        return x.astype(np.float32)

    teach = [(rows_of(c, rows), np.full(rows, c)) for _ in range(n_bursts) for c in range(k)]
    test_y = np.repeat(np.arange(k), 50)
    return teach, np.concatenate([rows_of(c, 50) for c in range(k)]), test_y


def ncm_accuracy(mode: str, data) -> tuple[float, object]:
    teach, tx, ty = data
    agent = Agent(None, AgentConfig(strategy="ncm", strategy_params={"standardize": mode}, max_classes=4),
                  embedding_size=16)
    for x, y in teach:
        agent.learn_embeddings(x, y)
    return agent.evaluate_embeddings(tx, ty), agent


def test_ncm_auto_is_the_default_and_picks_the_scale_that_answers_held_out_bursts_better():
    from edge.strategies import make_strategy

    assert make_strategy("ncm").standardize == "auto"
    # class information on few dims with a large spread: the running std shrinks exactly those
    wide = scaled_bursts(0, informative_spread=3.0)
    fixed, _ = ncm_accuracy("fixed", wide)
    running, _ = ncm_accuracy("running", wide)
    auto, agent = ncm_accuracy("auto", wide)
    assert fixed > running + 0.05 and agent.strategy.standardize_used_ == "fixed" and auto == fixed
    # the same with the informative dims measured in tiny units: only the running std sees them
    small = scaled_bursts(1, informative_spread=12.0)
    small = ([(x * np.r_[np.full(4, 0.01), np.ones(12)].astype(np.float32), y) for x, y in small[0]],
             small[1] * np.r_[np.full(4, 0.01), np.ones(12)].astype(np.float32), small[2])
    fixed, _ = ncm_accuracy("fixed", small)
    running, _ = ncm_accuracy("running", small)
    auto, agent = ncm_accuracy("auto", small)
    assert running > fixed + 0.1 and agent.strategy.standardize_used_ == "running" and auto == running
    # the choice travels with the state; an older state (no choice stored) loads as "fixed"
    state = agent.state_dict()
    again = Agent(None, agent.config, embedding_size=16)
    again.load_state_dict(state)
    assert again.strategy.standardize_used_ == "running"
    assert again.evaluate_embeddings(small[1], small[2]) == auto
    old = Agent(None, agent.config, embedding_size=16)
    old.load_state_dict({k: v for k, v in state.items() if k != "strategy.auto_running"})
    assert old.strategy.standardize_used_ == "fixed"
    # one learn call per class: nothing held out, "fixed" until a class is taught again
    first = Agent(None, agent.config, embedding_size=16)
    for x, y in small[0][:4]:
        first.learn_embeddings(x, y)
    assert first.strategy.standardize_used_ == "fixed"


# --------------------------------------------------------------------------- real digits
def digits_or_skip() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits (8x8, 0..16) and labels, from the cached wheel."""
    from host.downloads import DEFAULT_CACHE, pip_download

    try:
        wheel = pip_download(f"scikit-learn=={WHEEL.split('-')[1]}", DEFAULT_CACHE, f"{WHEEL}-*.whl")
    except FileNotFoundError as exc:
        pytest.skip(f"the scikit-learn wheel (the digits) could not be fetched: {exc}")
    with zipfile.ZipFile(wheel) as zf:
        raw = gzip.decompress(zf.read("sklearn/datasets/data/digits.csv.gz"))
    table = np.loadtxt(io.BytesIO(raw), delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)


def digit_frames(images: np.ndarray, size: int) -> np.ndarray:
    """8x8 digits (0..16) -> uint8 RGB frames ``size`` x ``size``, dark ink on white paper."""
    from PIL import Image

    out = np.empty((len(images), size, size, 3), np.uint8)
    for i, img in enumerate(images):
        ink = Image.fromarray((255 - img * 255 / 16).astype(np.uint8)).resize((size, size), Image.BILINEAR)
        out[i] = np.asarray(ink)[..., None]
    return out


def expected_calibration_error(top: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by their rows."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(top, edges[1:-1]), 0, bins - 1)
    err = 0.0
    for b in range(bins):
        rows = which == b
        if rows.any():
            err += rows.mean() * abs(correct[rows].mean() - top[rows].mean())
    return float(err)


def digits_calibration(model_dir: Path, strategy: str, precision: str = "fp32") -> dict[str, float]:
    """Teach the first `TAUGHT` digits in bursts of `BURST` of one class; on the held-out rest: the
    accuracy, the share of WRONG answers with top probability > 0.999 and shown as 1.0000 (4
    places), and the expected calibration error, with the fitted temperature and with 1."""
    from edge.runtimes import open_backbone

    images, labels = digits_or_skip()
    with open_backbone(model_dir, precision=precision) as bb:
        size = bb.manifest.input_shape[0]
        emb = np.concatenate([bb.embed_batch(part) for part in np.array_split(digit_frames(images, size), 20)])
        agent = Agent(bb, AgentConfig(strategy=strategy, max_classes=10))
        order = np.concatenate([np.flatnonzero(labels[:TAUGHT] == c) for c in range(10)])
        chunks = [part for c in range(10) for part in
                  np.array_split(order[labels[order] == c], max(1, int((labels[order] == c).sum()) // BURST))]
        rng = np.random.default_rng(0)
        for k in rng.permutation(len(chunks)):      # bursts of one class, classes interleaved
            agent.learn_embeddings(emb[chunks[k]], labels[chunks[k]])
        test, truth = emb[TAUGHT:], labels[TAUGHT:]
        out: dict[str, float] = {"temperature": agent.strategy.fitted_temperature_}
        fitted = agent.strategy.fitted_temperature_
        for name, t in (("before", 1.0), ("after", fitted)):
            agent.strategy.fitted_temperature_ = t
            proba = agent.predict_proba_embeddings(test)
            top, correct = proba.max(1), proba.argmax(1) == truth
            wrong = ~correct
            out[f"accuracy_{name}"] = float(correct.mean())
            out[f"wrong_above_0999_{name}"] = float((top[wrong] > 0.999).mean()) if wrong.any() else 0.0
            out[f"wrong_shown_1_{name}"] = float((np.round(top[wrong], 4) >= 1.0).mean()) if wrong.any() else 0.0
            out[f"frames_above_0999_{name}"] = float((top > 0.999).mean())
            out[f"ece_{name}"] = expected_calibration_error(top.astype(np.float64), correct)
        agent.strategy.fitted_temperature_ = fitted
    return out


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["slda", "ncm"])
def test_on_real_digits_wrong_answers_are_no_longer_certain_and_calibration_improves(strategy):
    """Held-out handwritten digits through the tiny backbone: with the fitted temperature no wrong
    answer is shown as 1.0000, fewer wrong answers are above 0.999, the expected calibration
    error falls and the answers are the same (a temperature never changes the top class)."""
    r = digits_calibration(ROOT / "models" / "tiny", strategy)
    assert r["temperature"] > 1.0, r
    assert r["wrong_shown_1_after"] == 0.0, r
    assert r["wrong_above_0999_after"] <= r["wrong_above_0999_before"], r
    assert r["ece_after"] < r["ece_before"], r
    assert r["accuracy_after"] == r["accuracy_before"], r


if __name__ == "__main__":   # the table of docs/strategies.md
    models = sys.argv[1:] or [str(ROOT / "models" / "tiny")]
    for model in models:
        for strategy in ("slda", "ncm"):
            prec = "int8" if "efficientnet" in model else "fp32"
            result = digits_calibration(Path(model), strategy, prec)
            print(Path(model).name, strategy, {k: round(v, 4) for k, v in result.items()}, flush=True)
