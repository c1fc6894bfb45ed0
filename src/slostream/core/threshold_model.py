"""An online model of one watched aggregate (a policy's p95 over 5 minutes, say): what the series
really achieves, hour of week by hour of week, and so how often any level would be crossed.

Each closed window's value is learned three ways:

- a **seasonal baseline** (``SeasonalBaseline``: decayed means by hour of week, by hour of day
  before two weeks are seen);
- a **trend**: a line through the residuals of the retained windows against the baseline, kept
  only where the means of whole days have a slope significant at 1% (Student's t on the days,
  ``_day_trend``: autocorrelated windows and levels that move day to day make a test of windows
  taken one by one keep spurious slopes; and the days' means are not quite independent either,
  for a weekday's two days in the history share the baseline's hours of the week: at 5%, 17% of
  stationary series kept one);
- the **residuals**: what the baseline and the trend leave, on a log scale
  (``log(value + eps) - log(baseline + eps)``, ``eps`` 1% of the median value, so ratios like
  0.0 still have one), as an empirical distribution. No shape is assumed.

A value forecast for hour ``h`` is ``baseline(h) * exp(trend(h) + e)`` for each retained
residual ``e``: the predicted violation rate of a level is the weighted share of those on the
wrong side, averaged over the hours of the horizon.

**The interval** of that rate (``predict``, ``rate_interval``) is a prediction interval of what
the horizon will do, not a confidence interval of a mean:

- the crossings are counted in effective windows: how many times the variance of independent
  windows the level's crossings have when summed over whole days of the history, against the
  model's own in-sample rates (``batch_inflation``; autocorrelation, day-to-day levels and
  incidents all show there), with a small-sample correction for the few days it is measured on;
- in those units the horizon's count is beta-binomial: the rate's Jeffreys posterior from the
  history, then the horizon's own sampling, so a horizon that may cross nothing gets a lower end
  of 0;
- mixed over the horizon's level, normal on the log scale with sd ``LEVEL_SD`` (4%: a week ahead,
  releases and traffic mix move a service a few percent, which no history shows), and the
  trend's standard error where it is extrapolated.

Its miscoverage ``alpha`` starts at 5% and is recalibrated by adaptive conformal inference (Gibbs
and Candès, 2021) on a rolling one-day check (``_check_day``): at each day's first window the model
predicts that day's rate at the level its history crosses 2% of the time, and scores it at the next
day's first window, so ``alpha`` moves every day, not once a week.

A drift detection on the series whose change has lasted (``lasting``: six hours after it, the
windows since differ from those before by 10% or more, which an incident that has ended does
not) makes the model weigh recent data more (``drifted``): windows before the change count a
fifth, and not at all once 288 windows have been seen after it.

**History.** Every one of the newest ``HISTORY`` windows is kept (float32 values, uint32 ends:
19 kB), so backtests are exact over them: 8.3 days of five-minute windows, but 1.7 days of
one-minute ones. So that every window length learns from ``SPAN_S`` (15 days, which the
conservative strategy's 14 asks for), one in ``stride`` of the windows before is kept in an
older ring of at most ``OLDER``, and weighs ``stride`` (``older_history``: one in two of
five-minute windows, one in 14 of one-minute ones): 30 kB of windows at most, whatever the
window. State is JSON with a version (``to_state``), without the rings' complete
chunks of ``CHUNK`` windows: each is persisted once, when it fills (``chunk``), and deleted once
its windows have left (``expired_chunks``), so what a series writes every window stays small and
what it keeps is bounded.

>>> model = ThresholdModel("above", 300)
>>> rng = np.random.default_rng(1)
>>> for i in range(4 * 2016):  # four weeks of 5-minute windows around 100
...     model.update(1_700_006_400 + 300 * i, float(100 * rng.lognormal(0.0, 0.2)))
>>> week = model.forecast(1_700_006_400 + 4 * 604800, 604800)
>>> prediction = model.predict(100 * math.exp(0.2 * 2.054), week)
>>> round(prediction.violation_rate, 2), prediction.ci_low < 0.02 < prediction.ci_high
(0.02, True)
"""

