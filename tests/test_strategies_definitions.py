"""Each continual-learning strategy tied to its definition (property tests on embeddings only)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.agent import Agent, AgentConfig
from edge.buffer import ReplayBuffer
from edge.errors import InputError
from edge.heads import MLPHead, SoftmaxHead
from edge.stats import ClassStatistics
from edge.strategies import STRATEGIES, cwr_consolidate, make_strategy
from edge.strategies.base import minibatches, unit_grad

DIM, K = 8, 5
CFG = SimpleNamespace(epochs=2, batch_size=7, replay_ratio=0.5, max_classes=K)


def stream(seed: int, n_batches: int = 6, rows: int = 11, dim: int = DIM, k: int = K):
    """Batches of Gaussian blobs; each batch holds one or two classes (class-incremental-ish)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, size=(k, dim))
    out = []
    for b in range(n_batches):
        classes = rng.choice(k, size=1 + b % 2, replace=False)
        y = rng.choice(classes, size=rows)
        x = centers[y] + rng.normal(size=(rows, dim))
        out.append((x.astype(np.float32), y.astype(np.int64)))
    return out


def run(strategy, batches, head=None, buffer=None, seed=0):
    """Learn ``batches`` as the agent does: a statistics strategy reads class statistics that are
    updated right after each `learn`."""
    head = head if head is not None else SoftmaxHead(DIM, K, lr=0.05, seed=3)
    buffer = buffer if buffer is not None else ReplayBuffer(0, DIM, max_classes=K)
    rng = np.random.default_rng(seed)
    if strategy.reads_statistics and strategy.stats is None:
        strategy.attach_statistics(ClassStatistics(K, DIM))
    for x, y in batches:
        strategy.learn(head, buffer, x, y, rng, CFG)
        if strategy.reads_statistics:
            strategy.stats.update(x, y)
    return head


def agent(strategy: str, capacity: int = 20, head: str = "softmax", **params) -> Agent:
    if strategy == "ridge":
        params.setdefault("dims", 128)   # a small projection: its eigendecomposition per teach is fast
    cfg = AgentConfig(strategy=strategy, strategy_params=params, head=head, hidden=16, max_classes=K,
                      buffer_capacity=capacity, buffer_storage="float32", epochs=2, batch_size=7, seed=5)
    return Agent(None, cfg, embedding_size=DIM)


batches_st = st.builds(stream, st.integers(0, 10_000), st.integers(1, 6), st.integers(1, 9))


# ------------------------------------------------------------------------ SLDA
def batch_lda(x: np.ndarray, y: np.ndarray, eps: float, k: int = K):
    """LDA computed at once: class means, pooled within-class covariance (MLE), shrinkage."""
    x = x.astype(np.float64)
    mu = np.zeros((k, x.shape[1]))
    scatter = np.zeros((x.shape[1], x.shape[1]))
    counts = np.bincount(y, minlength=k)
    for c in np.flatnonzero(counts):
        rows = x[y == c]
        mu[c] = rows.mean(0)
        scatter += (rows - mu[c]).T @ (rows - mu[c])
    sigma = scatter / len(y)
    shrunk = (1 - eps) * sigma + eps * np.eye(x.shape[1])
    w = np.linalg.solve(shrunk, mu.T)
    b = -0.5 * (mu * w.T).sum(1)
    return mu, counts, scatter, w, b


