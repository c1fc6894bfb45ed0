"""An online model of a threshold SLO (``good: {value_le: 300}`` and the like): the share of its
events that any other threshold would have judged good, hour of week by hour of week, and so the
SLO's compliance and error-budget burn under that threshold.

Each closed window of the SLO's series is learned as a histogram of its values over ``BINS``
log-spaced bins 10% wide, centred on the configured threshold (``edges``: from 0.2 to 4.95 times
it, the configured threshold an edge), with one bin below and one above:

- **by hour of week**: each hour's histogram decays by ``WEEKLY_DECAY`` a week (a half-life of
  about 2.4 weeks), so the model follows slow change; an hour with few events leans on the
  pooled histogram of all hours (``SHRINK_EVENTS`` events' worth);
- **by day**: the last ``DAYS`` days' histograms, undecayed: the spread of what each day did
  against what the model expects of it gives the interval, and the backtest is exact from them;
- **by hour**: the last ``RECENT_HOURS`` hours, to tell a change that lasted (against what the
  model expected when it was detected) from an incident.

An hour is learned whole (``update`` returns it), once a window starting ``FOLD_AFTER_S`` after its
end arrives: the windows of the SLO's several series come in an order that depends on how their
records were batched, and float32 sums do not commute, so each hour's counts are summed exactly
first (float64 sums of whole counts). A window of an hour already learned is added on its own.

The predicted violation rate of a threshold over a horizon is the event-weighted bad share of the
horizon's hours of week. Its 95% interval comes from the days: each day's residual
``r = ln((bad + 0.5) / (expected bad + 0.5))``; the horizon's rate is the prediction times
``exp(±q se)``, ``se`` the standard error of a mean of the horizon's days (lag-1 autocorrelation
of the residuals inflating it) plus that of the residuals' own mean, ``q`` Student's t at
``1 - alpha / 2``. A day's count is its binomial noise plus what moves whole days (load, deploys),
which a binomial interval on the events would miss. ``alpha`` is recalibrated by adaptive
conformal inference as scores come in (``recalibrate``).

Counts at an edge are exact to the sketches' relative accuracy (1%); between edges the cumulative
counts are interpolated linearly in the log of the threshold.

A lasting drift (``drifted``) multiplies the hourly histograms by ``OLD_WEIGHT_AFTER_DRIFT``, so the
weeks after the change soon outweigh those before.

Memory: 168 x 34 + 28 x 34 + 24 x 34 float32 counts, 30 kB.

>>> model = ComplianceModel(300.0, good_below=True, objective=0.99)
>>> rng = np.random.default_rng(3)
>>> for minute in range(4 * 7 * 1440):  # four weeks of minute windows, 60 events each
...     values = 150 * rng.lognormal(0.0, 0.3, 60)
...     _ = model.update(1_700_006_400 + 60 * minute, model.histogram(values))
>>> week = model.forecast(1_700_006_400 + 4 * 604800, 604800)
>>> prediction = model.predict(300.0, week)
>>> exact = 1 - float(stats.lognorm(0.3, scale=150).cdf(300))
>>> round(prediction.violation_rate, 4), round(exact, 4), prediction.ci_low < exact < prediction.ci_high
(0.0104, 0.0104, True)
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

MODEL_VERSION = 1
BINS = 32
BIN_WIDTH = 0.1  # in the log of the value: about 10% a bin
HOURS_OF_WEEK = 168
DAYS = 28
RECENT_HOURS = 24
WEEK_S, DAY_S, HOUR_S = 604800, 86400, 3600
WEEKLY_DECAY = 0.75
SHRINK_EVENTS = 20.0
MIN_DAY_EVENTS = 20
FOLD_AFTER_S = 3600
TARGET_MISCOVERAGE = 0.05
ACI_STEP = 0.02
OLD_WEIGHT_AFTER_DRIFT = 0.2
LASTING_SHIFT = 0.10
LASTING_P = 0.001
UNUSUAL_P = 0.01
UNUSUAL_FACTOR = 2.0


@dataclass(frozen=True)
class CompliancePrediction:
    violation_rate: float  # the share of the horizon's events judged bad
    ci_low: float
    ci_high: float
    objective: float
    # What ``p_value`` reads: the log of the interval's centre, its standard error and degrees of
    # freedom, and the floor of a rate (None: too few days to say).
    predictive: dict | None = None

    @property
    def compliance(self) -> float:
        return 1.0 - self.violation_rate

    @property
    def budget_burn(self) -> float:
        """How fast the horizon spends the error budget: 1 spends exactly the budget."""
        return self.violation_rate / (1.0 - self.objective)

    def covers(self, rate: float) -> bool:
        return self.ci_low <= rate <= self.ci_high

    def as_dict(self) -> dict:
        return {"violation_rate": self.violation_rate, "ci_low": self.ci_low, "ci_high": self.ci_high,
                "compliance": self.compliance, "budget_burn": self.budget_burn}


@dataclass(frozen=True)
class ComplianceForecast:
    """The horizon's hours: each one's expected events (its weight) and cumulative share of events
    at or below each edge."""

    start: float
    horizon_s: float
    weights: np.ndarray  # (hours,)
    below: np.ndarray  # (hours, BINS + 1): share at or below edges[k]


class ComplianceModel:
    """See the module."""

    __slots__ = ("threshold", "good_below", "objective", "edges", "hours", "hour_week", "days", "day_number",
                 "recent", "recent_hour", "open", "before_change", "seen", "first_start", "newest_end", "drift_at",
                 "alpha")

    def __init__(self, threshold: float, good_below: bool, objective: float):
        if not threshold > 0:
            raise ValueError(f"a compliance model needs a positive threshold, not {threshold!r}")
        self.threshold, self.good_below, self.objective = threshold, good_below, objective
        self.edges = threshold * np.exp(BIN_WIDTH * (np.arange(BINS + 1) - BINS // 2))
        self.hours = np.zeros((HOURS_OF_WEEK, BINS + 2), dtype=np.float32)
        self.hour_week = np.full(HOURS_OF_WEEK, -1, dtype=np.int64)  # the week each hour's row was decayed to
        self.days = np.zeros((DAYS, BINS + 2), dtype=np.float32)
        self.day_number = np.full(DAYS, -1, dtype=np.int64)
        self.recent = np.zeros((RECENT_HOURS, BINS + 2), dtype=np.float32)
        self.recent_hour = np.full(RECENT_HOURS, -1, dtype=np.int64)
        self.open: dict[int, np.ndarray] = {}  # hour number -> exact counts of an hour not learned yet
        self.before_change: np.ndarray | None = None  # ``change_detected``
        self.seen = 0  # windows taken in
        self.first_start = math.nan
        self.newest_end = math.nan
        self.drift_at = math.nan
        self.alpha = TARGET_MISCOVERAGE

    @property
    def direction(self) -> str:
        """Which side of a threshold is bad, as a policy says it: ``above`` when good is below."""
        return "above" if self.good_below else "below"

    @property
    def span_s(self) -> float:
        """Event time from the first window to the end of the newest hour learned."""
        return 0.0 if math.isnan(self.newest_end) else self.newest_end - self.first_start

    def histogram(self, values: np.ndarray) -> np.ndarray:
        """Counts of ``values`` by bin: at or below ``edges[0]``, in each ``(edges[k-1], edges[k]]``,
        above ``edges[-1]``."""
        return np.bincount(np.searchsorted(self.edges, values, side="left"), minlength=BINS + 2).astype(np.float32)

    # --- learning -------------------------------------------------------------

    def update(self, start: float, counts: np.ndarray, windows: int = 1) -> list[tuple[float, np.ndarray]]:
        """Closed windows starting at ``start`` (``windows`` of them, of several series): their
        values' ``histogram``. Returns the hours they completed (learned), as (end, counts), oldest
        first."""
        if float(counts.sum()) <= 0:
            return []
        self.seen += windows
        if math.isnan(self.first_start):
            self.first_start = start
        hour_number = int(start // HOUR_S)
        if math.isfinite(self.newest_end) and hour_number * HOUR_S < self.newest_end:
            self._learn(hour_number, counts)  # late: its hour is learned already
            return []
        held = self.open.get(hour_number)
        self.open[hour_number] = counts.astype(np.float64) if held is None else held + counts
        done = []
        for number in sorted(self.open):
            end = (number + 1) * HOUR_S
            if end + FOLD_AFTER_S > start:
                break
            hour_counts = self.open.pop(number)
            self._learn(number, hour_counts)
            self.newest_end = float(end)
            done.append((float(end), hour_counts))
        return done

    def _learn(self, hour_number: int, counts: np.ndarray) -> None:
        counts = counts.astype(np.float32)
        hour, week = hour_number % HOURS_OF_WEEK, hour_number * HOUR_S // WEEK_S
        if self.hour_week[hour] != week:
            if self.hour_week[hour] >= 0:
                self.hours[hour] *= np.float32(WEEKLY_DECAY ** (week - self.hour_week[hour]))
            self.hour_week[hour] = week
        self.hours[hour] += counts
        day = hour_number * HOUR_S // DAY_S
        slot = day % DAYS
        if self.day_number[slot] != day:
            self.days[slot], self.day_number[slot] = 0, day
        self.days[slot] += counts
        slot = hour_number % RECENT_HOURS
        if self.recent_hour[slot] != hour_number:
            self.recent[slot], self.recent_hour[slot] = 0, hour_number
        self.recent[slot] += counts

    def drifted(self, changed_at: float) -> None:
        """A lasting change: the hours learned so far weigh ``OLD_WEIGHT_AFTER_DRIFT``."""
        self.drift_at = changed_at
        self.hours *= np.float32(OLD_WEIGHT_AFTER_DRIFT)

    def recalibrate(self, covered: bool) -> None:
        """Adaptive conformal inference, as ``ThresholdModel.recalibrate``."""
        self.alpha = min(max(self.alpha + ACI_STEP * (TARGET_MISCOVERAGE - (0.0 if covered else 1.0)), 0.001), 0.25)

    # --- reading --------------------------------------------------------------

    def position(self, level: float) -> float:
        """Where ``level`` falls among the edges: k at ``edges[k]``, clamped to the covered range."""
        if level <= 0:
            return 0.0
        return min(max(math.log(level / self.threshold) / BIN_WIDTH + BINS // 2, 0.0), float(BINS))

    def counts_at_or_below(self, level: float, counts: np.ndarray) -> np.ndarray:
        """Of histograms ``counts`` (rows), the events at or below ``level``."""
        cumulative = np.cumsum(counts, axis=-1, dtype=np.float64)[..., :BINS + 1]
        return _at(cumulative, self.position(level))

    def bad_of(self, level: float, counts: np.ndarray) -> np.ndarray:
        """Of histograms ``counts`` (rows), the events ``level`` would judge bad."""
        below = self.counts_at_or_below(level, counts)
        return counts.sum(axis=-1, dtype=np.float64) - below if self.good_below else below

    def _rows(self, until: float) -> np.ndarray:
        """Each hour of week's histogram, decayed to the week of ``until``."""
        weeks = int(until // WEEK_S) - self.hour_week
        return self.hours * np.where(self.hour_week >= 0, WEEKLY_DECAY ** np.maximum(weeks, 0), 0.0)[:, None]

    def _shares_below(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each row's events and share at or below each edge, leaning on the pooled rows where few."""
        events = rows.sum(axis=1)
        cumulative = np.cumsum(rows, axis=1)[:, :BINS + 1]
        pooled = cumulative.sum(axis=0) / max(float(events.sum()), 1e-12)
        return events, (cumulative + SHRINK_EVENTS * pooled) / (events + SHRINK_EVENTS)[:, None]

    def forecast(self, start: float, horizon_s: float) -> ComplianceForecast | None:
        """The horizon of ``horizon_s`` from ``start``, hour by hour (None: no hour learned)."""
        if math.isnan(self.newest_end):
            return None
        events, below = self._shares_below(self._rows(self.newest_end))
        hours = (int(start // HOUR_S) + np.arange(max(int(horizon_s // HOUR_S), 1))) % HOURS_OF_WEEK
        weights = events[hours]
        seen = events > 0
        weights = np.where(weights > 0, weights, events[seen].mean() if seen.any() else 1.0)
        return ComplianceForecast(start, horizon_s, weights, below[hours])

    def hourly_rates(self, level: float, forecast: ComplianceForecast) -> np.ndarray:
        """The predicted bad share of each hour of the horizon."""
        below = _at(forecast.below, self.position(level))
        return 1.0 - below if self.good_below else below

    def _rate(self, level: float, forecast: ComplianceForecast) -> float:
        return float(np.average(self.hourly_rates(level, forecast), weights=forecast.weights))

    def predict(self, level: float, forecast: ComplianceForecast) -> CompliancePrediction:
        """The bad share of the horizon's events under ``level``, with its interval (see the module)."""
        rate = self._rate(level, forecast)
        residuals = self._day_residuals(level)
        horizon_days = max(forecast.horizon_s / DAY_S, 1.0)
        floor = 0.5 / max(self._recent_day_events() * horizon_days, 1.0)  # a rate of 0 still has an upper bound
        if residuals.size < 3:
            return CompliancePrediction(rate, 0.0, min(1.0, max(4 * rate, 10 * floor)), self.objective)
        rho = _lag_one(residuals)
        se = float(np.std(residuals, ddof=1)) * math.sqrt((1 + rho) / (1 - rho) / horizon_days + 1 / residuals.size)
        q = float(stats.t.ppf(1 - self.alpha / 2, residuals.size - 1))
        centre = max(rate, floor)
        low, high = centre * math.exp(-q * se), centre * math.exp(q * se)
        return CompliancePrediction(rate, min(low, rate), min(1.0, max(high, rate)), self.objective,
                                    {"kind": "log_t", "log_centre": math.log(centre), "se": float(se),
                                     "dof": int(residuals.size - 1)})

    def _recent_day_events(self) -> float:
        complete = self._complete_days()
        return float(self.days[complete].sum() / complete.size) if complete.size else 0.0

    def _complete_days(self) -> np.ndarray:
        """The slots of the days before the newest one, with events enough to judge."""
        newest = int(self.newest_end // DAY_S) if math.isfinite(self.newest_end) else -1
        slots = np.flatnonzero((self.day_number >= 0) & (self.day_number < newest))
        return slots[self.days[slots].sum(axis=1) >= MIN_DAY_EVENTS]

    def _day_residuals(self, level: float) -> np.ndarray:
        """Each complete day's log ratio of its bad events under ``level`` to what the model expects
        of that day, oldest first."""
        slots = self._complete_days()
        slots = slots[np.argsort(self.day_number[slots])]
        if not slots.size:
            return np.zeros(0)
        events, below = self._shares_below(self._rows(self.newest_end))
        position = self.position(level)
        hourly = _at(below, position)
        hourly_bad = 1.0 - hourly if self.good_below else hourly
        day_events = self.days[slots].sum(axis=1, dtype=np.float64)
        bad = self.bad_of(level, self.days[slots])
        expected = np.empty(slots.size)
        newest_week = int(self.newest_end // WEEK_S)
        for i, day in enumerate(self.day_number[slots].tolist()):
            hours = (day * 24 + np.arange(24)) % HOURS_OF_WEEK
            weights = np.where(events[hours] > 0, events[hours], 1.0)
            share = float(np.average(hourly_bad[hours], weights=weights))
            # Left out: the day is part of its hours' rows, with weight ``own``; what the others
            # expect of it is the share without it (a residual in-sample would be too small).
            own = min(day_events[i] * WEEKLY_DECAY ** (newest_week - day * DAY_S // WEEK_S) / weights.sum(), 0.9)
            share = max((share - own * bad[i] / day_events[i]) / (1 - own), 0.0)
            expected[i] = day_events[i] * share
        return np.log((bad + 0.5) / (expected + 0.5))

    def level_for(self, rate: float, forecast: ComplianceForecast) -> float:
        """The threshold whose predicted bad share is ``rate`` (bisection between the outer edges:
        the share is monotone in the threshold)."""
        low, high = 0.0, float(BINS)
        for _ in range(40):
            middle = (low + high) / 2
            predicted = float(np.average(1.0 - _at(forecast.below, middle) if self.good_below
                                         else _at(forecast.below, middle), weights=forecast.weights))
            if (predicted > rate) == self.good_below:
                low = middle
            else:
                high = middle
        return float(self.threshold * math.exp(BIN_WIDTH * ((low + high) / 2 - BINS // 2)))

    def backtest(self, level: float, span_s: float = WEEK_S) -> dict:
        """What ``level`` would have judged over the retained days of the last ``span_s`` (the UTC
        day of the newest hour learned, up to it, and the days before), exactly at the edges (to the
        sketches' accuracy): events, bad events, compliance and budget burn."""
        newest = int((self.newest_end - 1) // DAY_S) if math.isfinite(self.newest_end) else -1  # of the newest hour
        slots = np.flatnonzero((self.day_number >= 0) & (self.day_number > newest - span_s // DAY_S))
        events = float(self.days[slots].sum(dtype=np.float64))
        bad = float(self.bad_of(level, self.days[slots]).sum()) if slots.size else 0.0
        rate = bad / events if events else 0.0
        return {"days": int(slots.size), "events": round(events), "bad_events": round(bad),
                "compliance": 1.0 - rate, "budget_burn": rate / (1.0 - self.objective)}

    def change_detected(self) -> None:
        """A drift detection on one of the SLO's series: what the model expects of each hour of the
        week now, before it learns the hours after the change, is kept for ``lasting``."""
        self.before_change = self._hourly_bad().astype(np.float32)

    def lasting(self, since: float) -> bool:
        """Whether a change detected at ``since`` has lasted: the bad share at the configured
        threshold in the retained hours since differs from what the model expected of them when the
        change was detected (``change_detected``) by 10% or more, and significantly (binomial
        test, p < 0.001)."""
        if self.before_change is None:
            return False
        return self._recent_test(since, LASTING_P, True, self.before_change) is not None

    def unusual(self) -> bool:
        """An incident by the model's measure: the newest hour's bad share at the configured
        threshold is over twice what the model expects of it, significantly (binomial, p < 0.01)."""
        if math.isnan(self.newest_end):
            return False
        found = self._recent_test(self.newest_end - HOUR_S, UNUSUAL_P, False, self._hourly_bad())
        return found is not None and found > UNUSUAL_FACTOR

    def _hourly_bad(self) -> np.ndarray:
        """The expected bad share at the configured threshold of each hour of the week."""
        _, below = self._shares_below(self._rows(self.newest_end))
        at = below[:, BINS // 2]
        return 1.0 - at if self.good_below else at

    def _recent_test(self, since: float, p: float, two_sided: bool, hourly_bad: np.ndarray) -> float | None:
        """The ratio of the bad events at the threshold in the retained hours from ``since`` to what
        ``hourly_bad`` expects of them, when it differs significantly at ``p`` (and, two-sided, by at
        least ``LASTING_SHIFT``); None otherwise."""
        chosen = np.flatnonzero((self.recent_hour >= 0) & (self.recent_hour >= since // HOUR_S))
        if not chosen.size:
            return None
        counts = self.recent[chosen]
        total = float(counts.sum(dtype=np.float64))
        bad = round(float(self.bad_of(self.threshold, counts).sum()))
        expected_share = float(np.average(hourly_bad[self.recent_hour[chosen] % HOURS_OF_WEEK],
                                          weights=counts.sum(axis=1)))
        if total < 1:
            return None
        # An hour never seen bad (or never good) still expects half an event of it.
        expected_share = min(max(expected_share, 0.5 / total), 1 - 0.5 / total)
        ratio = bad / total / expected_share
        if two_sided and abs(math.log(max(ratio, 1e-12))) < math.log1p(LASTING_SHIFT):
            return None
        test = stats.binomtest(bad, round(total), expected_share, "two-sided" if two_sided else "greater")
        return ratio if test.pvalue < p else None

    def seasonality(self) -> str:
        """What the forecast reads: hours of week once a week is seen, else their pooled shares."""
        return "weekly" if (self.hour_week >= 0).all() else "pooled"

    # --- state ----------------------------------------------------------------

    def to_state(self) -> dict:
        return {"v": MODEL_VERSION, "threshold": self.threshold, "good_below": self.good_below,
                "objective": self.objective, "hours": _pack(self.hours), "hour_week": self.hour_week.tolist(),
                "days": _pack(self.days), "day_number": self.day_number.tolist(), "recent": _pack(self.recent),
                "recent_hour": self.recent_hour.tolist(),
                "open": {str(number): counts.tolist() for number, counts in sorted(self.open.items())},
                "before_change": None if self.before_change is None else _pack(self.before_change),
                "seen": self.seen, "first_start": _finite(self.first_start),
                "newest_end": _finite(self.newest_end), "drift_at": _finite(self.drift_at), "alpha": self.alpha}

    @classmethod
    def from_state(cls, state: dict) -> ComplianceModel:
        if state.get("v") != MODEL_VERSION:
            raise ValueError(f"unsupported compliance model version {state.get('v')!r} (this version reads "
                             f"{MODEL_VERSION})")
        model = cls(state["threshold"], state["good_below"], state["objective"])
        model.hours = _unpack(state["hours"], model.hours.shape)
        model.hour_week = np.array(state["hour_week"], dtype=np.int64)
        model.days = _unpack(state["days"], model.days.shape)
        model.day_number = np.array(state["day_number"], dtype=np.int64)
        model.recent = _unpack(state["recent"], model.recent.shape)
        model.recent_hour = np.array(state["recent_hour"], dtype=np.int64)
        model.open = {int(number): np.array(counts, dtype=np.float64) for number, counts in state["open"].items()}
        if state["before_change"] is not None:
            model.before_change = _unpack(state["before_change"], (HOURS_OF_WEEK,))
        model.seen, model.alpha = state["seen"], state["alpha"]
        model.first_start, model.newest_end, model.drift_at = (
            math.nan if state[name] is None else state[name] for name in ("first_start", "newest_end", "drift_at"))
        return model

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.edges, self.hours, self.hour_week, self.days, self.day_number,
                                      self.recent, self.recent_hour))


def _at(cumulative: np.ndarray, position: float) -> np.ndarray:
    """Columns of ``cumulative`` read at a fractional ``position``, linearly between neighbours."""
    low = math.floor(position)
    high = min(low + 1, cumulative.shape[-1] - 1)
    part = position - low
    return cumulative[..., low] * (1 - part) + cumulative[..., high] * part


def _lag_one(series: np.ndarray) -> float:
    """Lag-1 autocorrelation, clipped to [0, 0.9] (a negative one would narrow the interval)."""
    centred = series - series.mean()
    denominator = float(centred @ centred)
    if series.size < 3 or denominator == 0:
        return 0.0
    return min(max(float(centred[1:] @ centred[:-1]) / denominator, 0.0), 0.9)


def _pack(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f4").tobytes()).decode()


def _unpack(text: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").reshape(shape).astype(np.float32)


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value


def p_value(predictive: dict, events: int, bad: int) -> float:
    """Two-sided p of ``bad`` of ``events`` under a prediction's interval: its log is Student's t
    about the centre (``ComplianceModel.predict``); a share of 0 is read as half an event."""
    share = max(bad, 0.5) / events
    t = abs(math.log(share) - predictive["log_centre"]) / predictive["se"] if predictive["se"] > 0 else math.inf
    return float(min(1.0, 2 * stats.t.sf(t, predictive["dof"])))
