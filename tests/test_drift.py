import math

import numpy as np
import pytest
from river import drift

from slostream.bench.drift_scenarios import CHANGES, QUIET, make_stream
from slostream.core.drift import ABSORPTIONS_KEPT, DETECTORS, STATE_VERSION, DriftWatch, _hours
from slostream.core.drift_rules import DriftRule
from slostream.pipeline.evaluators.drift import SeriesDrift

DAY, MINUTE = 86400, 60


def _p95_stream(seed: int, days: float, step_at: float | None = None, step: float = 1.0):
    """Per-minute p95 with a ±40% daily cycle and lognormal noise; times ``step`` from ``step_at``."""
    rng = np.random.default_rng(seed)
    ts = np.arange(0, days * DAY, MINUTE, dtype=np.float64) + 1_700_000_000
    cycle = 1 + 0.4 * np.sin(2 * np.pi * (ts % DAY) / DAY)
    values = 200 * cycle * rng.lognormal(0, 0.08, ts.size)
    if step_at is not None:
        values[ts - ts[0] >= step_at] *= step
    return ts, values


def _detections(watch: DriftWatch, ts, values):
    return [d for d in (watch.update(t, v) for t, v in zip(ts.tolist(), values.tolist())) if d]


RIVER = ("adwin", "page_hinkley", "kswin")


@pytest.mark.parametrize("detector", RIVER)
def test_a_river_detector_reads_exactly_the_standardised_residuals(detector):
    """The wrapper adds nothing to river's decision but the documented input: a bare river detector
    fed the watch's ``z`` of every window after the warm-up fires at the same window, up to the
    first detection."""
    params = {"seed": 7} if detector == "kswin" else {"clock": 1} if detector == "adwin" else {}
    ts, values = _p95_stream(1, days=3, step_at=2.5 * DAY, step=2.0)
    watch = DriftWatch(detector, params, warmup_windows=100)
    bare = {"adwin": drift.ADWIN, "page_hinkley": drift.PageHinkley, "kswin": drift.KSWIN}[detector](**params)
    first_bare = first_watch = None
    for t, v in zip(ts.tolist(), values.tolist()):
        found = watch.update(t, v)
        if watch.seen > 100 and first_bare is None:
            bare.update(watch.z)
            first_bare = t if bare.drift_detected else None
        if found and first_watch is None:
            first_watch = t
        if first_bare is not None:
            break
    assert first_bare is not None and first_watch == first_bare


def _found(scenario, seeds: range, days: int, step_days: tuple[int, int]) -> list[float | None]:
    """Delays (s) to the first detection, up, of a scenario's stepped aggregate, through
    ``SeriesDrift`` with the default rule, per seed (None: not found)."""
    delays = []
    for seed in seeds:
        stream = make_stream(scenario, seed, days, step_days)
        series, delay = SeriesDrift.of_rule(DriftRule()), None
        for end, p95, requests, errors in zip(stream.ends.tolist(), stream.p95.tolist(), stream.requests.tolist(),
                                              stream.errors.tolist()):
            window = {"window_end": end, "p95": None if p95 != p95 else p95, "ok": requests - errors, "errors": errors}
            for aggregate, detection in series.update(window):
                if delay is None and end >= stream.step_at and aggregate == scenario.stepped \
                        and detection.direction == "up":
                    delay = end - stream.step_at
        delays.append(delay)
    return delays


def test_a_spike_does_not_blind_the_detector():
    """Issue 26, point 2: a +50% step three hours after a 10-minute x3 spike is found, up, within 15
    minutes in at least 95% of runs. (Before, the spike's detection moved the baseline to the
    spike's level and the step went unseen for hours in most runs.)"""
    delays = _found(CHANGES["p95_step_50_after_spike"][0], range(20), days=5, step_days=(3, 4))
    assert sum(d is not None and d <= 15 * MINUTE for d in delays) >= 19, delays


