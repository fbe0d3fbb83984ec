"""Replay buffer properties (hypothesis): capacity, class-balanced quotas, int8 error, exact bytes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.buffer import ReplayBuffer
from edge.errors import InputError

MAX_CLASSES = 8

batches = st.lists(
    st.tuples(st.integers(1, 40), st.lists(st.integers(0, MAX_CLASSES - 1), min_size=1, max_size=3)),
    min_size=1, max_size=12)


def _feed(buf: ReplayBuffer, spec, seed: int = 0) -> np.ndarray:
    """Add batches (size, classes) of random embeddings; returns labels seen per class."""
    rng = np.random.default_rng(seed)
    seen = np.zeros(MAX_CLASSES, np.int64)
    for size, classes in spec:
        labels = rng.choice(classes, size=size)
        buf.add(rng.normal(size=(size, buf.embedding_size)).astype(np.float32) * 5, labels)
        np.add.at(seen, labels, 1)
    return seen


@settings(max_examples=60, deadline=None)
@given(capacity=st.integers(0, 30), spec=batches, policy=st.sampled_from(["reservoir", "class_balanced"]),
       storage=st.sampled_from(["float32", "float16", "int8"]))
def test_capacity_counts_and_exact_nbytes(capacity, spec, policy, storage):
    buf = ReplayBuffer(capacity, 6, policy, storage, MAX_CLASSES, seed=1)
    per_row = {"float32": 24, "float16": 12, "int8": 6 + 4}[storage] + 2  # + int16 label
    assert buf.nbytes == capacity * per_row
    seen = _feed(buf, spec)
    assert len(buf) == min(capacity, int(seen.sum()))
    counts = buf.class_counts()
    assert counts.sum() == len(buf) and np.all(counts <= seen)
    assert np.array_equal(np.bincount(buf.contents()[1], minlength=MAX_CLASSES), counts)
    assert buf.nbytes == capacity * per_row  # preallocated: never grows


@settings(max_examples=60, deadline=None)
@given(capacity=st.integers(1, 30), spec=batches)
def test_class_balanced_quotas(capacity, spec):
    buf = ReplayBuffer(capacity, 4, "class_balanced", "float32", MAX_CLASSES, seed=2)
    seen = _feed(buf, spec)
    counts = buf.class_counts()
    largest = counts.max()
    for c in range(MAX_CLASSES):
        # Either the class is stored entirely, or it holds at least its fair share minus one.
        assert counts[c] == seen[c] or counts[c] >= largest - 1, (counts, seen)


def test_class_balanced_keeps_old_classes_under_a_single_class_stream():
    buf = ReplayBuffer(100, 4, "class_balanced", "int8", 10, seed=0)
    for c in range(10):
        buf.add(np.ones((300, 4), np.float32), np.full(300, c))
    assert buf.class_counts().tolist() == [10] * 10
    res = ReplayBuffer(100, 4, "reservoir", "int8", 10, seed=0)
    for c in range(10):
        res.add(np.ones((300, 4), np.float32), np.full(300, c))
    assert len(res) == 100 and res.class_counts().min() > 0  # reservoir: uniform over the stream


@settings(max_examples=80, deadline=None)
@given(rows=st.integers(1, 20), scale=st.floats(1e-3, 1e3), seed=st.integers(0, 2**16))
def test_int8_round_trip_error_bound(rows, scale, seed):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(rows, 16)) * scale).astype(np.float32)
    buf = ReplayBuffer(rows, 16, "reservoir", "int8", 3, seed=0)
    buf.add(x, np.zeros(rows, np.int64))
    back, _ = buf.contents()
    bound = np.abs(x).max(axis=1, keepdims=True) / 254.0 * (1 + 1e-5)
    assert np.all(np.abs(back - x) <= bound)
    f16 = ReplayBuffer(rows, 16, "reservoir", "float16", 3, seed=0)
    f16.add(x, np.zeros(rows, np.int64))
    np.testing.assert_allclose(f16.contents()[0], x, rtol=1e-3, atol=1e-7)  # subnormals


def test_reservoir_is_uniform_over_the_stream():
    kept = np.zeros(1000)
    for seed in range(200):
        buf = ReplayBuffer(50, 1, "reservoir", "float32", 2, seed=seed)
        for start in range(0, 1000, 100):
            buf.add(np.arange(start, start + 100, dtype=np.float32)[:, None], np.zeros(100, np.int64))
        kept[buf.contents()[0][:, 0].astype(int)] += 1
    per_decile = kept.reshape(10, 100).sum(axis=1) / (200 * 50)
    np.testing.assert_allclose(per_decile, 0.1, atol=0.02)


def test_sample_state_round_trip_and_determinism():
    a = ReplayBuffer(20, 5, "class_balanced", "int8", 4, seed=3)
    b = ReplayBuffer(20, 5, "class_balanced", "int8", 4, seed=3)
    spec = [(15, [0, 1]), (15, [2]), (15, [3])]
    _feed(a, spec)
    _feed(b, spec)
    assert np.array_equal(a.contents()[0], b.contents()[0])
    c = ReplayBuffer(20, 5, "class_balanced", "int8", 4, seed=99)
    c.load_state_dict(a.state_dict())
    x1, y1 = a.sample(7, np.random.default_rng(5))
    x2, y2 = c.sample(7, np.random.default_rng(5))
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2) and x1.dtype == np.float32
    assert len(set(map(bytes, x1))) == 7  # distinct rows
    _feed(a, [(10, [1])], seed=4)
    _feed(c, [(10, [1])], seed=4)
    assert np.array_equal(a.contents()[1], c.contents()[1])
    assert a.sample(100)[0].shape == (20, 5)


def test_buffer_rejects_bad_input():
    buf = ReplayBuffer(4, 3, max_classes=2)
    with pytest.raises(InputError, match=r"expected shape \(N, 3\), got \(2, 4\)"):
        buf.add(np.zeros((2, 4), np.float32), np.zeros(2, np.int64))
    with pytest.raises(InputError, match="expected values in \\[0, 1\\]"):
        buf.add(np.zeros((2, 3), np.float32), np.array([0, 2]))
    with pytest.raises(InputError, match="NaN"):
        buf.add(np.full((1, 3), np.nan, np.float32), np.zeros(1, np.int64))
    assert len(buf) == 0