from __future__ import annotations

import base64
import math
import struct
from dataclasses import dataclass

import numpy as np
from scipy import stats

from .seasonal import SeasonalBaseline
from .window_ring import CHUNK, WindowRing

MODEL_VERSION = 2
HISTORY = 2400  # every window of the newest 2,400: 8.3 days of 5-minute windows (backtests are of 7)
OLDER = 1400  # at most, one in ``stride`` of the windows before: 30 kB of windows in all
SPAN_S = 15 * 86400  # what the model learns from: conservative recommends from 14 days
_CHUNK_HEAD = struct.Struct("<Bq")  # version, the chunk's key (``ThresholdModel.chunk``)
TARGET_MISCOVERAGE = 0.05
ACI_STEP = 0.02  # gamma of adaptive conformal inference
OLD_WEIGHT_AFTER_DRIFT = 0.2
WINDOWS_TO_FORGET_DRIFT = 288
EPS_SHARE = 0.01
HOUR_S = 3600
DAY_S = 86400
DAILY_TARGET = 0.02
# A week ahead, a service's level is taken to be uncertain by this much (sd, log scale) beyond
# what its history shows: releases and traffic mix move it a few percent (a +-5% shift is 2 sds).
LEVEL_SD = 0.04
TREND_MIN_DAYS = 4
TREND_P = 0.01
UNUSUAL_WINDOWS = 3
LASTING_AFTER_S = 6 * 3600
LASTING_SHIFT = 0.10
LASTING_P = 0.001
UNUSUAL_SHARE = 0.01


@dataclass(frozen=True)
class Prediction:
    violation_rate: float  # the share of the horizon's windows on the wrong side of the level
    ci_low: float
    ci_high: float
    window_s: float
    # What ``p_value`` reads: the rates at ``LEVEL_NODES``, the inflation, the history's windows.
    predictive: dict | None = None

    @property
    def breaches_per_week(self) -> float:
        return self.violation_rate * 604800.0 / self.window_s

    def covers(self, rate: float) -> bool:
        return self.ci_low <= rate <= self.ci_high

    def as_dict(self) -> dict:
        return {"violation_rate": self.violation_rate, "ci_low": self.ci_low, "ci_high": self.ci_high,
                "breaches_per_week": self.breaches_per_week}