def test_a_young_series_finds_a_tenfold_error_ratio_within_ten_minutes():
    """A series one day old: 0.1% to 1% errors at 10 requests a second is found within 10 minutes
    (before: not at all within 12 hours, the detector waited two days for the hours of the day)."""
    delays = _found(CHANGES["errors_0.1_to_1_at_10rps"][0], range(20), days=3, step_days=(1, 2))
    assert sum(d is not None and d <= 10 * MINUTE for d in delays) >= 18, delays


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["day_level_sd10", "pareto_tail", "daily_spikes"])
def test_false_detections_stay_near_what_the_setting_asks(scenario):
    """Seeded simulation of the guarantee: 12 streams of 28 days of a family that breaks the
    white-noise assumption (day-to-day levels, heavy tails, spikes) raise at most twice the
    ``false_per_week`` asked (0.5 a series-week), where river's ADWIN on the same residuals raised
    3 to 20; and not a hundredth of it (a detector that never fires is not the goal either)."""
    from slostream.bench.drift_scenarios import WEEK, _judge, run_stream

    results = [run_stream(QUIET[scenario], seed) for seed in range(12)]
    weeks = sum(r["span_s"] for r in results) / WEEK
    false = sum(_judge(r, "ours", None)[0] for r in results) / weeks
    assert 0.005 <= false <= 2 * DriftRule().false_per_week, false


def test_a_doubling_is_found_where_it_began_and_a_stationary_series_is_quiet():
    ts, values = _p95_stream(2, days=4, step_at=3 * DAY + 3600, step=2.0)
    found = _detections(DriftWatch(false_per_week=0.05), ts, values)
    assert len(found) == 1
    change = found[0]
    began = ts[0] + 3 * DAY + 3600
    assert began <= change.detected_at <= began + 5 * MINUTE  # the goal for a doubling
    assert abs(change.changed_at - began) <= 5 * MINUTE
    assert change.direction == "up" and change.relative_change == pytest.approx(1.0, abs=0.15)
    ts, values = _p95_stream(3, days=9)  # a week after the two days of warm-up
    assert _detections(DriftWatch(false_per_week=0.05), ts, values) == []


@pytest.mark.parametrize("detector", DETECTORS)
def test_a_restored_watch_detects_exactly_what_an_uninterrupted_one_detects(detector):
    params = {"seed": 3} if detector == "kswin" else {"threshold": 5.0} if detector == "page_hinkley" else {}
    ts, values = _p95_stream(4, days=4, step_at=3.2 * DAY, step=1.6)
    values[ts - ts[0] >= 3.6 * DAY] /= 1.6
    live = DriftWatch(detector, params, warmup_windows=200, cooldown_s=1800)
    reference = _detections(DriftWatch(detector, params, warmup_windows=200, cooldown_s=1800), ts, values)
    assert reference
    got = []
    for cut in np.array_split(np.arange(ts.size), 7):  # a restart between every part
        got += _detections(live, ts[cut], values[cut])
        live = DriftWatch.from_state(live.to_state())
    assert got == reference


def test_an_unknown_version_or_detector_is_refused():
    state = DriftWatch().to_state()
    with pytest.raises(ValueError, match="version 9"):
        DriftWatch.from_state(b"\x09" + state[1:])
    with pytest.raises(ValueError, match="unknown drift detector 'cusum'"):
        DriftWatch("cusum")
    with pytest.raises(ValueError, match="multiscale takes no params"):
        DriftWatch(params={"delta": 0.1}).check()


