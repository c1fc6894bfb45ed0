"""Error budgets and multi-window, multi-burn-rate evaluation.

The method is the Google SRE workbook's ("Alerting on SLOs", recommendation 6):
an alert tier holds when the burn rate over a long window AND over a short
window both reach the tier's threshold. The default thresholds are the
workbook's for a 30-day period, scaled to other periods the way Sloth does it:
``burn rate = budget fraction x period / long window``.

>>> [round(t.burn_rate, 2) for t in default_tiers(30 * 86400)]
[14.4, 6.0, 3.0, 1.0]
>>> round(burn_rate(bad=3, total=1000, objective=0.999), 6)
3.0
>>> round(detection_seconds(objective=0.999, burn_threshold=14.4, long_s=3600, error_ratio=1.0), 2)
51.84
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

from scipy import stats

WORKBOOK_PERIOD_S = 30 * 86400

# (severity, long window, short window, fraction of the budget the long window may burn)
WORKBOOK_TIERS = (
    ("page", 3600, 300, 0.02),
    ("page", 6 * 3600, 1800, 0.05),
    ("ticket", 86400, 2 * 3600, 0.10),
    ("ticket", 3 * 86400, 6 * 3600, 0.10),
)


@dataclass(frozen=True)
class BurnTier:
    severity: str
    long_s: int
    short_s: int
    burn_rate: float


def default_tiers(period_s: int) -> tuple[BurnTier, ...]:
    """The workbook's four tiers with thresholds scaled to an SLO period."""
    return tuple(
        BurnTier(severity, long_s, short_s, fraction * period_s / long_s)
        for severity, long_s, short_s, fraction in WORKBOOK_TIERS
    )


def burn_rate(bad: float, total: float, objective: float) -> float | None:
    """Error ratio divided by the error budget ratio; None without events."""
    if total <= 0:
        return None
    return (bad / total) / (1.0 - objective)


def detection_seconds(objective: float, burn_threshold: float, long_s: float, error_ratio: float) -> float:
    """Workbook: time for a steady ``error_ratio`` to make the long window reach the threshold."""
    return (1.0 - objective) * burn_threshold * long_s / error_ratio


@dataclass(frozen=True)
class Budget:
    """Error budget of an SLO window holding ``total`` events of which ``bad`` were bad."""

    objective: float
    total: float
    bad: float

    @property
    def sli(self) -> float | None:
        return None if self.total == 0 else 1.0 - self.bad / self.total

    @property
    def allowed_bad(self) -> float:
        return (1.0 - self.objective) * self.total

    @property
    def remaining_events(self) -> float:
        return self.allowed_bad - self.bad

    @property
    def consumed_ratio(self) -> float | None:
        return None if self.allowed_bad == 0 else self.bad / self.allowed_bad

    @property
    def remaining_ratio(self) -> float | None:
        consumed = self.consumed_ratio
        return None if consumed is None else 1.0 - consumed


@dataclass(frozen=True)
class Exhaustion:
    """Seconds until the budget is gone at the bad-event rate seen, with an interval."""

    seconds: float
    low: float
    high: float


def time_to_exhaustion(remaining_events: float, bad_in_window: int, window_s: float,
                       confidence: float = 0.9) -> Exhaustion:
    """Forecast at the current rate; the interval is the exact (Garwood) Poisson
    interval on the bad count seen in ``window_s``, turned into times.

    >>> e = time_to_exhaustion(remaining_events=100, bad_in_window=10, window_s=3600)
    >>> e.seconds
    36000.0
    >>> bool(e.low < e.seconds < e.high)
    True
    """
    if remaining_events <= 0:
        return Exhaustion(0.0, 0.0, 0.0)
    count_low, count_high = _poisson_interval(bad_in_window, confidence)
    rate_low, rate_high = count_low / window_s, count_high / window_s
    rate = bad_in_window / window_s
    return Exhaustion(
        seconds=math.inf if rate == 0 else remaining_events / rate,
        low=remaining_events / rate_high,
        high=math.inf if rate_low == 0 else remaining_events / rate_low,
    )


@functools.lru_cache(maxsize=4096)
def _poisson_interval(count: int, confidence: float) -> tuple[float, float]:
    """Exact (Garwood) interval on a Poisson mean; cached, as the chi-square quantiles cost ~0.1 ms."""
    alpha = 1.0 - confidence
    low = 0.0 if count == 0 else stats.chi2.ppf(alpha / 2, 2 * count) / 2
    return low, stats.chi2.ppf(1 - alpha / 2, 2 * count + 2) / 2


@dataclass(frozen=True)
class TierResult:
    tier: BurnTier
    long_burn: float | None
    short_burn: float | None
    long_events: float
    holds: bool
    low_traffic: bool  # suppressed: the long window held fewer than min_events


def judge_tier(tier: BurnTier, counts: Callable[[int], tuple[float, float]], objective: float,
               min_events: float = 0, lazy: bool = False) -> TierResult:
    """Whether ``tier`` holds: the burn rates over its long and its short window both reach its
    threshold, with at least ``min_events`` in the long one. ``counts(span_s)`` gives (bad, total)
    over the last ``span_s``. ``lazy`` reads the long window only when the short one reaches the
    threshold (alerting judges every tier at every base bucket; long_burn is then None)."""
    short_burn = burn_rate(*counts(tier.short_s), objective)
    short_reached = short_burn is not None and short_burn >= tier.burn_rate
    if lazy and not short_reached:
        return TierResult(tier, None, short_burn, 0.0, False, False)
    long_bad, long_total = counts(tier.long_s)
    long_burn = burn_rate(long_bad, long_total, objective)
    reached = short_reached and long_burn is not None and long_burn >= tier.burn_rate
    low_traffic = long_total < min_events
    return TierResult(tier, long_burn, short_burn, long_total, reached and not low_traffic, reached and low_traffic)


def evaluate_tiers(tiers: tuple[BurnTier, ...], counts: Callable[[int], tuple[float, float]], objective: float,
                   min_events: float = 0) -> list[TierResult]:
    """Every tier judged in full (``judge_tier``)."""
    return [judge_tier(tier, counts, objective, min_events) for tier in tiers]
