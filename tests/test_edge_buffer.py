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


# ------------------------------------------------------------ batch insertion == one-by-one insertion
def _reference_class_balanced(capacity: int, max_classes: int, labels: np.ndarray, rng: np.random.Generator,
                              stored: list[int] | None = None) -> tuple[list[int], np.ndarray]:
    """The one-by-one class-balanced reservoir (Chrysakis & Moens) written plainly: which item
    (index into the stream) each slot holds at the end, and the rows per class."""
    slots: list[int] = []      # item index per slot
    slot_class: list[int] = []
    counts = np.zeros(max_classes, np.int64)
    seen = np.zeros(max_classes, np.int64)
    for i, c in enumerate(labels.tolist()):
        seen[c] += 1
        if len(slots) < capacity:
            slots.append(i)
            slot_class.append(c)
            counts[c] += 1
            continue
        top = counts.max()
        if counts[c] < top:
            big = np.flatnonzero(counts == top)
            victim = big[rng.integers(big.size)]
        else:
            victim = c
            if rng.random() * seen[c] >= counts[c]:
                continue
        members = [k for k, v in enumerate(slot_class) if v == victim]
        k = members[rng.integers(len(members))]
        counts[victim] -= 1
        slots[k], slot_class[k] = i, c
        counts[c] += 1
    return slots, counts


@pytest.mark.parametrize("storage", ["float32", "int8"])
def test_batch_class_balanced_insertion_has_the_one_by_one_distribution(storage):
    """Per item, the chance to be in the buffer at the end matches the sequential algorithm (3,000
    seeded runs each, a two-proportion z-test per item), and the class counts match exactly in
    distribution (mean per class within noise). The batch path is the vectorised one."""
    capacity, max_classes, runs = 12, 6, 3000
    first = np.repeat([0, 1, 2], 6)                                 # fills the buffer, then evicts
    second = np.array([3] * 5 + [0] * 4 + [4] * 3 + [5] * 2 + [1] * 6)  # new classes + old ones
    labels = np.concatenate([first, second])
    n = labels.size
    kept_new = np.zeros(n)
    kept_ref = np.zeros(n)
    counts_new = np.zeros(max_classes)
    counts_ref = np.zeros(max_classes)
    for seed in range(runs):
        buf = ReplayBuffer(capacity, 2, "class_balanced", storage, max_classes, seed=seed)
        ids = np.arange(n, dtype=np.float32)
        emb = np.stack([ids + 1, np.zeros(n, np.float32)], axis=1)  # row i encodes item i
        buf.add(emb[: first.size], first)
        buf.add(emb[first.size:], second)
        rows, got_labels = buf.contents()
        items = np.rint(rows[:, 0]).astype(int) - 1
        assert np.array_equal(labels[items], got_labels)            # each row kept its own label
        assert len(set(items.tolist())) == len(items) == capacity
        kept_new[items] += 1
        counts_new += buf.class_counts()
        slots, counts = _reference_class_balanced(capacity, max_classes, labels,
                                                  np.random.default_rng(10_000 + seed))
        kept_ref[slots] += 1
        counts_ref += counts
    p_new, p_ref = kept_new / runs, kept_ref / runs
    pooled = (p_new + p_ref) / 2
    se = np.sqrt(np.maximum(pooled * (1 - pooled), 1e-12) * 2 / runs)
    z = np.abs(p_new - p_ref) / se
    assert z.max() < 4.5, (z.max(), p_new.round(3), p_ref.round(3))
    np.testing.assert_allclose(counts_new / runs, counts_ref / runs, atol=0.12)
    assert p_new.sum() == pytest.approx(capacity)


@settings(max_examples=60, deadline=None)
@given(spec=batches, capacity=st.integers(1, 30), seed=st.integers(0, 2**16))
def test_one_big_batch_keeps_the_class_balanced_invariants(spec, capacity, seed):
    """Whatever the stream, after batch inserts: labels_ agree with the counts, every class is
    either stored whole or holds at least max_count - 1 rows, and seen counts are exact."""
    buf = ReplayBuffer(capacity, 3, "class_balanced", "float32", MAX_CLASSES, seed=seed)
    seen = _feed(buf, spec, seed)
    counts = buf.class_counts()
    assert np.array_equal(counts, np.bincount(buf.labels_[: len(buf)], minlength=MAX_CLASSES))
    assert np.array_equal(buf.seen_per_class_, seen) and buf.n_seen_ == seen.sum()
    assert len(buf) == min(capacity, seen.sum())
    top = counts.max()
    assert all(counts[c] == seen[c] or counts[c] >= top - 1 for c in range(MAX_CLASSES))