def test_a_daylight_saving_shift_moves_the_profile_an_hour():
    """A local-time service whose cycle moves an hour: within a day the baseline's profile is moved
    (its expectation at each hour is what it was an hour off), where a detection would have been,
    and the p95 raises no detection (before: a detection or more for every day of the week after)."""
    stream = make_stream(QUIET["daylight_saving"], 3)
    watch = DriftWatch()
    profile = {}
    found = []
    for end, p95 in zip(stream.ends.tolist(), stream.p95.tolist()):
        if watch.update(end, p95):
            found.append(end)
        for name, at in (("before", stream.clocks_moved_at), ("after", stream.clocks_moved_at + DAY)):
            if name not in profile and end >= at:
                profile[name] = [watch.baseline.estimate(at + h * 3600)[1] for h in range(24)]
    moved = [np.corrcoef(np.roll(profile["before"], shift), profile["after"])[0, 1] for shift in (-1, 0, 1)]
    assert max(moved[0], moved[2]) > moved[1], moved
    assert not [t for t in found if stream.clocks_moved_at <= t < stream.clocks_moved_at + 7 * DAY]


def test_the_thresholds_are_the_exponential_tail_of_the_cluster_peaks_computed_by_brute_force():
    """Reference: every scale's means (scipy's lfilter), sizes, clusters and their decayed tail
    recomputed from the watch's own residuals ``z`` with numpy, and the threshold each side then
    asks (``U + beta (1 + 1/sqrt(n)) ln(rate / allowed)``) equal to the watch's."""
    from scipy import signal

    from slostream.core import drift as d

    ts, values = _p95_stream(8, days=6)
    watch = DriftWatch(false_per_week=0.01)
    zs, times, elapsed = [], [], []
    newest = math.nan
    for t, v in zip(ts.tolist(), values.tolist()):
        before = watch.source
        assert watch.update(t, v) is None
        if watch.source != before:  # the scales start afresh
            zs, times, elapsed = [], [], []
        if watch.source:
            zs.append(watch.z)
            times.append(t)
            elapsed.append(t - newest if t > newest else 0.0)
        newest = t
    z, times, elapsed = np.array(zs), np.array(times), np.array(elapsed)
    exposure = np.cumsum(elapsed * 2.0 ** ((times - times[0]) / d.TAIL_HALF_LIFE_S))  # forward weights
    since = np.arange(1, z.size + 1)
    weights = np.maximum(d.SIZE_WEIGHT, 1 / (since + d.PRIOR_WINDOWS))
    checked = 0
    for i, alpha in enumerate(d._ALPHAS):
        means = signal.lfilter([alpha], [1, alpha - 1], z)
        size, sizes = d._NO_SCALES[i * d._COLUMNS + 1], []
        for mean, weight in zip(means, weights):
            size += weight * (abs(mean) - size)
            sizes.append(size)
        scaled = means / (d._GAUSS_MAD * np.array(sizes))
        for side, values_of_side in ((0, scaled), (1, -scaled)):
            peaks, closes, peak = [], [], 0.0
            for k, value in enumerate(values_of_side):
                if value > d.U:
                    peak = max(peak, value)
                elif peak:
                    peaks.append(min(peak - d.U, d.EXCESS_CAP))
                    closes.append(k)
                    peak = 0.0
            got = watch.thresholds()[i][side]
            last = closes[-1] if closes else 0
            decay = 2.0 ** (-(times[last] - times[closes]) / d.TAIL_HALF_LIFE_S)
            clusters, excess = decay.sum(), (np.array(peaks) * decay).sum()
            if clusters < d.MIN_CLUSTERS:
                assert got == math.inf
                continue
            rate = clusters / (exposure[last] * 2.0 ** (-(times[last] - times[0]) / d.TAIL_HALF_LIFE_S)) * d.WEEK_S
            allowed = watch.false_per_week / (2 * len(d.SCALES))
            expected = d.U + excess / clusters * (1 + 1 / math.sqrt(clusters)) * math.log(max(rate / allowed, 1.0))
            assert got == pytest.approx(expected, rel=1e-6), (i, side)
            checked += 1
    assert checked >= 4