@settings(max_examples=30, deadline=None)
@given(batches_st, st.sampled_from([1e-4, 1e-2, 0.5]))
def test_slda_streaming_statistics_and_predictions_equal_batch_lda(batches, eps):
    s = make_strategy("slda", shrinkage=eps)
    head = run(s, batches)
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    mu, counts, scatter, w, b = batch_lda(x, y, eps)
    np.testing.assert_array_equal(s.count_, counts)
    np.testing.assert_allclose(s.mean_, mu, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(s.scatter_, scatter, rtol=1e-8, atol=1e-8)
    scores = np.where(counts > 0, x @ w + b, -np.inf)
    proba = s.predict_proba(head, x)
    np.testing.assert_array_equal(proba.argmax(1), scores.argmax(1))
    ref = np.exp(scores - scores.max(1, keepdims=True))
    np.testing.assert_allclose(proba, ref / ref.sum(1, keepdims=True), atol=1e-5)
    assert np.all(proba[:, counts == 0] == 0)


def test_slda_one_row_at_a_time_equals_one_batch():
    (x, y), = stream(1, n_batches=1, rows=40)
    one = make_strategy("slda")
    run(one, [(x[i:i + 1], y[i:i + 1]) for i in range(len(y))])
    at_once = make_strategy("slda")
    run(at_once, [(x, y)])
    np.testing.assert_allclose(one.scatter_, at_once.scatter_, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(one.mean_, at_once.mean_, rtol=1e-12, atol=1e-12)


def test_slda_reports_its_d_by_d_memory_and_caches_the_precision():
    a = agent("slda", capacity=100)
    x, y = stream(2)[0]
    a.learn_embeddings(x, y)
    assert a.buffer.capacity == 0 and a.memory_bytes()["buffer"] == 0
    # scatter (d x d float64) + precision (d x d float32) + P mu^T (K x d) + offsets; means and
    # counts are the agent's class statistics (counts, sums, squared norms)
    assert a.memory_bytes()["strategy"] == DIM * DIM * 8 + DIM * DIM * 4 + K * DIM * 8 + K * 8
    # plus, for the open-set score, the per-class sums of unit rows and their shared d x d outer product
    assert a.memory_bytes()["stats"] == K * 8 + K * DIM * 8 + K * 8 + K * DIM * 8 + DIM * DIM * 8
    cached = a.strategy._cache
    assert cached is not None and cached[0] == a.stats.version  # computed by the learn, not a predict
    a.predict_embeddings(x)
    assert a.strategy._cache is cached  # cached until the next update
    a.learn_embeddings(x, y)
    assert a.strategy._cache is not cached and a.strategy._cache[0] == a.stats.version


# ------------------------------------------------------------------------- NCM
@settings(max_examples=30, deadline=None)
@given(batches_st)
def test_ncm_means_are_the_class_means(batches):
    s = make_strategy("ncm")
    head = run(s, batches)
    x = np.concatenate([b[0] for b in batches]).astype(np.float64)
    y = np.concatenate([b[1] for b in batches])
    for c in range(K):
        if (y == c).any():
            np.testing.assert_allclose(s.means_[c], x[y == c].mean(0), rtol=1e-10, atol=1e-10)
    d2 = ((x[:, None, :] - s.means_[None]) ** 2).sum(-1)
    d2[:, np.bincount(y, minlength=K) == 0] = np.inf
    np.testing.assert_array_equal(s.predict_proba(head, x.astype(np.float32)).argmax(1), d2.argmin(1))


def test_ncm_uses_the_heads_standardisation():
    mean, std = np.full(DIM, 2.0, np.float32), np.full(DIM, 4.0, np.float32)
    a = Agent(None, AgentConfig(strategy="ncm", max_classes=K), embedding_size=DIM,
              embedding_mean=mean, embedding_std=std)
    x, y = stream(3)[0]
    a.learn_embeddings(x, y)
    c = int(y[0])
    np.testing.assert_allclose(a.strategy.means_[c], ((x[y == c] - 2.0) / 4.0).mean(0), rtol=1e-6)


# --------------------------------------------------- replay, EWC, LwF vs naive
def params_of(a: Agent) -> dict[str, np.ndarray]:
    return {k: v for k, v in a.state_dict().items() if k.startswith("head.")}


@settings(max_examples=10, deadline=None)
@given(batches_st)
def test_replay_with_an_empty_buffer_is_naive(batches):
    naive, replay = agent("naive"), agent("replay", capacity=0)
    for x, y in batches:
        naive.learn_embeddings(x, y)
        replay.learn_embeddings(x, y)
    pn, pr = params_of(naive), params_of(replay)
    assert pn.keys() == pr.keys() and all(np.array_equal(pn[k], pr[k]) for k in pn)


@pytest.mark.parametrize("name,params", [("ewc", {"ewc_lambda": 0.0}),
                                         ("lwf", {"alpha": 0.0, "train_units": "seen"})])
@pytest.mark.parametrize("head", ["softmax", "mlp"])
def test_switched_off_regularisers_are_naive(name, params, head):
    batches = stream(4)
    naive, reg = agent("naive", head=head), agent(name, head=head, **params)
    for x, y in batches:
        naive.learn_embeddings(x, y)
        reg.learn_embeddings(x, y)
    pn, pr = params_of(naive), params_of(reg)
    assert all(np.array_equal(pn[k], pr[k]) for k in pn)
    # ... and switched on they are not.
    on = agent(name, head=head)
    for x, y in batches:
        on.learn_embeddings(x, y)
    assert not all(np.array_equal(pn[k], v) for k, v in params_of(on).items())


@pytest.mark.parametrize("head_cls", [SoftmaxHead, MLPHead])
def test_fisher_is_the_mean_squared_per_sample_gradient(head_cls):
    x, y = stream(5, n_batches=1, rows=9)[0]
    head = head_cls(DIM, K, seed=1)
    head.step(x, y)
    fast = head.squared_grad_sum(x, y)
    for name, value in fast.items():
        slow = np.zeros_like(value)
        for i in range(len(y)):
            logits, cache = head._forward(head._input(x[i:i + 1]))
            d = head._masked_softmax(logits)
            d[0, y[i]] -= 1.0
            slow += head._backward(cache, d)[name] ** 2
        np.testing.assert_allclose(value, slow, rtol=1e-4, atol=1e-7)


def test_ewc_penalty_gradient_is_lambda_fisher_times_distance():
    s = make_strategy("ewc", ewc_lambda=3.0, gamma=0.5)
    head = SoftmaxHead(DIM, K, seed=0)
    batches = stream(6, n_batches=2)
    run(s, batches[:1], head=head)
    f1 = copy.deepcopy(s.fisher_)
    np.testing.assert_allclose(f1["W"], head.squared_grad_sum(*batches[0])["W"] / len(batches[0][1]), rtol=1e-5)
    run(s, batches[1:], head=head)
    expected = 0.5 * f1["W"] + head.squared_grad_sum(*batches[1])["W"] / len(batches[1][1])
    np.testing.assert_allclose(s.fisher_["W"], expected, rtol=1e-5, atol=1e-9)
    np.testing.assert_array_equal(s.anchor_["W"], head.params_["W"])


def test_lwf_logit_gradient_matches_finite_differences():
    s = make_strategy("lwf", alpha=0.7, temperature=2.0, train_units="seen", t_squared=True)
    head = SoftmaxHead(DIM, K, seed=0)
    (x0, y0), (x1, y1) = stream(7, n_batches=2)
    run(s, [(x0, y0)], head=head)
    old = np.flatnonzero(head.seen_)
    old_logits = head.decision_function(x1)[:, old]
    captured = {}
    original = head.step

    def spy(x, y, *, logit_grad=None, param_grad=None):
        captured.setdefault("hook", (logit_grad, x))
        return original(x, y, logit_grad=logit_grad, param_grad=param_grad)

    head.step = spy
    s.learn(head, ReplayBuffer(0, DIM, max_classes=K), x1, y1, np.random.default_rng(0), CFG)
    hook, xb = captured["hook"]
    rows = [int(np.flatnonzero((x1 == r).all(1))[0]) for r in xb]
    t, n = 2.0, len(xb)

    def kd(z):
        p_old = np.exp(old_logits[rows] / t)
        p_old /= p_old.sum(1, keepdims=True)
        logq = z[:, old] / t - np.log(np.exp(z[:, old] / t).sum(1, keepdims=True))
        return 0.7 * t * t * (p_old * (np.log(p_old) - logq)).sum() / n

    z = np.random.default_rng(1).normal(size=(n, K))
    grad = hook(z.astype(np.float32))
    num = np.zeros_like(z)
    for idx in np.ndindex(*z.shape):
        e = np.zeros_like(z)
        e[idx] = 1e-5
        num[idx] = (kd(z + e) - kd(z - e)) / 2e-5
    np.testing.assert_allclose(grad, num, atol=1e-4)


# ------------------------------------------------------------------ cumulative
@settings(max_examples=10, deadline=None)
@given(batches_st)
def test_cumulative_equals_training_once_on_everything_seen(batches):
    s = make_strategy("cumulative", epochs=CFG.epochs)
    head = SoftmaxHead(DIM, K, lr=0.05, seed=3)
    rng = np.random.default_rng(0)
    buffer = ReplayBuffer(0, DIM, max_classes=K)
    for x, y in batches:
        before = copy.deepcopy(rng)
        s.learn(head, buffer, x, y, rng, CFG)
    once = SoftmaxHead(DIM, K, lr=0.05, seed=3)
    once.partial_fit(np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]),
                     epochs=CFG.epochs, batch_size=CFG.batch_size, rng=before)
    for key, value in once.state_dict().items():
        np.testing.assert_array_equal(head.state_dict()[key], value, err_msg=key)
    assert s.nbytes >= sum(b[0].nbytes for b in batches)  # holds everything: unbounded


