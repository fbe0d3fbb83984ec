"""firmware_sim.measure.metrics: hand-computed cases, properties, and the real RSS sampler (psutil)."""

import doctest
import math
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import firmware_sim.measure.metrics as metrics
from firmware_sim.measure.metrics import (
    AccuracyMatrix,
    LatencyRecorder,
    RssSampler,
    Timer,
    accuracy,
    average_accuracy,
    confusion_matrix,
    final_accuracy,
    forgetting,
    mean_forgetting,
    per_class_accuracy,
    summary_stats,
)

NAN = np.nan


def test_doctests():
    result = doctest.testmod(metrics, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 10


# --------------------------------------------------------------------------- accuracy matrix


def test_forgetting_3x3_by_hand_nan_marks_unseen():
    # Rows = after steps 0, 1, 2; columns = groups (experiences). NaN: not yet trained.
    acc = np.array([[0.9, NAN, NAN],
                    [0.6, 0.8, NAN],
                    [0.7, 0.5, 0.9]])
    # group 0: best before the last row = max(0.9, 0.6) = 0.9; final 0.7 -> 0.2
    # group 1: best before the last row = 0.8 (row 1 only);   final 0.5 -> 0.3
    # group 2: first learned in the final row -> no earlier accuracy -> NaN (excluded)
    f = forgetting(acc)
    np.testing.assert_allclose(f[:2], [0.2, 0.3])
    assert math.isnan(f[2])
    # mean over the groups that have a value: (0.2 + 0.3) / 2
    assert mean_forgetting(acc) == pytest.approx(0.25)


def test_forgetting_seen_mask_excludes_accuracy_before_training():
    # Every group is evaluated at every step (a real test set), but group j is trained at step j.
    acc = np.array([[0.9, 0.1, 0.0],
                    [0.6, 0.8, 0.2],
                    [0.7, 0.5, 0.9]])
    seen = np.array([[True, False, False], [True, True, False], [True, True, True]])
    f = forgetting(acc, seen)
    # group 0: 0.9 - 0.7 = 0.2; group 1: only row 1 counts (0.8) - 0.5 = 0.3; group 2: NaN
    np.testing.assert_allclose(f[:2], [0.2, 0.3])
    assert math.isnan(f[2])
    # Without the mask group 2's untrained accuracies would count: max(0.0, 0.2) - 0.9 = -0.7
    assert forgetting(acc)[2] == pytest.approx(-0.7)


def test_forgetting_edge_cases_and_errors():
    assert np.isnan(forgetting([[0.5, 0.5]])).all()  # one row: nothing earlier
    assert math.isnan(mean_forgetting([[0.5]]))
    with pytest.raises(ValueError, match="expected 2-D"):
        forgetting([0.1, 0.2])
    with pytest.raises(ValueError, match="boolean array of shape"):
        forgetting([[0.1], [0.2]], seen=np.ones((3, 1), bool))


def test_accuracy_matrix_object_matches_functions():
    m = AccuracyMatrix(3)
    rows = [[0.9, 0.1, 0.0], [0.6, 0.8, 0.2], [0.7, 0.5, 0.9]]
    for i, r in enumerate(rows):
        m.update(r, seen_groups=[i])
    res = m.result()
    np.testing.assert_allclose(res["forgetting"][:2], [0.2, 0.3])
    assert res["mean_forgetting"] == pytest.approx(0.25)
    assert res["matrix"].shape == (3, 3)
    m.reset()
    assert m.matrix.shape == (0, 3)
    with pytest.raises(ValueError, match=r"expected shape \(3,\)"):
        m.update([0.1, 0.2])


def test_final_and_average_accuracy():
    curve = [0.2, 0.4, 0.9]
    assert final_accuracy(curve) == 0.9
    # CLVision "average accuracy over time": (0.2 + 0.4 + 0.9) / 3 = 0.5
    assert average_accuracy(curve) == pytest.approx(0.5)
    assert average_accuracy([0.2, NAN, 0.6]) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="at least one evaluation point"):
        final_accuracy([])