class ThresholdModel:
    """See the module."""

    __slots__ = ("direction", "window_s", "baseline", "recent", "older", "stride", "drift_at", "alpha", "daily",
                 "_pushed")

    def __init__(self, direction: str, window_s: int):
        if direction not in ("above", "below"):
            raise ValueError(f"direction must be 'above' or 'below', not {direction!r}")
        self.direction = direction
        self.window_s = window_s
        self.baseline = SeasonalBaseline()
        self.stride, older = older_history(window_s)
        self.recent = WindowRing(HISTORY)  # every window: backtests are exact over these
        self.older = WindowRing(older)  # one in ``stride`` of the windows before, to SPAN_S
        self._pushed = (False, False)  # whether the last update moved the recent ring, the older
        self.drift_at = math.nan  # event time of the last detected change
        self.alpha = TARGET_MISCOVERAGE
        # The rolling one-day check that recalibrates ``alpha``: [day number, level (NaN: none
        # predicted), ci_low, ci_high, windows, crossed]; None before the first window.
        self.daily: list | None = None

    # --- learning -------------------------------------------------------------

    def update(self, end: float, value: float | None) -> None:
        """One closed window's value (None or NaN: the window had none, skipped)."""
        self._pushed = (False, False)
        if value is None or not math.isfinite(value):
            return
        day = int((end - self.window_s) // DAY_S)
        if self.daily is None or day > self.daily[0]:  # (a window of a day gone by is no news of today's)
            self._check_day(day)
        self.baseline.update(end, value)
        number = self.recent.count - HISTORY  # of the window pushed out of the recent ring, if any
        out = self.recent.push(end, value)
        older = out is not None and number % self.stride == 0
        if older:
            self.older.push(*out)
        self._pushed = (True, older)
        if day == self.daily[0] and math.isfinite(self.daily[1]):
            self.daily[4] += 1
            self.daily[5] += value > self.daily[1] if self.direction == "above" else value < self.daily[1]

    def _check_day(self, day: int) -> None:
        """A new day: the last day's prediction scored (``recalibrate``), if it saw half a day's
        windows, and this day's made, from a day of history on: the rate of the level the history
        crosses ``DAILY_TARGET`` of the time."""
        if self.daily is not None and self.daily[4] >= 0.5 * DAY_S / self.window_s:
            _, _, low, high, windows, crossed = self.daily
            self.recalibrate(low <= crossed / windows <= high)
        self.daily = [day, math.nan, 0.0, 1.0, 0, 0]
        if self.span_s < DAY_S:
            return
        fit = self.fit()
        if fit is None:
            return
        order = np.argsort(fit.values, kind="stable")
        share = np.cumsum(fit.counts_by_time[order]) / fit.counts_by_time.sum()  # each window as many as it stands for
        wanted = 1 - DAILY_TARGET if self.direction == "above" else DAILY_TARGET
        level = float(fit.values[order][min(np.searchsorted(share, wanted), order.size - 1)])
        prediction = self.predict(level, self.forecast(day * DAY_S, DAY_S, fit))
        self.daily = [day, level, prediction.ci_low, prediction.ci_high, 0, 0]

    def drifted(self, changed_at: float) -> None:
        """A drift detection: weigh the windows since ``changed_at`` more (see the module)."""
        self.drift_at = changed_at

    def recalibrate(self, covered: bool) -> None:
        """Adaptive conformal inference: a one-day check whose interval held (or not) moves the
        miscoverage the next intervals use toward the 5% target in practice."""
        self.alpha = min(max(self.alpha + ACI_STEP * (TARGET_MISCOVERAGE - (0.0 if covered else 1.0)), 0.001), 0.25)

    # --- reading --------------------------------------------------------------

    @property
    def seen(self) -> int:
        """Windows learned."""
        return self.recent.count

    def history(self) -> tuple[np.ndarray, np.ndarray]:
        """The newest ``HISTORY`` windows' end times and values, every one, oldest first."""
        return self.recent.read()

    def sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What the model learns from: the older windows kept, each weighing ``stride``, then the
        recent ones, each weighing 1; within ``SPAN_S`` of the newest."""
        recent_ends, recent_values = self.recent.read()
        older_ends, older_values = self.older.read()
        if recent_ends.size:
            kept = older_ends > recent_ends[-1] - SPAN_S
            older_ends, older_values = older_ends[kept], older_values[kept]
        return (np.r_[older_ends, recent_ends], np.r_[older_values, recent_values],
                np.r_[np.full(older_ends.size, float(self.stride)), np.ones(recent_ends.size)])

    @property
    def span_s(self) -> float:
        """From the oldest window learned from to the newest, plus the newest's own length."""
        ends = self.sample()[0]
        return float(ends[-1] - ends[0] + self.window_s) if ends.size else 0.0

    def fit(self) -> Fit | None:
        """The trend and residuals of the retained windows against today's baseline."""
        ends, values, counts = self.sample()
        if ends.size < 2:
            return None
        eps = EPS_SHARE * max(float(np.median(np.abs(values))), 1e-12)
        hours, at_hour = np.unique(_hour_centres(ends), return_inverse=True)  # a baseline read per hour
        expected = np.array([self.baseline.estimate(t)[1] for t in hours.tolist()])[at_hour.reshape(-1)]
        log_expected = np.log(np.maximum(expected, 0.0) + eps)
        residuals = np.log(np.maximum(values, 0.0) + eps) - log_expected
        weights = self._weights(ends) * counts
        now = float(ends[-1])
        days = (ends - now) / 86400.0
        trend = _day_trend(days, residuals, weights, counts, self.window_s)
        line = trend.intercept + trend.slope * days
        errors = residuals - line
        order = np.argsort(errors, kind="stable")
        return Fit(now, eps, trend, errors[order], np.cumsum(weights[order]), ends, values, errors,
                   log_expected + line, weights, counts)

    def _weights(self, ends: np.ndarray) -> np.ndarray:
        weights = np.ones(ends.size)
        if math.isfinite(self.drift_at):
            before = ends < self.drift_at
            after = int((~before).sum())
            weights[before] = 0.0 if after >= WINDOWS_TO_FORGET_DRIFT else OLD_WEIGHT_AFTER_DRIFT
        return weights

    def forecast(self, start: float, horizon_s: float, fit: Fit | None = None) -> Forecast | None:
        """What the model expects, hour by hour, over ``horizon_s`` from ``start`` (None: nothing seen)."""
        fit = fit or self.fit()
        if fit is None:
            return None
        centres = start + HOUR_S * (np.arange(max(int(horizon_s // HOUR_S), 1)) + 0.5)
        expected = np.array([self.baseline.estimate(t)[1] for t in centres])
        ahead = (centres - fit.now) / 86400.0
        log_level = np.log(np.maximum(expected, 0.0) + fit.eps) + fit.trend.intercept + fit.trend.slope * ahead
        # How far the horizon's level may be from the forecast: the floor, and the trend's error
        # where it is extrapolated (at the horizon's middle).
        spread = math.sqrt(LEVEL_SD ** 2 + (fit.trend.slope_se * (float(ahead.mean()) - fit.trend.mean_day)) ** 2)
        return Forecast(fit, log_level, horizon_s, spread)

    def hourly_rates(self, threshold: float, forecast: Forecast, shift: float | np.ndarray = 0.0) -> np.ndarray:
        """The predicted share of windows on the wrong side of ``threshold`` in each hour (the
        forecast's level moved by ``shift``, on the log scale; a column of shifts gives a row of
        hours for each)."""
        fit = forecast.fit
        # A window crosses when its error is beyond the level's distance from the forecast.
        return self._beyond(fit, math.log(max(threshold, 0.0) + fit.eps) - forecast.log_level - shift)

    def _beyond(self, fit: Fit, distance: np.ndarray) -> np.ndarray:
        """The weighted share of the fit's errors on the wrong side of each ``distance``."""
        if self.direction == "above":
            return 1.0 - _share_before(fit, np.searchsorted(fit.errors, distance, side="right"))
        return _share_before(fit, np.searchsorted(fit.errors, distance, side="left"))

    def predict(self, threshold: float, forecast: Forecast) -> Prediction:
        """The violation rate of ``threshold`` over the forecast's horizon, with its prediction
        interval (``rate_interval``: beta-binomial in effective windows, ``crossing_inflation``,
        mixed over the horizon's level, normal with sd ``forecast.spread``)."""
        fit = forecast.fit
        rates = self.hourly_rates(threshold, forecast, forecast.spread * LEVEL_NODES[:, None]).mean(axis=1)
        inflation = self.crossing_inflation(threshold, fit)
        history = float(fit.cumulative[-1])
        low, high = rate_interval(rates, inflation, history, forecast.horizon_s / self.window_s, self.alpha)
        rate = float(np.mean(self.hourly_rates(threshold, forecast)))
        return Prediction(rate, low, high, self.window_s,
                          {"kind": "beta_binomial", "rates": rates.tolist(), "inflation": float(inflation),
                           "history_windows": history})

    def crossing_inflation(self, threshold: float, fit: Fit) -> float:
        """``batch_inflation`` of the history's crossings of ``threshold`` against the model's own
        in-sample rates."""
        weighted = fit.weights_by_time > 0
        expected = self._beyond(fit, math.log(max(threshold, 0.0) + fit.eps) - fit.level_by_time[weighted])
        values = fit.values[weighted]
        crossed = values > threshold if self.direction == "above" else values < threshold
        return batch_inflation(fit.ends[weighted], crossed, expected, self.window_s, self.alpha,
                               fit.counts_by_time[weighted])

    def level_for(self, rate: float, forecast: Forecast) -> float:
        """The level whose predicted violation rate is ``rate`` (bisection: the rate is monotone)."""
        values = forecast.fit.values
        low, high = float(values.min()), float(values.max())
        span = max(high - low, abs(high), 1e-9)
        low, high = low - span, high + span
        for _ in range(60):
            middle = (low + high) / 2
            predicted = float(np.mean(self.hourly_rates(middle, forecast)))
            if (predicted > rate) == (self.direction == "above"):
                low = middle
            else:
                high = middle
        return (low + high) / 2

    @staticmethod
    def lasting(since: float, fit: Fit | None) -> bool:
        """Whether a change detected at ``since`` has lasted in ``fit`` (asked ``LASTING_AFTER_S``
        after it, longer than incidents last): the median error of the windows since differs from
        the median before by at least 10%, and significantly (Mann-Whitney U, p < 0.001)."""
        if fit is None:
            return False
        after = fit.ends >= since
        if after.all() or not after.any():
            return False
        since_errors, before_errors = fit.errors_by_time[after], fit.errors_by_time[~after]
        if abs(np.median(since_errors) - np.median(before_errors)) < math.log1p(LASTING_SHIFT):
            return False
        return bool(stats.mannwhitneyu(since_errors, before_errors).pvalue < LASTING_P)

    def unusual(self, fit: Fit | None, windows: int = UNUSUAL_WINDOWS) -> bool:
        """Whether the newest ``windows`` windows of ``fit`` are all beyond the 99th percentile (on
        the policy's side) of what the baseline and the trend leave: an incident, by the model's
        measure."""
        if fit is None or fit.ends.size <= windows:
            return False
        newest = fit.errors_by_time[-windows:]
        if self.direction == "above":
            return bool(np.all(newest > np.quantile(fit.errors_by_time, 1 - UNUSUAL_SHARE)))
        return bool(np.all(newest < np.quantile(fit.errors_by_time, UNUSUAL_SHARE)))

    # --- state ----------------------------------------------------------------

    def to_state(self) -> dict:
        """Everything but the history's complete chunks (``chunk``): the baseline, the windows since
        each ring's newest chunk boundary, and the counters."""
        recent_ends, recent_values = self.recent.open_part()
        older_ends, older_values = self.older.open_part()
        return {"v": MODEL_VERSION, "direction": self.direction, "window_s": self.window_s,
                "baseline": base64.b64encode(self.baseline.to_state()).decode(),
                "open_ends": base64.b64encode(recent_ends).decode(),
                "open_values": base64.b64encode(recent_values).decode(),
                "older_seen": self.older.count, "older_open_ends": base64.b64encode(older_ends).decode(),
                "older_open_values": base64.b64encode(older_values).decode(),
                "seen": self.seen, "drift_at": None if math.isnan(self.drift_at) else self.drift_at,
                "alpha": self.alpha, "daily": self.daily}

    def completed_chunks(self) -> list[int]:
        """The keys (``chunk``) of the chunks the last update completed."""
        return self._moved(self.recent.completed_chunk(), self.older.completed_chunk())

    def expired_chunks(self) -> list[int]:
        """The keys of the chunks whose windows the last update put out of the history."""
        return self._moved(self.recent.expired_chunk(), self.older.expired_chunk())

    def _moved(self, recent: int | None, older: int | None) -> list[int]:
        """The keys of ``recent`` and ``older`` chunks, of the rings the last update moved."""
        moved_recent, moved_older = self._pushed
        return [*([recent] if moved_recent and recent is not None else []),
                *([_older_key(older)] if moved_older and older is not None else [])]

    def chunk(self, key: int) -> bytes:
        """The persisted form of a complete chunk: of the recent ring from window ``key`` on, or,
        for a negative key ``-1 - n``, of the older ring from its window ``n`` on."""
        ring, first = (self.recent, key) if key >= 0 else (self.older, _older_key(key))
        return _CHUNK_HEAD.pack(MODEL_VERSION, key) + ring.chunk(first)

    def chunks(self) -> dict[int, bytes]:
        """Every complete chunk still in the history, by its key."""
        return {**{first: self.chunk(first) for first in self.recent.chunk_firsts()},
                **{_older_key(first): self.chunk(_older_key(first)) for first in self.older.chunk_firsts()}}

    @classmethod
    def from_state(cls, state: dict, chunks: dict[int, bytes]) -> ThresholdModel:
        """The model of ``to_state`` and the chunks persisted until then (one written later, or
        missing, is left out: a missing one leaves a gap in the history). Version 1 had no older
        history and no one-day check."""
        if state.get("v") not in (1, MODEL_VERSION):
            raise ValueError(f"unsupported threshold model state version {state.get('v')!r} "
                             f"(this version reads 1 and {MODEL_VERSION})")
        model = cls(state["direction"], state["window_s"])
        model.baseline = SeasonalBaseline.from_state(base64.b64decode(state["baseline"]))
        model.alpha, daily = float(state["alpha"]), state.get("daily")
        if daily is not None:  # its level is null (NaN in JSON) on a day without a prediction
            daily = [math.nan if i == 1 and x is None else x for i, x in enumerate(daily)]
            if not (len(daily) == 6 and all(isinstance(x, int | float) for x in daily)):
                raise ValueError(f"a threshold model's one-day check is 6 numbers, not {state['daily']!r}")
        model.daily = daily
        model.drift_at = math.nan if state["drift_at"] is None else state["drift_at"]
        bodies: dict[int, bytes] = {}
        for key, saved in chunks.items():  # one unreadable (cut, another version) is a gap, as one lost
            if len(saved) >= _CHUNK_HEAD.size and _CHUNK_HEAD.unpack_from(saved) in ((1, key), (MODEL_VERSION, key)):
                bodies[key] = saved[_CHUNK_HEAD.size:]
        model.recent = WindowRing.restore(
            HISTORY, state["seen"], base64.b64decode(state["open_ends"]), base64.b64decode(state["open_values"]),
            {key: body for key, body in bodies.items() if key >= 0})
        model.older = WindowRing.restore(
            model.older.capacity, state.get("older_seen", 0), base64.b64decode(state.get("older_open_ends", "")),
            base64.b64decode(state.get("older_open_values", "")),
            {_older_key(key): body for key, body in bodies.items() if key < 0})
        return model


def older_history(window_s: float) -> tuple[int, int]:
    """One in how many windows before the recent ``HISTORY`` the model keeps, and how many it keeps
    (at most ``OLDER``, a multiple of ``CHUNK``), so that what it learns from spans ``SPAN_S``:
    five-minute windows keep one in two, one-minute windows one in 14, ten-second ones one in 91."""
    before = math.ceil(SPAN_S / window_s) - HISTORY
    if before <= 0:
        return 1, 0
    stride = math.ceil(before / OLDER)
    return stride, math.ceil(before / stride / CHUNK) * CHUNK


def _older_key(number: int) -> int:
    """A chunk key of the older ring from its first window's number, and back: ``-1 - n``."""
    return -1 - number


@dataclass(frozen=True)
class Forecast:
    fit: Fit
    log_level: np.ndarray  # per hour of the horizon: log(baseline + eps) + trend
    horizon_s: float
    spread: float  # sd of the horizon's level about ``log_level`` (log scale)


@dataclass(frozen=True)
class Trend:
    intercept: float  # at the newest window
    slope: float  # per day; 0 unless significant
    slope_se: float  # 0 without a slope
    mean_day: float  # the mean day of the line's fit, from the newest window (negative)


@dataclass(frozen=True)
class Fit:
    now: float  # the newest window's end
    eps: float
    trend: Trend
    errors: np.ndarray  # sorted
    cumulative: np.ndarray  # their weights, summed in that order
    ends: np.ndarray
    values: np.ndarray
    errors_by_time: np.ndarray  # the errors, oldest window first
    level_by_time: np.ndarray  # each window's expected log level: baseline and trend
    weights_by_time: np.ndarray
    counts_by_time: np.ndarray  # the windows each stands for: ``stride`` for the older ones, else 1


def _hour_centres(ends: np.ndarray) -> np.ndarray:
    return np.floor(ends / HOUR_S) * HOUR_S + HOUR_S / 2


def _day_trend(days: np.ndarray, residuals: np.ndarray, weights: np.ndarray, counts: np.ndarray,
               window_s: float) -> Trend:
    """The line through the residuals: their weighted mean, and a slope only where the means of
    whole days (at least half a day's windows each, at least ``TREND_MIN_DAYS``) have one at 1%
    (Student's t on the days: autocorrelation within a day and levels that move day to day do not
    make a spurious slope significant, as they do in a test of windows taken one by one)."""
    total = weights.sum()
    if total <= 0:
        return Trend(0.0, 0.0, 0.0, 0.0)
    mean = float((weights * residuals).sum() / total)
    day = np.floor(days).astype(np.int64)
    day -= day.min()
    full = np.bincount(day, counts * (weights > 0)) >= 0.5 * 86400 / window_s
    if full.sum() < TREND_MIN_DAYS:
        return Trend(mean, 0.0, 0.0, 0.0)
    day_weight = np.bincount(day, weights)[full]
    day_mean = np.bincount(day, weights * residuals)[full] / day_weight
    day_centre = np.bincount(day, weights * days)[full] / day_weight
    line = stats.linregress(day_centre, day_mean)
    if not line.pvalue < TREND_P:
        return Trend(mean, 0.0, 0.0, 0.0)
    return Trend(float(line.intercept), float(line.slope), float(line.stderr), float(day_centre.mean()))


def _share_before(fit: Fit, positions: np.ndarray) -> np.ndarray:
    """The weighted share of the sorted errors before each position."""
    return np.where(positions > 0, fit.cumulative[np.maximum(positions - 1, 0)], 0.0) / fit.cumulative[-1]


# Gauss-Hermite nodes and weights of a standard normal: the horizon's level offsets, in sds.
LEVEL_NODES, _LEVEL_WEIGHTS = np.polynomial.hermite_e.hermegauss(9)
_LEVEL_WEIGHTS = _LEVEL_WEIGHTS / _LEVEL_WEIGHTS.sum()


def batch_inflation(ends: np.ndarray, crossed: np.ndarray, expected: np.ndarray, window_s: float,
                    alpha: float, counts: np.ndarray | None = None) -> float:
    """How many times the variance of independent windows a level's crossings have when summed
    over whole days (hours while the history is under three days), against their ``expected``
    rates: autocorrelation, day-to-day levels and incidents all widen it (batch means; at least
    1). A window that stands for ``counts`` windows (one kept in so many) counts so many times,
    less the binomial noise that keeping one in so many adds. The estimate is times the square of
    ``t / z`` at the number of days, for it is made from few."""
    if ends.size < 3:
        return 1.0
    counts = np.ones(ends.size) if counts is None else counts
    batch_s = 86400 if ends[-1] - ends[0] >= 3 * 86400 else HOUR_S
    batch = ((ends - window_s) // batch_s).astype(np.int64)
    batch -= batch.min()
    full = np.bincount(batch, counts) >= 0.5 * batch_s / window_s
    if full.sum() < 2:
        return 1.0
    variance = expected * (1 - expected)
    deviation = np.bincount(batch, counts * (crossed - expected))[full]
    sampling = np.bincount(batch, (counts ** 2 - counts) * variance)[full].sum()
    binomial = np.bincount(batch, counts * variance)[full].sum()
    if binomial <= 0:
        return 1.0
    small_sample = (stats.t.ppf(1 - alpha / 2, full.sum() - 1) / stats.norm.ppf(1 - alpha / 2)) ** 2
    return max(1.0, float(((deviation ** 2).sum() - sampling) / binomial * small_sample))


def rate_interval(rates: np.ndarray, inflation: float, history_windows: float, horizon_windows: float,
                  alpha: float) -> tuple[float, float]:
    """The ``1 - alpha`` prediction interval of a horizon's violation rate. Counted in effective
    windows (each ``inflation`` windows), the horizon's crossings are beta-binomial: the rate's
    Jeffreys posterior from the history's effective windows, then the horizon's own sampling;
    mixed over the rates at the level offsets ``LEVEL_NODES``. Its quantiles are whole counts, so
    a horizon that may well cross nothing gets a lower end of 0."""
    history_n = max(history_windows / inflation, 1.0)
    horizon_n = max(round(horizon_windows / inflation), 1)
    a, b = rates * history_n + 0.5, (1 - rates) * history_n + 0.5
    # Counts outside the rates' 1e-9 tails (with a margin for the horizon's own sampling) hold no
    # mass that matters: left out, a week of ten-second windows costs milliseconds, not a quarter
    # of a second.
    least, most = float(stats.beta.ppf(1e-9, a, b).min()), float(stats.beta.ppf(1 - 1e-9, a, b).max())
    bottom = max(0, math.floor(horizon_n * least - 10 * math.sqrt(horizon_n * least + 1) - 10))
    top = min(horizon_n, math.ceil(horizon_n * most + 10 * math.sqrt(horizon_n * most + 1) + 10))
    counts = np.arange(bottom, top + 1)
    pmf = stats.betabinom.pmf(counts[:, None], horizon_n, a[None, :], b[None, :]) @ _LEVEL_WEIGHTS
    cdf = np.cumsum(pmf)
    low, high = bottom + np.searchsorted(cdf, [alpha / 2, 1 - alpha / 2 - 1e-12])
    return float(min(low, horizon_n) / horizon_n), float(min(high, horizon_n) / horizon_n)


def p_value(predictive: dict, windows: int, crossed: int) -> float:
    """Two-sided mid-p of ``crossed`` of ``windows`` under a prediction's predictive distribution
    (``rate_interval``'s mixture, counted in its effective windows): uniform for a model that
    predicts well, so a fleet's p-values can be judged together (``recommend.benjamini_hochberg``)."""
    inflation = predictive["inflation"]
    rates = np.clip(np.asarray(predictive["rates"], dtype=np.float64), 0.0, 1.0)
    history_n = max(predictive["history_windows"] / inflation, 1.0)
    horizon_n = max(round(windows / inflation), 1)
    count = min(round(crossed / inflation), horizon_n)
    a, b = rates * history_n + 0.5, (1 - rates) * history_n + 0.5
    below = float(stats.betabinom.cdf(count - 1, horizon_n, a, b) @ _LEVEL_WEIGHTS)
    at = float(stats.betabinom.pmf(count, horizon_n, a, b) @ _LEVEL_WEIGHTS)
    above = float(stats.betabinom.sf(count, horizon_n, a, b) @ _LEVEL_WEIGHTS)  # not 1 - the rest: rounding
    return float(min(1.0, max(0.0, 2 * min(below + at / 2, above + at / 2))))
