"""Issue 23: docs/openset.md states new-minus-previous AUROC with a 95 % bootstrap interval over each
stream's independent units (`firmware_sim.loop.openset_study.bootstrap_auroc_difference`)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edge.openset import auroc
from firmware_sim.loop.openset_study import (PairedScores, bootstrap_auroc_difference, format_interval,
                                             independent_units, weighted_auroc)


def recordings(rng: np.random.Generator, n_units: int, per_unit: int, centre: float,
               unit_spread: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Scores of ``n_units`` recordings of ``per_unit`` near-duplicate rows each, and their unit ids."""
    offsets = rng.normal(centre, unit_spread, n_units)
    units = np.repeat(np.arange(n_units), per_unit)
    return offsets[units] + rng.normal(0.0, 0.1, units.size), units


def paired(rng: np.random.Generator, known: int, unknown: int, per_unit: int, new_gap: float,
           previous_gap: float) -> PairedScores:
    """Both scores of ``known`` and ``unknown`` recordings; never-taught ones centred ``new_gap`` /
    ``previous_gap`` above the known ones (drawn in the order new known, new unknown, previous known,
    previous unknown)."""
    new_k, ku = recordings(rng, known, per_unit, 0.0)
    new_u, uu = recordings(rng, unknown, per_unit, new_gap)
    old_k, _ = recordings(rng, known, per_unit, 0.0)
    old_u, _ = recordings(rng, unknown, per_unit, previous_gap)
    return PairedScores(new_k, new_u, old_k, old_u, ku, uu)


def test_weighted_auroc_matches_the_plain_auroc_with_ties_and_with_repeated_rows():
    rng = np.random.default_rng(0)
    known, unknown = np.round(rng.normal(size=200), 1), np.round(rng.normal(0.7, 1.0, size=60), 1)  # many ties
    ones = weighted_auroc(known, unknown, np.ones((3, known.size)), np.ones((3, unknown.size)))
    np.testing.assert_allclose(ones, auroc(known, unknown), rtol=1e-12)
    wk, wu = rng.integers(0, 4, (2, known.size)), rng.integers(0, 4, (2, unknown.size))
    got = weighted_auroc(known, unknown, wk.astype(float), wu.astype(float))
    want = [auroc(np.repeat(known, wk[b]), np.repeat(unknown, wu[b])) for b in range(2)]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_interval_excludes_zero_when_the_new_score_clearly_separates_and_the_previous_does_not():
    s = paired(np.random.default_rng(1), 30, 20, 10, 3.0, 0.0)
    result = bootstrap_auroc_difference([s])
    assert result["difference"] == pytest.approx(auroc(s.new_known, s.new_unknown)
                                                 - auroc(s.previous_known, s.previous_unknown))
    assert 0.0 < result["low"] < result["difference"] < result["high"]
    assert result["known_units"] == 30 and result["unknown_units"] == 20 and result["resamples"] == 1000


def test_interval_contains_zero_for_identical_score_distributions_and_is_fixed_by_the_seed():
    rng = np.random.default_rng(2)
    rotations = []
    for _ in range(3):   # a mean over rotations, as on the photo streams
        rotations.append(paired(rng, 8, 20, 16, 0.5, 0.5))
    first = bootstrap_auroc_difference(rotations)
    assert first["low"] < 0.0 < first["high"]
    assert first["difference"] == pytest.approx(np.mean([auroc(r.new_known, r.new_unknown)
                                                         - auroc(r.previous_known, r.previous_unknown)
                                                         for r in rotations]))
    assert bootstrap_auroc_difference(rotations) == first                     # same seed, same interval
    assert bootstrap_auroc_difference(rotations, seed=1)["low"] != first["low"]
    assert format_interval(first).count("[") == 1 and format_interval(first)[0] in "+-"


def test_resampling_recordings_not_frames_widens_the_interval_of_near_duplicate_frames():
    s = paired(np.random.default_rng(3), 12, 6, 30, 1.0, 0.5)
    grouped = bootstrap_auroc_difference([s])
    frames = bootstrap_auroc_difference([dataclasses.replace(s, known_units=np.arange(s.known_units.size),
                                                             unknown_units=np.arange(s.unknown_units.size))])
    assert grouped["difference"] == frames["difference"]
    assert grouped["high"] - grouped["low"] > 2.0 * (frames["high"] - frames["low"])


def test_independent_units_are_session_object_folders_else_frames():
    paths = ("s3/o1/C_03_01_000.png", "s3/o1/C_03_01_001.png", "s7/o1/C_07_01_000.png", "s3/o2/C_03_02_000.png")
    units, kind = independent_units(paths, 4)
    assert kind == "session-object recordings" and units[0] == units[1] and len(set(units.tolist())) == 3
    units, kind = independent_units((), 5)
    assert kind == "frames" and units.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="at least one rotation"):
        bootstrap_auroc_difference([])


def test_the_reading_says_from_the_intervals_where_the_comparison_is_decided():
    from firmware_sim.studies.openset_report import render

    def interval(low: float, high: float) -> dict[str, object]:
        return {"difference": (low + high) / 2, "low": low, "high": high, "resamples": 1000.0,
                "known_units": 6.0, "unknown_units": 27.0, "unit": "photos", "seed": 0}

    def stream(low: float, high: float) -> dict[str, object]:
        return {"rotations": 4.0, "auroc": 0.7, "previous_auroc": 0.6, "auroc_difference": interval(low, high),
                "fpr95": 0.5, "previous_fpr95": 0.6, "far_auroc": 0.9, "calibrated": 0.0,
                "false_reject": float("nan"), "false_accept": float("nan"), "far_rejected": float("nan")}

    page = render([], {"EfficientNet-Lite0 224 int8": {"a": stream(0.1, 0.3), "b": stream(-0.1, 0.05),
                                                       "c": stream(-0.3, -0.1)}}, "cmd", 1.0)
    reading = page.split("## Reading")[1]
    assert "decides the comparison on 2 of 3 streams" in reading
    assert "above 0, on EfficientNet-Lite0 a photos (+0.200 [+0.100, +0.300])" in reading
    assert "below 0, on EfficientNet-Lite0 c photos" in reading
    assert "On the other 1 the interval contains 0" in reading and "EfficientNet-Lite0 b photos (-0.025" in reading
    assert "| a | 4 | 0.700 | 0.600 | +0.200 [+0.100, +0.300] |" in page