def test_hostile_values_are_not_learned_and_poison_nothing():
    """inf, NaN and values beyond what float32 sums hold are skipped (before: one 1e39 overflowed
    the baseline to inf and every later window was NaN); a doubling after them is still found."""
    ts, values = _p95_stream(5, days=4, step_at=3.5 * DAY, step=2.0)
    values[[0, 2881, 3000]] = [1e39, math.inf, math.nan]
    watch = DriftWatch(false_per_week=0.05)
    found = _detections(watch, ts, values)
    assert [d.direction for d in found] == ["up"] and found[0].detected_at >= ts[0] + 3.5 * DAY
    assert math.isfinite(watch.baseline.level()) and math.isfinite(watch.mean_absolute)


def test_one_window_in_an_hour_never_seen_restarts_nothing():
    """A business-hours series gets one window at 03:00: the baseline falls back to its level for
    it, which must not start the scales afresh (before: a step at 10:00 that day went unseen)."""
    start = 1_700_006_400  # midnight UTC
    watch, found = DriftWatch(false_per_week=0.05), []
    rng = np.random.default_rng(4)
    for day in range(10):
        for minute in range(8 * 60, 20 * 60):
            t = start + day * DAY + minute * MINUTE
            level = 2.0 if day == 9 and minute >= 10 * 60 else 1.0
            if watch.update(t, 100 * level * rng.lognormal(0, 0.05)):
                found.append((day, minute))
        if day == 8:
            watch.update(start + 9 * DAY + 3 * 3600, 100.0)
    assert (9, 10 * 60) <= found[-1] <= (9, 10 * 60 + 5), found


def test_a_silent_cooldown_absorbs_nothing():
    """A spike is detected and the service then sends nothing for two hours: the spike is not
    taken as the new level (before: the whole profile was scaled by the spike's ratio and a false
    'down' followed)."""
    ts, values = _p95_stream(6, days=5)
    spike = (ts >= ts[0] + 4 * DAY) & (ts < ts[0] + 4 * DAY + 600)
    values[spike] *= 3
    silent = (ts >= ts[0] + 4 * DAY + 600) & (ts < ts[0] + 4 * DAY + 600 + 7200)
    found = _detections(DriftWatch(false_per_week=0.05), ts[~silent], values[~silent])
    assert [d.direction for d in found] == ["up"], found


def test_an_older_watch_starts_afresh_and_its_series_goes_on():
    """A series saved with a drift watch of another state version keeps everything else; only the
    watch starts afresh. Another false_per_week keeps the watch and re-aims it."""
    series = SeriesDrift.of_rule(DriftRule())
    for i in range(3 * 1440):
        series.update({"window_end": 1_700_000_000 + 60.0 * i, "p95": 100.0 + i % 7, "ok": 600, "errors": i % 2})
    state = bytearray(series.to_state())
    restored = SeriesDrift.from_state(bytes(state), DriftRule(), 0.05)
    assert restored.watches["p95"].to_state() == series.watches["p95"].to_state()
    reaimed = SeriesDrift.from_state(bytes(state), DriftRule(false_per_week=0.1), 0.05)
    assert reaimed.watches["p95"].seen == series.watches["p95"].seen
    assert reaimed.watches["p95"].false_per_week == 0.05
    first_watch = state.index(bytes((STATE_VERSION,)), 20)  # the first watch's version byte, after its header
    state[first_watch] = 2
    older = SeriesDrift.from_state(bytes(state), DriftRule(), 0.05)
    assert older.pooled == series.pooled and older.watches["p95"].seen == 0


def test_a_lasting_change_is_absorbed_once_at_five_minute_windows():
    """Twelve windows to a cooldown: the change is absorbed at its end and detected once (a check
    that wanted eight windows in the cooldown's second half re-detected it every hour)."""
    rng = np.random.default_rng(9)
    ts = 1_700_000_000 + 300.0 * np.arange(8 * 288)
    values = 100 * (1 + 0.3 * np.sin(2 * np.pi * (ts % DAY) / DAY)) * rng.lognormal(0, 0.05, ts.size)
    values[ts >= ts[0] + 6 * DAY] *= 2.3
    found = _detections(DriftWatch(false_per_week=0.05), ts, values)
    assert [d.direction for d in found] == ["up"], found


