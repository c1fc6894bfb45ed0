"""What is watched: SLOs and threshold policies, as plain validated values.

Parsing and validation live in ``slostream.definitions``; this module holds the model
and the pure rules on it (which measurements are good, where a calendar
window starts).

>>> rule = GoodRule("value_le", 300.0)
>>> rule.flags(np.array([120.0, 300.0, 301.0, np.nan]), np.array([1, 1, 1, 1], dtype=np.int8)).tolist()
[1, 1, 0, -1]
>>> import datetime as dt
>>> start = calendar_start(dt.datetime(2026, 3, 31, 12, tzinfo=dt.timezone.utc).timestamp(), "month", "Europe/Berlin")
>>> dt.datetime.fromtimestamp(start, dt.timezone.utc).isoformat()
'2026-02-28T23:00:00+00:00'
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass, field

import numpy as np

from .budget import BurnTier
from .calibration import CALIBRATION_AGGREGATES

AGGREGATES = ("p50", "p90", "p95", "p99", "mean", "max", "error_ratio", "throughput", *CALIBRATION_AGGREGATES)


_COMPARE = {"value_le": np.less_equal, "value_lt": np.less, "value_ge": np.greater_equal, "value_gt": np.greater}


@dataclass(frozen=True)
class GoodRule:
    """``ok`` (ok == true is good) or a threshold on the value."""

    kind: str
    threshold: float | None = None

    def flags(self, values: np.ndarray, oks: np.ndarray) -> np.ndarray:
        """1 good, 0 bad, -1 nothing to judge (no ok, or no value), per measurement."""
        if self.kind == "ok":
            return oks
        good = _COMPARE[self.kind](values, self.threshold).astype(np.int8)  # NaN compares False, silently
        good[np.isnan(values)] = -1
        return good

    def describe(self) -> str:
        if self.kind == "ok":
            return "ok"
        symbol = {"value_le": "<=", "value_lt": "<", "value_ge": ">=", "value_gt": ">"}[self.kind]
        return f"{symbol} {self.threshold:g}"


class Tally:
    """Good and judged counts of any run of a batch's flags, from two running sums."""

    __slots__ = ("good", "judged")

    def __init__(self, flags: np.ndarray):
        self.good = np.concatenate(([0], np.cumsum(flags == 1)))
        self.judged = np.concatenate(([0], np.cumsum(flags >= 0)))

    def counts(self, first: int, stop: int) -> tuple[int, int]:
        """(good, judged) among flags[first:stop]."""
        return int(self.good[stop] - self.good[first]), int(self.judged[stop] - self.judged[first])


@dataclass(frozen=True)
class SloWindow:
    rolling_s: int | None = None
    calendar: str | None = None
    timezone: str = "UTC"

    @property
    def period_s(self) -> int:
        """Length used to scale burn-rate thresholds (a calendar month counts as 30 days)."""
        if self.rolling_s is not None:
            return self.rolling_s
        return {"week": 7, "month": 30, "quarter": 91}[self.calendar] * 86400

    def start(self, now: float) -> float:
        """Start of the window that holds event time ``now``."""
        if self.rolling_s is not None:
            return now - self.rolling_s
        return calendar_start(now, self.calendar, self.timezone)

    def describe(self) -> str:
        if self.rolling_s is not None:
            return f"rolling {self.rolling_s}s"
        return f"calendar {self.calendar} ({self.timezone})"


@dataclass(frozen=True)
class Timeslices:
    slice_s: int
    good_if_ratio_ge: float


@dataclass(frozen=True)
class Slo:
    name: str
    service: str
    metric: str
    objective: float
    window: SloWindow
    good: GoodRule
    budgeting: str | Timeslices = "occurrences"
    tiers: tuple[BurnTier, ...] = ()
    min_events: int = 0
    no_data_s: int | None = None
    no_data_severity: str = "ticket"
    description: str = ""
    runbook_url: str | None = None
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def counting_signature(self) -> str:
        """Changes exactly when stored counts stop meaning the same thing."""
        slices = self.budgeting if isinstance(self.budgeting, str) else (
            f"timeslices:{self.budgeting.slice_s}:{self.budgeting.good_if_ratio_ge}")
        return f"{self.service}|{self.metric}|{self.good.kind}|{self.good.threshold}|{slices}"


@dataclass(frozen=True)
class Policy:
    """A classic warning/critical threshold on one aggregate of a metric."""

    name: str
    service: str
    metric: str
    aggregate: str
    window_s: int
    direction: str  # "above": larger is worse; "below": smaller is worse
    warning: float | None
    critical: float | None
    consecutive: int = 1
    runbook_url: str | None = None
    # Bounds of the levels (``min``/``max``; 0 and 1 for ratios): no recommendation goes outside.
    min_level: float | None = None
    max_level: float | None = None

    def level(self, value: float | None) -> str | None:
        """``critical``, ``warning``, ``ok``; None when the window gives no value."""
        if value is None:
            return None
        worse = (lambda v, limit: v > limit) if self.direction == "above" else (lambda v, limit: v < limit)
        if self.critical is not None and worse(value, self.critical):
            return "critical"
        if self.warning is not None and worse(value, self.warning):
            return "warning"
        return "ok"


def calendar_start(now: float, calendar: str, timezone: str) -> float:
    """Unix time of the local midnight that starts the week (Monday), month or quarter of ``now``.

    Built from the local calendar date and resolved through the zone, so the
    boundary stays at local midnight across daylight-saving changes.
    """
    zone = zoneinfo.ZoneInfo(timezone)
    local = dt.datetime.fromtimestamp(now, zone)
    if calendar == "week":
        day = local.date() - dt.timedelta(days=local.weekday())
    elif calendar == "month":
        day = local.date().replace(day=1)
    elif calendar == "quarter":
        day = local.date().replace(month=(local.month - 1) // 3 * 3 + 1, day=1)
    else:
        raise ValueError(f"unknown calendar {calendar!r}")
    return dt.datetime(day.year, day.month, day.day, tzinfo=zone).timestamp()
