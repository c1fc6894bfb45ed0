"""One check that every versioned stateful object passes, in the spirit of river's estimator checks:
fed half a seeded stream, saved and restored, it goes on exactly as the original does through the
other half (same results at every step, same state at the end), and a state of another version is
refused with an error that says so."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from slostream.core.alerts import AlertBook, Condition
from slostream.core.buckets import SUM
from slostream.core.calibration import WEEK_S, CalibrationWeeks, calibration_row
from slostream.core.compliance_model import ComplianceModel
from slostream.core.drift import DriftWatch
from slostream.core.seasonal import SeasonalBaseline
from slostream.core.sketch import QuantileSketch
from slostream.core.threshold_model import ThresholdModel
from slostream.core.tumbling import TumblingWindows
from slostream.core.windows import SeriesWindows


@dataclass
class Case:
    make: Callable[[], Any]
    step: Callable[[Any, int, np.random.Generator], Any]  # feed step i; what it returns is compared
    save: Callable[[Any], Any]
    restore: Callable[[Any], Any]
    other_version: Callable[[Any], Any]  # the saved state, marked with a version this code does not read


def _bytes_version(state: bytes) -> bytes:
    return bytes((99,)) + state[1:]


def _dict_version(state: dict) -> dict:
    return {**state, "v": 99}


def _header_version(state: dict) -> dict:
    return {**state, "header": {**state["header"], "v": 99}}


def _tumbling_version(state: bytes) -> bytes:
    return (99).to_bytes(2, "little") + state[2:]


def _alert_step(book: AlertBook, i: int, rng) -> list:
    labels = {"alertname": "X", "service": f"s{i % 3}", "severity": "page"}
    return [(e.type, e.time) for e in book.evaluate(100.0 * i, [Condition(labels, bool(rng.random() < 0.4))])]


def _windows_step(windows: TumblingWindows, i: int, rng) -> list:
    start = 10 * i
    windows.add(start, rng.lognormal(3, 0.5, 5), rng.integers(0, 2, 5).astype(np.int8))
    return [(a.start, a.count, a.quantile(0.9)) for a in windows.close_until(start - 20)]


def _series_windows_step(windows: SeriesWindows, i: int, rng) -> list:
    windows.add(10 * i, rng.random(3), np.ones(3, dtype=np.int8))
    windows.close_until(10 * i - 10)
    # The counts: a restore rebuilds the running totals, whose float sum may differ in its last bits.
    return windows.totals(max(0, 10 * i - 600), 10 * i)[:SUM].tolist()


def _threshold_step(model: ThresholdModel, i: int, rng) -> tuple:
    model.update(300.0 * i, float(rng.lognormal(4, 0.2)))
    if i % 250 or i == 0:
        return ()
    if i == 1000:
        model.drifted(300.0 * 900)
    prediction = model.predict(70.0, model.forecast(300.0 * i, 86400))
    model.recalibrate(prediction.covers(0.1))
    return prediction.violation_rate, prediction.ci_low, prediction.ci_high


def _compliance_step(model: ComplianceModel, i: int, rng) -> tuple:
    """Ten-minute windows of two series, the second up to twenty minutes behind."""
    learned = model.update(600.0 * (i - i % 2 * 2), model.histogram(rng.lognormal(5.3, 0.3, 20)))
    if i % 300 or i == 0:
        return tuple(end for end, _ in learned)
    prediction = model.predict(250.0, model.forecast(600.0 * i, 86400))
    model.recalibrate(prediction.covers(0.03))
    return prediction.violation_rate, prediction.ci_low, prediction.ci_high, model.unusual()


CASES = {
    "seasonal baseline": Case(
        SeasonalBaseline,
        lambda b, i, rng: (b.update(1800.0 * i, float(rng.lognormal(4, 0.2))), b.estimate(1800.0 * i + 900))[1],
        lambda b: b.to_state(), SeasonalBaseline.from_state, _bytes_version),
    "drift watch (adwin)": Case(
        lambda: DriftWatch(warmup_windows=10),
        lambda w, i, rng: w.update(600.0 * i, float(rng.lognormal(4, 0.1)) * (2 if i > 700 else 1)),
        lambda w: w.to_state(), DriftWatch.from_state, _bytes_version),
    "drift watch (kswin)": Case(
        lambda: DriftWatch("kswin", {"seed": 1}, warmup_windows=10),
        lambda w, i, rng: w.update(600.0 * i, float(rng.lognormal(4, 0.1)) * (2 if i > 700 else 1)),
        lambda w: w.to_state(), DriftWatch.from_state, _bytes_version),
    "calibration weeks": Case(
        lambda: CalibrationWeeks(10, 0.05),
        lambda c, i, rng: c.update(4 * 86400 + WEEK_S * (i // 100),
                                   calibration_row(p := rng.random(200), (rng.random(200) < p * (1 + i / 1000))
                                                   .astype(np.int8), 10)),
        lambda c: c.to_state(), lambda s: CalibrationWeeks.from_state(s, 0.05), _bytes_version),
    "alert book": Case(
        lambda: AlertBook(cooldown_s=300.0), _alert_step, lambda b: b.to_state(), AlertBook.from_state,
        _dict_version),
    "tumbling windows": Case(
        lambda: TumblingWindows(10, {60: True, 300: False}), _windows_step, lambda w: w.to_state(),
        lambda s: TumblingWindows.from_state(s, {60: True, 300: False}), _tumbling_version),
    "multi-resolution windows": Case(
        SeriesWindows, _series_windows_step, lambda w: w.to_state(), SeriesWindows.from_state, _header_version),
    "threshold model": Case(
        lambda: ThresholdModel("above", 300), _threshold_step, lambda m: (m.to_state(), m.chunks()),
        lambda saved: ThresholdModel.from_state(*saved), lambda saved: (_dict_version(saved[0]), saved[1])),
    "compliance model": Case(
        lambda: ComplianceModel(200.0, good_below=True, objective=0.99), _compliance_step, lambda m: m.to_state(),
        ComplianceModel.from_state, _dict_version),
    "quantile sketch": Case(
        QuantileSketch, lambda s, i, rng: (s.add_values(rng.lognormal(3, 1, 7)), s.quantiles((0.5, 0.99)))[1],
        lambda s: s.to_state(), QuantileSketch.from_state, _dict_version),
}


@pytest.mark.parametrize("name", CASES)
def test_a_restored_object_goes_on_exactly_as_the_original(name):
    case = CASES[name]
    steps = 1500
    original = case.make()
    rng = np.random.default_rng(42)
    for i in range(steps // 2):
        case.step(original, i, rng)
    restored = case.restore(case.save(original))
    for i in range(steps // 2, steps):
        state = rng.bit_generator.state
        expected = case.step(original, i, rng)
        rng.bit_generator.state = state  # both are fed the same draws
        assert case.step(restored, i, rng) == expected, f"step {i}"
    assert case.save(restored) == case.save(original)


@pytest.mark.parametrize("name", CASES)
def test_a_state_of_another_version_is_refused(name):
    case = CASES[name]
    original = case.make()
    rng = np.random.default_rng(1)
    for i in range(20):
        case.step(original, i, rng)
    with pytest.raises(ValueError, match="version"):
        case.restore(case.other_version(case.save(original)))
