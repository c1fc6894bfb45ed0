import math
import tracemalloc

import numpy as np
import pytest

from slostream.core.seasonal import HOURS_OF_WEEK, SeasonalBaseline

DAY, HOUR = 86400, 3600


def _stream(seed: int, days: float, step_s: float = 300.0):
    """Irregular event times (windows with gaps) and values with a daily and a weekly cycle."""
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(step_s, int(days * DAY / step_s))
    ts = 1_700_000_000 + np.cumsum(gaps)
    hour = (ts // HOUR) % 24
    weekday = (ts // DAY) % 7
    values = 100 * (1 + 0.4 * np.sin(2 * np.pi * hour / 24)) * np.where(weekday >= 5, 0.6, 1.0)
    return ts, values * rng.lognormal(0, 0.1, ts.size)


def _brute_force(ts: np.ndarray, values: np.ndarray, at: float, half_life: float, level_half_life: float):
    """The baseline's expectation from the whole history (powers of two taken from the first time)."""
    seen = ts.max() - ts.min()
    hours = (ts // HOUR).astype(np.int64) % HOURS_OF_WEEK
    hour = int(at // HOUR) % HOURS_OF_WEEK
    weights = 2.0 ** ((ts - ts[0]) / half_life)
    weekly = hours == hour
    daily = hours % 24 == hour % 24
    if seen >= 14 * DAY and weekly.any():
        return "weekly", np.average(values[weekly], weights=weights[weekly])
    if seen >= 2 * DAY and daily.any():
        return "daily", np.average(values[daily], weights=weights[daily])
    return "level", np.average(values, weights=2.0 ** ((ts - ts[0]) / level_half_life))


@pytest.mark.parametrize("seed", [1, 2])
def test_expectations_equal_decayed_means_of_the_whole_history(seed):
    ts, values = _stream(seed, days=20)
    baseline = SeasonalBaseline(half_life_s=5 * DAY, level_half_life_s=600.0)  # rescaled many times
    checked = set()
    for n, (t, v) in enumerate(zip(ts.tolist(), values.tolist())):
        if n and n % 97 == 0:
            for at in (t, t + 3 * HOUR, t + 5 * DAY):
                source, want = _brute_force(ts[:n], values[:n], at, 5 * DAY, 600.0)
                got_source, got = baseline.estimate(at)
                assert got_source == source
                assert got == pytest.approx(want, rel=1e-5)  # float32 sums
                checked.add(source)
        baseline.update(t, v)
    assert checked == {"level", "daily", "weekly"}


def test_nothing_is_expected_before_a_value_then_the_level():
    baseline = SeasonalBaseline()
    source, value = baseline.estimate(0.0)
    assert source == "none" and math.isnan(value)
    baseline.update(0.0, 5.0)
    assert baseline.estimate(60.0) == ("level", 5.0)


def test_the_residuals_of_a_seasonal_stream_lose_its_cycle():
    """After two days, what is left after the baseline varies far less than the raw values."""
    ts, values = _stream(3, days=21)
    baseline = SeasonalBaseline()
    residuals = []
    for t, v in zip(ts.tolist(), values.tolist()):
        residuals.append(v - baseline.estimate(t)[1])
        baseline.update(t, v)
    residuals = np.array(residuals)
    settled = ts - ts[0] >= 15 * DAY
    assert np.nanstd(residuals[settled]) < 0.35 * np.std(values[settled])
    assert abs(np.mean(residuals[settled])) < 0.05 * np.mean(values[settled])


def test_state_round_trips_and_an_unknown_version_is_refused():
    ts, values = _stream(4, days=16)
    live = SeasonalBaseline(level_half_life_s=900.0)
    half = ts.size // 2
    for t, v in zip(ts[:half].tolist(), values[:half].tolist()):
        live.update(t, v)
    restored = SeasonalBaseline.from_state(live.to_state())
    for t, v in zip(ts[half:].tolist(), values[half:].tolist()):
        assert restored.estimate(t) == live.estimate(t)
        restored.update(t, v)
        live.update(t, v)
    assert restored.to_state() == live.to_state()
    with pytest.raises(ValueError, match="version 9"):
        SeasonalBaseline.from_state(b"\x09" + live.to_state()[1:])


def test_a_baseline_holds_under_4_kib():
    ts, values = _stream(5, days=15)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    baselines = [SeasonalBaseline() for _ in range(20)]
    for baseline in baselines:
        for t, v in zip(ts[:300].tolist(), values[:300].tolist()):
            baseline.update(t, v)
    held = (tracemalloc.get_traced_memory()[0] - before) / len(baselines)
    tracemalloc.stop()
    assert held <= 4096, held


@pytest.mark.parametrize("daily", [False, True])
def test_a_change_of_level_leaves_the_hours_kept_and_moves_each_hour_of_the_day_as_asked(daily):
    """The hours of the week kept stay as they are; the others move by the ratio, or (``daily``:
    expectations read from each hour of the day's seven hours) so far that every hour of the day's
    expectation moves by the ratio."""
    ts, values = _stream(6, days=15)
    baseline = SeasonalBaseline()
    for t, v in zip(ts.tolist(), values.tolist()):
        baseline.update(t, v)
    at = ts[-1] + np.arange(HOURS_OF_WEEK) * HOUR
    weekly_before = np.array([baseline.estimate(t)[1] for t in at])
    daily_before = np.array([baseline.estimate(t, weekly=False)[1] for t in at])
    keep = np.zeros(HOURS_OF_WEEK, dtype=bool)
    keep[120:168] = True  # a weekend
    baseline.change_level(100.0, 125.0, keep, daily)
    weekly_after = np.array([baseline.estimate(t)[1] for t in at])
    daily_after = np.array([baseline.estimate(t, weekly=False)[1] for t in at])
    hours = (at // HOUR).astype(int) % HOURS_OF_WEEK
    np.testing.assert_allclose(weekly_after[keep[hours]], weekly_before[keep[hours]], rtol=1e-6)
    if daily:
        np.testing.assert_allclose(daily_after, 1.25 * daily_before, rtol=1e-5)
        assert np.all(weekly_after[~keep[hours]] > 1.25 * weekly_before[~keep[hours]])
    else:
        np.testing.assert_allclose(weekly_after[~keep[hours]], 1.25 * weekly_before[~keep[hours]], rtol=1e-6)