# ---------------------------------------------------------------------- CWR*
def test_cwr_consolidation_matches_a_hand_computed_two_batch_example():
    cw, past = np.zeros((3, 2)), np.zeros(3)
    # Batch 1: classes 0 (4 patterns) and 1 (1 pattern). Mean of all entries (3+1+1-1)/4 = 1.
    tw1 = np.array([[3.0, 1.0], [1.0, -1.0], [9.0, 9.0]])  # class 2 is not in the batch: ignored
    cw, past = cwr_consolidate(cw, past, tw1, np.array([4, 1, 0]))
    np.testing.assert_allclose(cw, [[2.0, 0.0], [0.0, -2.0], [0.0, 0.0]])
    np.testing.assert_allclose(past, [4, 1, 0])
    # Batch 2: classes 0 (16 patterns) and 2 (9). Mean (6+2+0+2)/4 = 2.5; new0 = [3.5, -0.5].
    # wpast_0 = sqrt(4/16) = 0.5: cw0 = (0.5*[2, 0] + [3.5, -0.5]) / 1.5 = [3, -1/3]; cw2 = new2.
    tw2 = np.array([[6.0, 2.0], [5.0, 5.0], [0.0, 2.0]])
    cw, past = cwr_consolidate(cw, past, tw2, np.array([16, 0, 9]))
    np.testing.assert_allclose(cw, [[3.0, -1.0 / 3.0], [0.0, -2.0], [-2.5, -0.5]])
    np.testing.assert_allclose(past, [20, 1, 9])


