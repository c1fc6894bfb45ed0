"""Calibration statistics against a brute-force numpy computation, and added across windows."""

import numpy as np
import pytest

from slostream.core.calibration import WEEK_S, CalibrationWeeks, calibration_row, calibration_rows, calibration_stats
from tests.calibration_reference import brute_force_calibration


@pytest.mark.parametrize(("seed", "bins"), [(0, 10), (1, 15), (2, 5)])
def test_ece_and_brier_equal_numpy_for_a_miscalibrated_model(seed, bins):
    rng = np.random.default_rng(seed)
    predicted = rng.beta(2, 5, 5000)
    outcomes = (rng.random(5000) < np.clip(predicted * 1.3, 0, 1)).astype(np.int8)  # 30% over the prediction
    predicted[:7] = [-0.1, 1.2, 1.0, 0.0, 2.0, 0.5, -3.0]  # out of range (4), and both ends counted
    ece, brier, out = brute_force_calibration(predicted, outcomes, bins)
    stats = calibration_stats(calibration_row(predicted, outcomes, bins), bins, bound_c=1.0)
    assert stats["n"] == 5000 - out and stats["out_of_range"] == out == 4
    assert stats["ece"] == pytest.approx(ece, rel=1e-12) and stats["brier"] == pytest.approx(brier, rel=1e-12)
    assert stats["ece_bound"] == pytest.approx(max(0.015, (bins / stats["n"]) ** 0.5))
    assert stats["ece_excess"] == pytest.approx(stats["ece"] - stats["ece_bound"])


def test_rows_of_windows_add_up_to_the_row_of_their_union():
    rng = np.random.default_rng(3)
    values, outcomes = rng.random(900), rng.integers(0, 2, 900)
    groups = rng.integers(0, 3, 900)
    rows = calibration_rows(values, outcomes, groups, 3, 10)
    assert np.allclose(rows.sum(axis=0), calibration_row(values, outcomes, 10))
    for g in range(3):
        assert np.allclose(rows[g], calibration_row(values[groups == g], outcomes[groups == g], 10))


def test_a_well_calibrated_model_stays_within_its_bound():
    """The bound is about what chance gives a calibrated model: seeded, 50 windows of 2000."""
    rng = np.random.default_rng(4)
    within = 0
    for _ in range(50):
        predicted = rng.random(2000)
        outcomes = (rng.random(2000) < predicted).astype(np.int8)
        stats = calibration_stats(calibration_row(predicted, outcomes, 10), 10, bound_c=1.0)
        within += stats["ece_excess"] <= 0
    assert within == 50


def test_no_pairs_give_no_statistics():
    stats = calibration_stats(calibration_row(np.array([1.5]), np.array([1]), 10), 10, 1.0)
    assert stats == {"n": 0, "ece": None, "ece_bound": None, "ece_excess": None, "ece_chance": None,
                     "miscalibration_p": None, "brier": None, "out_of_range": 1}


@pytest.mark.parametrize(("n", "draw"), [(600, "uniform"), (600, "rare"), (5000, "uniform")])
def test_ece_chance_is_the_mean_ece_of_a_perfectly_calibrated_model(n, draw):
    """Seeded simulation: 400 windows of ``n`` predictions whose outcomes follow them exactly; the
    mean ECE they show is ``ece_chance`` within 10% (a normal approximation per bin). Rare-event
    predictions (all under 0.1) are where ``ece_bound`` is furthest from chance."""
    rng = np.random.default_rng(n)
    predicted = rng.random(n) if draw == "uniform" else rng.beta(1, 40, n)
    row_of = lambda outcomes: calibration_row(predicted, outcomes, 10)  # noqa: E731
    eces = [calibration_stats(row_of((rng.random(n) < predicted).astype(np.int8)), 10, 1.0)["ece"]
            for _ in range(400)]
    chance = calibration_stats(row_of(np.zeros(n, dtype=np.int8)), 10, 1.0)["ece_chance"]  # outcomes do not enter
    assert np.mean(eces) == pytest.approx(chance, rel=0.10)


def _rejections(n: int, skew: float, windows: int, seed: int) -> float:
    """The share of windows of ``n`` predictions whose outcomes run ``skew`` above them that the
    miscalibration test rejects at 5%."""
    rng = np.random.default_rng(seed)
    rejected = 0
    for _ in range(windows):
        predicted = rng.random(n)
        outcomes = (rng.random(n) < np.clip(predicted + skew, 0, 1)).astype(np.int8)
        rejected += calibration_stats(calibration_row(predicted, outcomes, 10), 10, 1.0)["miscalibration_p"] < 0.05
    return rejected / windows


def test_the_miscalibration_test_rejects_a_calibrated_model_at_most_at_its_level():
    assert _rejections(600, 0.0, windows=1000, seed=7) <= 0.05 + 0.02  # binomial noise of 1,000 windows


def test_the_miscalibration_test_flags_a_model_off_by_eight_points_at_600_that_ece_bound_does_not():
    assert _rejections(600, 0.08, windows=300, seed=8) >= 0.8
    rng = np.random.default_rng(9)
    predicted = rng.random(600)
    stats = calibration_stats(calibration_row(predicted, (rng.random(600) < np.clip(predicted + 0.08, 0, 1)).astype(
        np.int8), 10), 10, bound_c=1.0)
    assert stats["ece_excess"] < 0  # the SLO's threshold does not see it


def _weekly_detections(skew_in_last: float, runs: int, seed: int, n: int = 1000) -> tuple[float, float]:
    """Seeded: ``runs`` series of ten weeks of ``n`` predictions each, calibrated but for the last
    week's outcomes running ``skew_in_last`` above them. The share of calibrated weeks (the fourth
    to the ninth: three of history first) with a weekly detection, and of last weeks with one."""
    rng = np.random.default_rng(seed)
    calibrated, last = [], []
    for _ in range(runs):
        weeks = CalibrationWeeks(bins=10, alpha=0.05)
        for week in range(11):
            p = rng.random(n)
            skew = skew_in_last if week == 9 else 0.0
            row = calibration_row(p, (rng.random(n) < np.clip(p + skew, 0, 1)).astype(np.int8), 10)
            found = bool(weeks.update(4 * 86400 + week * WEEK_S, row))  # completes the week before
            if 4 <= week <= 9:
                calibrated.append(found)
            elif week == 10:
                last.append(found)
    return float(np.mean(calibrated)), float(np.mean(last))


def test_a_calibrated_model_fires_the_weekly_tests_in_at_most_5_percent_of_weeks():
    false_rate, _ = _weekly_detections(0.0, runs=500, seed=11)
    assert false_rate <= 0.05  # 3,000 weeks: binomial noise about 0.4 points


def test_a_weekly_shift_of_5_points_is_found_in_90_percent_of_weeks():
    _, power = _weekly_detections(0.05, runs=400, seed=12)
    assert power >= 0.9


def test_a_drop_in_volume_alone_fires_nothing():
    rng = np.random.default_rng(13)
    weeks, fired = CalibrationWeeks(bins=10, alpha=0.05), 0
    for week in range(40):
        n = 5000 if week < 20 else 300  # volume falls by 94%
        p = rng.random(n)
        row = calibration_row(p, (rng.random(n) < p).astype(np.int8), 10)
        fired += len(weeks.update(4 * 86400 + week * WEEK_S, row))
    assert fired <= 4  # 39 tested weeks, two tests at 5% in all