def test_a_watch_of_state_version_3_goes_on_with_no_change_absorbed():
    ts, values = _p95_stream(10, days=3)
    watch = DriftWatch()
    _detections(watch, ts[:2000], values[:2000])
    state = watch.to_state()
    absorbed = 8 * (2 * ABSORPTIONS_KEPT + 4)  # the version 4 block before the (absent) river state
    older = DriftWatch.from_state(b"\x03" + state[1:-absorbed])
    assert older.to_state() == state and all(math.isnan(x) for x in older.absorbed)
    assert _detections(older, ts[2000:], values[2000:]) == _detections(watch, ts[2000:], values[2000:])
    with pytest.raises(ValueError, match="holds"):
        DriftWatch.from_state(state[:-8])
    with pytest.raises(ValueError, match="at least"):
        DriftWatch.from_state(state[:20])


def test_only_the_end_of_a_part_of_the_week_that_came_back_keeps_its_hours():
    """A change that undoes the last one absorbed keeps the hours learned since, if that one came
    back a week after one like it (a weekend); an incident that ends (nothing like it a week before),
    or a change that does not undo the last, moves every hour. A change the other way a week after
    the kept hours began moves only them."""
    saturday = 1_699_833_600 + 5 * DAY  # a Saturday, 00:00 UTC
    week = 7 * DAY

    def watch_after(*absorbed):
        watch = DriftWatch()
        for at, ratio in absorbed:
            watch._remember(at, ratio)
        return watch

    weekends = watch_after((saturday, 0.8), (saturday + 2 * DAY, 1.25), (saturday + week + 3600, 0.78))
    monday = saturday + week + 2 * DAY + 600
    assert weekends._part_of_the_week(monday, 1.27) == (saturday + week + 3600, monday, 0.78)
    kept = _hours(saturday + week + 3600, monday)
    hour = int((saturday + week + 3600) // 3600) % 168
    assert kept.sum() == 47 and kept[hour] and kept[(hour + 46) % 168] and not kept[(hour + 47) % 168]
    assert weekends._part_of_the_week(monday, 1.0) is None  # undoes nothing
    assert weekends._part_of_the_week(monday, 0.8) is None  # the same way again
    incident = watch_after((saturday - 3 * DAY, 1.3), (saturday + week + 3600, 2.0))
    assert incident._part_of_the_week(saturday + week + DAY, 0.5) is None
    other_way = watch_after((saturday, 1.25), (saturday + week, 0.8))
    assert other_way._part_of_the_week(saturday + week + 2 * DAY, 1.25) is None


def test_a_weekly_incident_that_stops_moves_back_only_its_hours():
    """An incident at the same hours two weeks running is kept as a part of the week; the week it
    does not come back, its hours move back, and no other (before: every hour moved, the next day's
    'up' moved them all back with the incident's hours, and so on week after week)."""
    rng = np.random.default_rng(6)
    ts = 1_699_833_600 + 60.0 * np.arange(6 * 7 * 1440)  # six weeks from a Monday
    values = 200 * (1 + 0.4 * np.sin(2 * np.pi * (ts % DAY) / DAY)) * rng.lognormal(0, 0.08, ts.size)
    for day in (17, 24):
        values[(ts >= ts[0] + day * DAY + 9 * 3600) & (ts < ts[0] + (day + 1) * DAY + 9 * 3600)] *= 2
    found = _detections(DriftWatch(), ts, values)
    late = [(round((d.detected_at - ts[0]) / DAY, 2), d.direction) for d in found if d.detected_at > ts[0] + 26 * DAY]
    assert len(late) <= 2, late