@pytest.mark.parametrize("units", ["all", "seen"])
@pytest.mark.parametrize("head_cls", [SoftmaxHead, MLPHead])
def test_cwr_star_strategy_resets_trains_and_consolidates(head_cls, units):
    """The strategy = reset (tw from cw for old classes, 0 else) + steps + `cwr_consolidate`."""
    s = make_strategy("cwr_star", train_units=units)
    head = head_cls(DIM, K, lr=0.05, seed=2)
    head._ensure_init()
    batches = stream(8, n_batches=4)
    rng = np.random.default_rng(0)
    buffer = ReplayBuffer(0, DIM, max_classes=K)
    w_name, b_name = ("W", "b") if head_cls is SoftmaxHead else ("W2", "b2")
    for i, (x, y) in enumerate(batches):
        ref, ref_rng = copy.deepcopy(head), copy.deepcopy(rng)
        past = s.past_.copy() if i else np.zeros(K)
        cw = np.concatenate([ref.params_[w_name].T, ref.params_[b_name][:, None]], 1).astype(np.float64)
        cur = np.bincount(y, minlength=K)
        start = np.where(((cur > 0) & (past > 0))[:, None], cw, 0.0)
        ref.params_[w_name][...] = start[:, :-1].T
        ref.params_[b_name][...] = start[:, -1]
        for key in ref.opt_state_:
            if key.split(".", 1)[1] in (w_name, b_name):
                ref.opt_state_[key][...] = 0
        lower = {n: p.copy() for n, p in ref.params_.items() if n not in (w_name, b_name)}
        hook = unit_grad(ref, units)
        for idx in minibatches(len(y), CFG.epochs, CFG.batch_size, ref_rng):
            ref.step(x[idx], y[idx], logit_grad=hook)
        tw = np.concatenate([ref.params_[w_name].T, ref.params_[b_name][:, None]], 1)
        want_cw, want_past = cwr_consolidate(cw, past, tw, cur)
        s.learn(head, buffer, x, y, rng, CFG)
        got = np.concatenate([head.params_[w_name].T, head.params_[b_name][:, None]], 1)
        np.testing.assert_allclose(got, want_cw, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(s.past_, want_past)
        if i and lower:  # CWR* freezes the layers below the output after the first batch
            assert all(np.array_equal(head.params_[n], v) for n, v in lower.items())


def test_ar1_head_counts_replayed_classes_and_trains_the_hidden_layer():
    a = agent("ar1_head", head="mlp", capacity=30)
    batches = stream(9, n_batches=4)
    a.learn_embeddings(*batches[0])
    w1 = a.head.params_["W1"].copy()
    stored = a.buffer.class_counts()
    a.learn_embeddings(*batches[1])
    expected = stored + np.bincount(batches[0][1], minlength=K) + np.bincount(batches[1][1], minlength=K)
    np.testing.assert_array_equal(a.strategy.past_, expected)
    assert not np.array_equal(a.head.params_["W1"], w1)


# ----------------------------------------------------------- shared behaviour
def test_unknown_strategy_or_parameter_is_a_value_error():
    with pytest.raises(ValueError, match="expected one of"):
        make_strategy("si")
    with pytest.raises(ValueError, match="bad parameters"):
        make_strategy("slda", lr=0.1)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_a_corrupt_strategy_state_is_refused_and_leaves_the_agent_intact(name):
    a = agent(name, head="mlp" if name == "ar1_head" else "softmax")
    for x, y in stream(10, n_batches=2):
        a.learn_embeddings(x, y)
    state = a.state_dict()
    keys = [k for k in state if k.startswith("strategy.")]
    before = {k: v.copy() for k, v in state.items()}
    if not keys:
        bad = {**state, "strategy.unexpected": np.zeros(1)}
    else:
        bad = {**state, keys[0]: np.zeros((2, 3, 4), np.int8)}
    with pytest.raises(InputError):
        a.load_state_dict(bad)
    assert all(np.array_equal(v, before[k]) for k, v in a.state_dict().items())


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_memory_is_reported_and_buffer_rows_only_when_used(name):
    a = agent(name, capacity=25, head="mlp" if name == "ar1_head" else "softmax")
    for x, y in stream(11, n_batches=3):
        a.learn_embeddings(x, y)
    mem = a.memory_bytes()
    assert mem["total"] == mem["head"] + mem["buffer"] + mem["strategy"] + mem["stats"] + mem["openset"]
    assert (a.buffer.capacity > 0) == STRATEGIES[name].uses_buffer
    assert mem["strategy"] == a.strategy.nbytes


@pytest.mark.parametrize("name", ["slda", "ncm"])
def test_classifier_owning_strategies_get_no_gradient_head(name):
    a = agent(name)
    x, y = stream(12)[0]
    a.learn_embeddings(x, y)
    assert a.head is None and a.memory_bytes()["head"] == 0
    state = a.state_dict()
    assert not [k for k in state if k.startswith("head.")]
    # A checkpoint written while these strategies still carried an (untrained) head loads ...
    old_head = {f"head.{k}": v for k, v in SoftmaxHead(DIM, K).state_dict().items()}
    clone = agent(name)
    clone.load_state_dict({**state, **old_head})
    np.testing.assert_array_equal(clone.predict_proba_embeddings(x), a.predict_proba_embeddings(x))
    # ... but a trained head's state is not silently dropped.
    trained = SoftmaxHead(DIM, K)
    trained.step(x, y)
    with pytest.raises(InputError, match="expected no head"):
        clone.load_state_dict({**state, **{f"head.{k}": v for k, v in trained.state_dict().items()}})