def test_accuracy_per_class_and_confusion_by_hand():
    y_true = [0, 0, 0, 1, 1, 3]
    y_pred = [0, 1, 0, 1, 0, 3]
    assert accuracy(y_true, y_pred) == pytest.approx(4 / 6)
    cm = confusion_matrix(y_true, y_pred, 4)
    assert cm.tolist() == [[2, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]
    pca = per_class_accuracy(y_true, y_pred, 4)
    np.testing.assert_allclose(pca[[0, 1, 3]], [2 / 3, 1 / 2, 1.0])
    assert math.isnan(pca[2])  # class 2 absent from y_true
    assert math.isnan(accuracy([], []))


def test_label_errors_name_expected_and_got():
    with pytest.raises(ValueError, match=r"expected 3 predictions.*got 2"):
        accuracy([0, 1, 2], [0, 1])
    with pytest.raises(ValueError, match=r"labels in \[0, 2\], got range \[0, 5\]"):
        confusion_matrix([0, 5], [0, 1], 3)
    with pytest.raises(ValueError, match="integer labels"):
        per_class_accuracy([0.5], [0], 2)


# --------------------------------------------------------------------------- properties

acc_values = st.one_of(st.floats(0.0, 1.0), st.just(float("nan")))


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, max_side=6), elements=acc_values))
def test_forgetting_bounded(acc):
    f = forgetting(acc)
    finite = f[~np.isnan(f)]
    assert np.all(finite >= -1.0) and np.all(finite <= 1.0)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=2, max_side=6),
                  elements=st.floats(0.0, 1.0)))
def test_forgetting_zero_or_negative_when_accuracy_never_decreases(acc):
    rising = np.maximum.accumulate(acc, axis=0)  # each column non-decreasing over time
    assert np.all(forgetting(rising) <= 1e-12)
    constant = np.repeat(acc[:1], acc.shape[0], axis=0)
    np.testing.assert_array_equal(forgetting(constant), 0.0)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6).flatmap(lambda n: st.tuples(
    st.just(n),
    st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=40))))
def test_per_class_accuracy_is_confusion_diagonal_over_row_sums(case):
    n, pairs = case
    y_true = np.array([p[0] for p in pairs], np.int64)
    y_pred = np.array([p[1] for p in pairs], np.int64)
    cm = confusion_matrix(y_true, y_pred, n)
    assert cm.sum() == len(pairs)
    pca = per_class_accuracy(y_true, y_pred, n)
    rows = cm.sum(axis=1)
    for c in range(n):
        if rows[c] == 0:
            assert math.isnan(pca[c])
        else:
            assert pca[c] == pytest.approx(cm[c, c] / rows[c])
    if pairs:
        assert accuracy(y_true, y_pred) == pytest.approx(np.trace(cm) / len(pairs))


# --------------------------------------------------------------------------- latency and time


def test_latency_percentiles_known_list():
    rec = LatencyRecorder()
    for ms in range(1, 101):
        rec.update(ms / 1000.0)
    p = rec.percentiles()
    # numpy linear interpolation on 1..100: position q/100 * 99 -> 50.5, 95.05, 99.01
    assert p["p50_ms"] == pytest.approx(50.5)
    assert p["p95_ms"] == pytest.approx(95.05)
    assert p["p99_ms"] == pytest.approx(99.01)
    res = rec.result()
    assert res["mean_ms"] == pytest.approx(50.5)
    # 100 frames in 5.05 s
    assert res["fps"] == pytest.approx(100 / 5.05)
    assert res["frames"] == 100


def test_latency_per_call_frames_are_amortised():
    rec = LatencyRecorder()
    rec.update(0.100, frames=4)  # 4 frames of 25 ms
    rec.update(0.010, frames=1)  # 1 frame of 10 ms
    assert rec.n_frames == 5
    assert rec.fps == pytest.approx(5 / 0.110)
    np.testing.assert_allclose(rec.per_frame_seconds() * 1000, [25, 25, 25, 25, 10])
    assert rec.percentiles()["p50_ms"] == pytest.approx(25.0)
    with pytest.raises(ValueError, match="frames"):
        rec.update(0.1, frames=0)
    with pytest.raises(ValueError, match="seconds"):
        rec.update(float("nan"))
    rec.reset()
    assert math.isnan(rec.percentiles()["p99_ms"]) and math.isnan(rec.fps)


