"""Which aggregates of which series drift watches, with which detector: a default and overrides
matched by service and metric glob (the first matching override wins, over the default).

>>> rules = DriftRules(overrides=(DriftRule(service="batch-*", enabled=False),))
>>> rules.for_series("batch-7", "latency_ms") is None, rules.for_series("api", "latency_ms").aggregates
(True, ('p95', 'error_ratio'))
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass, field

from .drift import DEFAULT_FALSE_PER_WEEK

# An aggregate's name, and the field of the SLI window it reads.
AGGREGATE_FIELDS = {"p50": "p50", "p90": "p90", "p95": "p95", "p99": "p99", "mean": "mean", "max": "max",
                    "error_ratio": "error_ratio", "throughput": "throughput_per_s"}


@dataclass(frozen=True)
class DriftRule:
    """The drift settings of the series it matches. In an override, a field left ``None`` keeps the
    default's."""

    service: str = "*"
    metric: str = "*"
    enabled: bool | None = True
    aggregates: tuple[str, ...] | None = ("p95", "error_ratio")
    detector: str | None = "multiscale"
    params: dict | None = field(default_factory=dict)
    warmup_windows: int | None = 120
    cooldown_s: float | None = 3600.0
    false_per_week: float | None = DEFAULT_FALSE_PER_WEEK  # what the multiscale detector's thresholds aim at
    alert: str | None = "off"  # or the severity of an alert raised by each detection, held through the cooldown

    def matches(self, service: str, metric: str) -> bool:
        return fnmatch.fnmatchcase(service, self.service) and fnmatch.fnmatchcase(metric, self.metric)

    def over(self, default: DriftRule) -> DriftRule:
        """This override's fields, the default's where it leaves them ``None``."""
        chosen = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if getattr(self, f.name) is not None and f.name not in ("service", "metric")}
        return dataclasses.replace(default, **chosen)


@dataclass(frozen=True)
class DriftRules:
    default: DriftRule = field(default_factory=DriftRule)
    overrides: tuple[DriftRule, ...] = ()

    def for_series(self, service: str, metric: str) -> DriftRule | None:
        """The rule of a series, or None where drift is off for it."""
        rule = next((o.over(self.default) for o in self.overrides if o.matches(service, metric)), self.default)
        return rule if rule.enabled and rule.aggregates else None
