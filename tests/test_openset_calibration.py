"""Issue 23: the open-set score's direction statistics are exact sums (undo and merge stay exact) and
its leave-one-burst-out threshold holds its target false-reject rate on teach bursts it never saw."""

from __future__ import annotations

import numpy as np
import pytest

from edge.errors import InputError
from edge.openset import OpenSet
from edge.stats import ClassStatistics


def rows(rng: np.random.Generator, n: int, d: int = 6) -> np.ndarray:
    return np.abs(rng.normal(size=(n, d))).astype(np.float32) + 0.1


def test_direction_statistics_add_subtract_and_merge_exactly():
    rng = np.random.default_rng(0)
    a, b = rows(rng, 20), rows(rng, 15)
    ya, yb = rng.integers(0, 3, 20), rng.integers(0, 3, 15)
    whole = ClassStatistics(3, 6, directions=True)
    whole.update(a * 2, ya, units=a)
    whole.update(b * 2, yb, units=b)
    only_a = ClassStatistics.of_rows(a * 2, ya, 3, units=a)
    merged = ClassStatistics(3, 6, directions=True)
    merged.add(ClassStatistics.of_rows(b * 2, yb, 3, units=b))       # other order, merged
    merged.add(only_a)
    np.testing.assert_allclose(merged.unit_outer_, whole.unit_outer_, rtol=1e-12)
    np.testing.assert_allclose(merged.unit_sum_, whole.unit_sum_, rtol=1e-12)
    whole.subtract(ClassStatistics.of_rows(b * 2, yb, 3, units=b))    # undo the second teach
    np.testing.assert_allclose(whole.unit_outer_, only_a.unit_outer_, atol=1e-12)
    np.testing.assert_allclose(whole.unit_sum_, only_a.unit_sum_, atol=1e-12)
    u = ClassStatistics.unit_rows(a)
    np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1.0)
    np.testing.assert_allclose(only_a.unit_outer_, u.T @ u, rtol=1e-12)
    with pytest.raises(InputError, match="expected direction statistics"):
        whole.subtract(ClassStatistics.of_rows(a * 2, ya, 3))        # rows without their units
    state = whole.state_dict()
    assert {"unit_sum", "unit_outer"} <= set(state)
    again = ClassStatistics(3, 6, directions=True)
    again.load_state_dict(state)
    np.testing.assert_array_equal(again.unit_outer_, whole.unit_outer_)
    old = ClassStatistics(3, 6, directions=True)                     # a state from before them
    old.load_state_dict({k: state[k] for k in ("count", "sum", "sq")})
    assert not old.directions and np.isnan(OpenSet(old).novelty(a)).all()


def teach_bursts(rng: np.random.Generator, centres: np.ndarray, n_bursts: int, n_rows: int = 30):
    """Bursts (one learn call each) of every class: centre + a per-burst condition shift + noise."""
    for _ in range(n_bursts):
        for c, centre in enumerate(centres):
            shift = rng.normal(size=centre.size) * 0.5
            yield np.abs(centre + shift + rng.normal(size=(n_rows, centre.size)) * 0.3), np.full(n_rows, c)


@pytest.mark.parametrize("target", [0.05, 0.10])
def test_the_threshold_holds_its_target_on_bursts_the_calibration_never_saw(target):
    """The realised false-reject rate on later teach bursts, each scored before it is learned, is
    within 2 points of the target."""
    rng = np.random.default_rng(1)
    centres = np.abs(rng.normal(size=(6, 24))) * 2
    stats = ClassStatistics(6, 24, directions=True)
    o = OpenSet(stats)
    rejected = seen = 0
    for i, (x, y) in enumerate(teach_bursts(rng, centres, 30)):
        if i >= 6 * 6:           # after six bursts per class: the threshold is calibrated
            assert o.calibrated_on == "held-out bursts"
            rejected += int((o.novelty(x) > o.threshold_at(target)).sum())
            seen += len(x)
        stats.update(x, y, units=x)
        o.calibrate(x, y)
    realised = rejected / seen
    assert abs(realised - target) <= 0.02, realised


@pytest.mark.slow
def test_edge_sim_openset_reports_both_scores_and_the_realised_rates(tmp_path, capsys):
    """``edge-sim openset`` on the generated NC stream with a held-out list (about 20 s here)."""
    import json

    from firmware_sim.commands.cli import main

    out = tmp_path / "openset.json"
    assert main(["openset", "--scenario", "nc", "--held-out", "0,1,2,3,4", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["held_out"] == [0, 1, 2, 3, 4] and report["unknown_test"] > 0 and report["known_test"] > 0
    assert 0.5 < report["auroc"] <= 1.0 and 0.0 <= report["previous_auroc"] <= 1.0
    assert report["calibrated_on"] == "nothing"          # NC: every object in one batch, nothing held out
    assert report["false_reject_test"] == 0.0 and report["false_accept_test"] == 1.0
    assert "AUROC" in capsys.readouterr().out
    assert main(["openset", "--unknown-rate", "1.5"]) == 2
