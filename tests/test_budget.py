"""Burn-rate and budget math against the SRE workbook's formulas and hand-computed cases."""

import math

import numpy as np
import pytest
from scipy import stats

from slostream.core.buckets import OK_KNOWN
from slostream.core.budget import (
    Budget,
    BurnTier,
    burn_rate,
    default_tiers,
    detection_seconds,
    evaluate_tiers,
    time_to_exhaustion,
)
from slostream.core.windows import SeriesWindows

T0 = 1_800_000_000 // 86400 * 86400
RATE = 10  # events per second


def test_default_tiers_are_the_workbook_tiers_scaled_like_sloth():
    thirty = default_tiers(30 * 86400)
    assert [(t.severity, t.long_s, t.short_s) for t in thirty] == [
        ("page", 3600, 300), ("page", 21600, 1800), ("ticket", 86400, 7200), ("ticket", 259200, 21600)]
    assert [t.burn_rate for t in thirty] == pytest.approx([14.4, 6.0, 3.0, 1.0])
    # 28 days: 2% of the budget in an hour is 0.02 * 672 h / 1 h = 13.44.
    assert [t.burn_rate for t in default_tiers(28 * 86400)] == pytest.approx([13.44, 5.6, 2.8, 0.9333333])


def test_budget_hand_computed():
    budget = Budget(objective=0.999, total=1_000_000, bad=250)
    assert budget.allowed_bad == pytest.approx(1000)
    assert budget.remaining_events == pytest.approx(750)
    assert budget.consumed_ratio == pytest.approx(0.25)
    assert budget.remaining_ratio == pytest.approx(0.75)
    assert budget.sli == pytest.approx(0.99975)
    assert Budget(0.99, 0, 0).sli is None and burn_rate(0, 0, 0.99) is None
    assert burn_rate(bad=72, total=5000, objective=0.999) == pytest.approx(14.4)


def test_time_to_exhaustion_and_its_poisson_interval():
    e = time_to_exhaustion(remaining_events=500, bad_in_window=20, window_s=3600, confidence=0.9)
    assert e.seconds == pytest.approx(500 / (20 / 3600))
    low_rate, high_rate = stats.poisson.interval(0.9, 20)  # rough cross-check of the exact interval
    assert 500 / ((high_rate + 2) / 3600) < e.low < e.seconds < e.high < 500 / ((low_rate - 2) / 3600)
    quiet = time_to_exhaustion(remaining_events=500, bad_in_window=0, window_s=3600)
    assert math.isinf(quiet.seconds) and math.isinf(quiet.high) and quiet.low > 0
    assert time_to_exhaustion(-1, 5, 60).seconds == 0.0


def _outage_run(objective, outage_s, error_ratio=1.0):
    """Steady traffic for 3 h, an outage, then recovery; evaluate at every closed 10 s bucket."""
    windows = SeriesWindows()
    outage_start = T0 + 3 * 3600
    tier = default_tiers(30 * 86400)[0]
    history = []
    rng = np.random.default_rng(0)
    for start in range(T0, outage_start + outage_s + 900, 10):
        in_outage = outage_start <= start < outage_start + outage_s
        bad = round(RATE * 10 * error_ratio) if in_outage else 0
        oks = np.ones(RATE * 10, dtype=np.int8)
        oks[rng.permutation(RATE * 10)[:bad]] = 0
        windows.add(start, np.full(RATE * 10, np.nan), oks)
        windows.close_until(start + 10)
        end = start + 10

        def counts(span, end=end):
            agg = windows.aggregate(end - span, end, with_sketch=False)
            return agg.errors, agg.stats[OK_KNOWN]

        holds = evaluate_tiers((tier,), counts, objective)[0].holds
        history.append((end - outage_start, holds))
    fired = next(t for t, h in history if h)
    reset = next(t for t, h in history if t > fired and not h)
    return tier, fired, reset


def test_total_outage_fires_and_resets_when_the_workbook_says():
    tier, fired, reset = _outage_run(objective=0.999, outage_s=600)
    expected_fire = detection_seconds(0.999, tier.burn_rate, tier.long_s, 1.0)
    assert expected_fire == pytest.approx(51.84)
    assert expected_fire <= fired < expected_fire + 10  # within one bucket
    # Reset: the short window clears once it holds less than the threshold's share of errors.
    expected_reset = 600 + tier.short_s * (1 - (1 - 0.999) * tier.burn_rate)
    assert expected_reset <= reset < expected_reset + 10


def test_partial_outage_detection_time_matches_formula():
    tier, fired, _ = _outage_run(objective=0.99, outage_s=3600, error_ratio=0.5)
    expected = detection_seconds(0.99, tier.burn_rate, tier.long_s, 0.5)  # 0.01*14.4*3600/0.5 = 1036.8 s
    assert expected == pytest.approx(1036.8)
    assert expected <= fired < expected + 10


def test_low_traffic_guard_suppresses_and_says_so():
    tier = BurnTier("page", 3600, 300, 14.4)
    results = evaluate_tiers((tier,), lambda span: (5, 10), objective=0.999, min_events=100)
    assert results[0].holds is False and results[0].low_traffic is True
    results = evaluate_tiers((tier,), lambda span: (5, 10), objective=0.999, min_events=10)
    assert results[0].holds is True and results[0].low_traffic is False
