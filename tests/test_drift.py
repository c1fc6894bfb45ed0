import math

import numpy as np
import pytest
from river import drift

from slostream.core.drift import DETECTORS, MIN_RMS, SCALE_WEIGHT, Z_CLIP, DriftWatch
from slostream.core.seasonal import SeasonalBaseline

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


@pytest.mark.parametrize("detector", DETECTORS)
def test_the_detector_reads_exactly_what_river_reads_of_the_standardised_residuals(detector):
    """The wrapper adds nothing to river's decision but the documented input: a bare river detector
    fed relative residuals divided by their running root mean square (from the first day with
    daily seasonality, after the warm-up) fires at the same window, up to the first detection."""
    params = {"seed": 7} if detector == "kswin" else {"clock": 1} if detector == "adwin" else {}
    ts, values = _p95_stream(1, days=3, step_at=2.5 * DAY, step=2.0)
    watch = DriftWatch(detector, params, warmup_windows=100)
    baseline = SeasonalBaseline()
    bare = {"adwin": drift.ADWIN, "page_hinkley": drift.PageHinkley, "kswin": drift.KSWIN}[detector](**params)
    first_bare, mean_square = None, None
    for n, (t, v) in enumerate(zip(ts.tolist(), values.tolist()), 1):
        source, expected = baseline.estimate(t)
        baseline.update(t, v)
        if source in ("none", "level"):
            continue
        relative = max(-10.0, min(10.0, (v - expected) / max(abs(expected), 1e-3)))
        if mean_square is None:
            mean_square = relative**2
            continue
        if n > 100:
            bare.update(max(-Z_CLIP, min(Z_CLIP, relative / max(math.sqrt(mean_square), MIN_RMS))))
            if bare.drift_detected:
                first_bare = t
                break
        mean_square += SCALE_WEIGHT * (relative**2 - mean_square)
    found = _detections(watch, ts, values)
    assert first_bare is not None and found[0].detected_at == first_bare


def test_a_doubling_is_found_where_it_began_and_a_stationary_series_is_quiet():
    ts, values = _p95_stream(2, days=4, step_at=3 * DAY + 3600, step=2.0)
    found = _detections(DriftWatch(), ts, values)
    assert len(found) == 1
    change = found[0]
    began = ts[0] + 3 * DAY + 3600
    assert began <= change.detected_at <= began + 5 * MINUTE  # the goal for a doubling
    assert abs(change.changed_at - began) <= 5 * MINUTE
    assert change.direction == "up" and change.relative_change == pytest.approx(1.0, abs=0.15)
    ts, values = _p95_stream(3, days=9)  # a week after the two days of warm-up
    assert _detections(DriftWatch(), ts, values) == []


@pytest.mark.parametrize("detector", DETECTORS)
def test_a_restored_watch_detects_exactly_what_an_uninterrupted_one_detects(detector):
    params = {"seed": 3} if detector == "kswin" else {"threshold": 5.0} if detector == "page_hinkley" else {}
    ts, values = _p95_stream(4, days=3, step_at=2.2 * DAY, step=1.6)
    values[ts - ts[0] >= 2.6 * DAY] /= 1.6
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
