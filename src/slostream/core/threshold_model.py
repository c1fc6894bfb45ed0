"""An online model of one watched aggregate (a policy's p95 over 5 minutes, say): what the series
really achieves, hour of week by hour of week, and so how often any level would be crossed.

Each closed window's value is learned three ways:

- a **seasonal baseline** (``SeasonalBaseline``: decayed means by hour of week, by hour of day
  before two weeks are seen);
- a **trend**: a weighted least-squares line through the residuals of the retained windows
  against the baseline, kept only where its slope is significant (|t| >= 2);
- the **residuals**: what the baseline and the trend leave, on a log scale
  (``log(value + eps) - log(baseline + eps)``, ``eps`` 1% of the median value, so ratios like
  0.0 still have one), as an empirical distribution. No shape is assumed.

A value forecast for hour ``h`` is ``baseline(h) * exp(trend(h) + e)`` for each retained
residual ``e``: the predicted violation rate of a level is the weighted share of those on the
wrong side, averaged over the hours of the horizon.

The interval of that rate is a Jeffreys (beta) interval whose sample size is the smaller of what
the horizon and the history hold, each shrunk by the autocorrelation of crossings (windows in a
row over a level are not independent): ``n (1 - rho) / (1 + rho)``. Its miscoverage ``alpha``
starts at 5% and is recalibrated by adaptive conformal inference (Gibbs and Candès, 2021) each
time a prediction is scored against what happened (``recalibrate``).

A drift detection on the series whose change has lasted (``lasting``: six hours after it, the
windows since differ from those before by 10% or more, which an incident that has ended does
not) makes the model weigh recent data more (``drifted``): windows before the change count a
fifth, and not at all once 288 windows have been seen after it.

The values and end times of the last ``HISTORY`` windows are kept (float32 and uint32: 27 kB),
so backtests are exact over that history. State is JSON with a version (``to_state``), without
the history's complete chunks of ``CHUNK`` windows: each is persisted once, when it fills
(``chunk``), so what a series writes every minute stays small.

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
from array import array
from dataclasses import dataclass

import numpy as np
from scipy import stats

from .seasonal import SeasonalBaseline

MODEL_VERSION = 1
HISTORY = 3400  # windows retained: 11.8 days of 5-minute windows
CHUNK = 200  # windows per persisted chunk of the history (HISTORY is a multiple)
_CHUNK_HEAD = struct.Struct("<BQ")  # version, the number of its first window
TARGET_MISCOVERAGE = 0.05
ACI_STEP = 0.02  # gamma of adaptive conformal inference
OLD_WEIGHT_AFTER_DRIFT = 0.2
WINDOWS_TO_FORGET_DRIFT = 288
EPS_SHARE = 0.01
HOUR_S = 3600
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

    __slots__ = ("direction", "window_s", "baseline", "_ends", "_values", "seen", "drift_at", "alpha")

    def __init__(self, direction: str, window_s: int):
        if direction not in ("above", "below"):
            raise ValueError(f"direction must be 'above' or 'below', not {direction!r}")
        self.direction = direction
        self.window_s = window_s
        self.baseline = SeasonalBaseline()
        # Window end times and values: window number n (counted from 0) is at slot n % HISTORY. An
        # end of 0 marks a slot whose persisted chunk was not found at a restore.
        self._ends = array("I")
        self._values = array("f")
        self.seen = 0
        self.drift_at = math.nan  # event time of the last detected change
        self.alpha = TARGET_MISCOVERAGE

    # --- learning -------------------------------------------------------------

    def update(self, end: float, value: float | None) -> None:
        """One closed window's value (None or NaN: the window had none, skipped)."""
        if value is None or not math.isfinite(value):
            return
        self.baseline.update(end, value)
        if len(self._ends) < HISTORY:
            self._ends.append(int(end))
            self._values.append(value)
        else:
            slot = self.seen % HISTORY
            self._ends[slot], self._values[slot] = int(end), value
        self.seen += 1

    def drifted(self, changed_at: float) -> None:
        """A drift detection: weigh the windows since ``changed_at`` more (see the module)."""
        self.drift_at = changed_at

    def recalibrate(self, covered: bool) -> None:
        """Adaptive conformal inference: a scored prediction whose interval held (or not) moves
        the miscoverage the next intervals use toward the 5% target in practice."""
        self.alpha = min(max(self.alpha + ACI_STEP * (TARGET_MISCOVERAGE - (0.0 if covered else 1.0)), 0.001), 0.25)

    # --- reading --------------------------------------------------------------

    def history(self) -> tuple[np.ndarray, np.ndarray]:
        """The retained windows' end times and values, oldest first."""
        slots = self._slots(max(0, self.seen - HISTORY), self.seen)
        ends = np.frombuffer(self._ends, dtype=np.uint32)[slots].astype(np.float64)
        values = np.frombuffer(self._values, dtype=np.float32)[slots].astype(np.float64)
        known = ends > 0
        return ends[known], values[known]

    @staticmethod
    def _slots(first: int, stop: int) -> np.ndarray:
        return np.arange(first, stop) % HISTORY

    @property
    def span_s(self) -> float:
        ends, _ = self.history()
        return float(ends[-1] - ends[0]) if ends.size else 0.0

    def fit(self) -> Fit | None:
        """The trend and residuals of the retained windows against today's baseline."""
        ends, values = self.history()
        if ends.size < 2:
            return None
        eps = EPS_SHARE * max(float(np.median(np.abs(values))), 1e-12)
        hours, at_hour = np.unique(_hour_centres(ends), return_inverse=True)  # a baseline read per hour
        expected = np.array([self.baseline.estimate(t)[1] for t in hours.tolist()])[at_hour.reshape(-1)]
        residuals = np.log(np.maximum(values, 0.0) + eps) - np.log(np.maximum(expected, 0.0) + eps)
        weights = self._weights(ends)
        now = float(ends[-1])
        days = (ends - now) / 86400.0
        intercept, slope = _weighted_line(days, residuals, weights)
        errors = residuals - (intercept + slope * days)
        order = np.argsort(errors, kind="stable")
        return Fit(now, eps, intercept, slope, errors[order], np.cumsum(weights[order]), ends, values, errors)

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
        trend = fit.intercept + fit.slope * (centres - fit.now) / 86400.0
        return Forecast(fit, np.log(np.maximum(expected, 0.0) + fit.eps) + trend, horizon_s)

    def hourly_rates(self, threshold: float, forecast: Forecast) -> np.ndarray:
        """The predicted share of windows on the wrong side of ``threshold`` in each hour."""
        fit = forecast.fit
        # A window crosses when its error is beyond the level's distance from the forecast.
        distance = math.log(max(threshold, 0.0) + fit.eps) - forecast.log_level
        if self.direction == "above":
            return 1.0 - _share_before(fit, np.searchsorted(fit.errors, distance, side="right"))
        return _share_before(fit, np.searchsorted(fit.errors, distance, side="left"))

    def predict(self, threshold: float, forecast: Forecast) -> Prediction:
        """The violation rate of ``threshold`` over the forecast's horizon, with its interval."""
        fit = forecast.fit
        rate = float(np.mean(self.hourly_rates(threshold, forecast)))
        crossed = fit.values > threshold if self.direction == "above" else fit.values < threshold
        shrink = _independent_share(crossed)
        history_n = float(fit.cumulative[-1]) * shrink
        horizon_n = forecast.horizon_s / self.window_s * shrink
        n = 1.0 / (1.0 / max(history_n, 1.0) + 1.0 / max(horizon_n, 1.0))
        low, high = stats.beta.ppf([self.alpha / 2, 1 - self.alpha / 2], rate * n + 0.5, (1 - rate) * n + 0.5)
        return Prediction(rate, float(low), float(high), self.window_s)

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
        the newest chunk boundary, and the counters."""
        open_first = self.seen - self.seen % CHUNK
        slots = self._slots(open_first, self.seen)
        ends = np.frombuffer(self._ends, dtype=np.uint32)[slots]
        values = np.frombuffer(self._values, dtype=np.float32)[slots]
        return {"v": MODEL_VERSION, "direction": self.direction, "window_s": self.window_s,
                "baseline": base64.b64encode(self.baseline.to_state()).decode(),
                "open_ends": base64.b64encode(ends.tobytes()).decode(),
                "open_values": base64.b64encode(values.tobytes()).decode(),
                "seen": self.seen, "drift_at": None if math.isnan(self.drift_at) else self.drift_at,
                "alpha": self.alpha}

    def completed_chunk(self) -> int | None:
        """The number of the first window of the chunk the newest window completed (None: none)."""
        return self.seen - CHUNK if self.seen and self.seen % CHUNK == 0 else None

    def chunk(self, first: int) -> bytes:
        """The persisted form of the complete chunk of windows ``first`` to ``first + CHUNK``."""
        slots = self._slots(first, first + CHUNK)
        return (_CHUNK_HEAD.pack(MODEL_VERSION, first) + np.frombuffer(self._ends, dtype=np.uint32)[slots].tobytes()
                + np.frombuffer(self._values, dtype=np.float32)[slots].tobytes())

    def chunks(self) -> dict[int, bytes]:
        """Every complete chunk still in the history, by its first window's number. The oldest may
        begin with slots the newest windows have taken since; a restore puts those back after it."""
        open_first = self.seen - self.seen % CHUNK
        return {first: self.chunk(first) for first in range(max(0, open_first - HISTORY), open_first, CHUNK)}

    @classmethod
    def from_state(cls, state: dict, chunks: dict[int, bytes]) -> ThresholdModel:
        """The model of ``to_state`` and the chunks persisted until then (one written later, or
        missing, is left out: a missing one leaves a gap in the history)."""
        if state.get("v") != MODEL_VERSION:
            raise ValueError(f"unsupported threshold model state version {state.get('v')!r} "
                             f"(this version reads {MODEL_VERSION})")
        model = cls(state["direction"], state["window_s"])
        model.baseline = SeasonalBaseline.from_state(base64.b64decode(state["baseline"]))
        model.seen, model.alpha = state["seen"], state["alpha"]
        model.drift_at = math.nan if state["drift_at"] is None else state["drift_at"]
        held = min(model.seen, HISTORY)
        ends, values = np.zeros(held, dtype=np.uint32), np.zeros(held, dtype=np.float32)
        open_first = model.seen - model.seen % CHUNK
        for first, saved in chunks.items():
            version, number = _CHUNK_HEAD.unpack_from(saved)
            if version != MODEL_VERSION:
                raise ValueError(f"unsupported threshold model chunk version {version!r} "
                                 f"(this version reads {MODEL_VERSION})")
            if number == first and first + CHUNK <= open_first and first + CHUNK > model.seen - HISTORY:
                slots = model._slots(first, first + CHUNK)
                body = saved[_CHUNK_HEAD.size:]
                ends[slots] = np.frombuffer(body[:4 * CHUNK], dtype=np.uint32)
                values[slots] = np.frombuffer(body[4 * CHUNK:], dtype=np.float32)
        slots = model._slots(open_first, model.seen)
        ends[slots] = np.frombuffer(base64.b64decode(state["open_ends"]), dtype=np.uint32)
        values[slots] = np.frombuffer(base64.b64decode(state["open_values"]), dtype=np.float32)
        model._ends, model._values = array("I", ends.tobytes()), array("f", values.tobytes())
        return model


@dataclass(frozen=True)
class Forecast:
    fit: Fit
    log_level: np.ndarray  # per hour of the horizon: log(baseline + eps) + trend
    horizon_s: float


@dataclass(frozen=True)
class Fit:
    now: float  # the newest window's end
    eps: float
    intercept: float
    slope: float  # per day
    errors: np.ndarray  # sorted
    cumulative: np.ndarray  # their weights, summed in that order
    ends: np.ndarray
    values: np.ndarray
    errors_by_time: np.ndarray  # the errors, oldest window first


def _hour_centres(ends: np.ndarray) -> np.ndarray:
    return np.floor(ends / HOUR_S) * HOUR_S + HOUR_S / 2


def _weighted_line(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """Intercept and slope of the weighted least-squares line; the slope is 0 unless |t| >= 2."""
    total = w.sum()
    if total <= 0:
        return 0.0, 0.0
    mean_x, mean_y = (w * x).sum() / total, (w * y).sum() / total
    sxx = (w * (x - mean_x) ** 2).sum()
    if sxx <= 0:
        return float(mean_y), 0.0
    slope = (w * (x - mean_x) * (y - mean_y)).sum() / sxx
    residual = y - mean_y - slope * (x - mean_x)
    n = np.count_nonzero(w)
    if n <= 2:
        return float(mean_y), 0.0
    variance = (w * residual ** 2).sum() / total * n / (n - 2)
    if abs(slope) < 2.0 * math.sqrt(variance / sxx * (total / n)):
        return float(mean_y), 0.0
    return float(mean_y - slope * mean_x), float(slope)


def _share_before(fit: Fit, positions: np.ndarray) -> np.ndarray:
    """The weighted share of the sorted errors before each position."""
    return np.where(positions > 0, fit.cumulative[np.maximum(positions - 1, 0)], 0.0) / fit.cumulative[-1]


def _independent_share(crossed: np.ndarray) -> float:
    """``(1 - rho) / (1 + rho)`` for the lag-1 autocorrelation ``rho`` of crossings (1: none)."""
    if crossed.size < 3 or crossed.all() or not crossed.any():
        return 1.0
    x = crossed.astype(np.float64)
    x = x - x.mean()
    rho = float((x[1:] * x[:-1]).sum() / (x * x).sum())
    rho = min(max(rho, 0.0), 0.99)
    return (1.0 - rho) / (1.0 + rho)