def test_latency_context_manager_and_timer():
    rec = LatencyRecorder()
    with rec.time(frames=2):
        time.sleep(0.001)
    assert rec.n_frames == 2 and rec.total_seconds > 0
    t = Timer()
    for _ in range(3):
        with t:
            pass
    with pytest.raises(RuntimeError):
        with t:
            raise RuntimeError("failed batch")
    assert len(t.seconds) == 3  # a failed block is not recorded
    res = t.result()
    assert res["n"] == 3 and res["min"] >= 0 and res["total_s"] == pytest.approx(sum(t.seconds))


def test_summary_stats():
    s = summary_stats([2.0, 4.0, None, float("nan")])
    assert s == {"mean": 3.0, "std": pytest.approx(math.sqrt(2.0)), "min": 2.0, "max": 4.0, "n": 2}
    assert summary_stats([])["n"] == 0 and math.isnan(summary_stats([])["mean"])


# --------------------------------------------------------------------------- memory


def test_rss_sampler_manual_samples_plausible():
    s = RssSampler()
    assert math.isnan(s.average_bytes)
    block = np.ones(8 << 20, np.uint8)  # 8 MiB touched
    for _ in range(3):
        rss = s.sample()
        assert 1 << 20 < rss < 1 << 40  # more than 1 MiB, less than 1 TiB
    del block
    res = s.result()
    assert res["rss_samples"] == 3
    assert res["rss_peak_sampled_bytes"] >= res["rss_avg_bytes"] >= res["rss_min_bytes"] > 0
    if sys.platform.startswith("linux"):
        # the kernel's high-water mark covers every sample we took
        assert res["rss_peak_os_bytes"] >= 0.95 * res["rss_peak_sampled_bytes"]


def test_rss_sampler_background_thread_stops():
    with RssSampler(interval_s=0.005) as s:
        assert s.running
        time.sleep(0.05)
    assert not s.running
    assert s.count >= 3  # first, some in the thread, last
    assert s.peak_bytes >= s.average_bytes > 0
    with pytest.raises(ValueError, match="interval_s"):
        RssSampler(interval_s=0)


def test_one_sample_std_everywhere_known_values():
    """Issue 12 item 7: runs, batches and timings all use the sample std (ddof=1)."""
    from firmware_sim.loop.experiment import summarise
    from firmware_sim.measure.metrics import mean_std, sample_std

    values = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]  # population std 2, sample std sqrt(32/7)
    assert sample_std(np.array(values)) == pytest.approx(math.sqrt(32 / 7))
    assert mean_std(values)["std"] == pytest.approx(math.sqrt(32 / 7))
    assert summary_stats(values)["std"] == pytest.approx(math.sqrt(32 / 7))
    assert sample_std(np.array([3.0])) == 0.0 and mean_std([3.0])["std"] == 0.0
    import inspect

    assert "ddof" not in inspect.signature(mean_std).parameters  # one definition, nothing to override
    assert "ddof" not in inspect.signature(summary_stats).parameters

    from firmware_sim.loop.result import MemoryUsage, RunResult

    def result(final: float) -> RunResult:
        memory = MemoryUsage({"rss_peak_sampled_bytes": 1}, 0, 0, 0, 0, 0, 0.0)
        return RunResult("x", "naive", {}, 1, 1, 1, [], final, final, 0.0, np.zeros(1), np.zeros(1),
                         np.zeros((1, 1)), {"mean": 1.0}, 0.0, 0.0, None, memory, [0])

    summary = summarise([result(0.5), result(0.6), result(0.8)])  # the run-to-run std of edge-sim
    assert summary["final_accuracy"]["std"] == pytest.approx(np.std([0.5, 0.6, 0.8], ddof=1))
    assert summary["final_accuracy"]["std"] != pytest.approx(np.std([0.5, 0.6, 0.8]))
