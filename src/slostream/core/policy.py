"""Threshold policies: the classic warning/critical watch on one aggregate.

A level change needs ``consecutive`` closed windows in a row at the new level,
both into a breach and out of it, so one noisy window neither pages nor
clears a page.

>>> from slostream.core.objectives import Policy
>>> watch = PolicyWatch(Policy("p99", "api", "latency_ms", "p99", 60, "above", 300.0, 500.0, consecutive=2))
>>> [watch.observe(v) for v in (350.0, 360.0, 600.0, 100.0, 90.0)]
[None, ('ok', 'warning'), None, None, ('warning', 'ok')]
"""

from __future__ import annotations

from .alerts import Condition
from .buckets import Aggregate
from .calibration import CALIBRATION_AGGREGATES
from .objectives import Policy

BREACH_ALERT = "ThresholdBreach"
QUANTILE_OF = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}


def aggregate_value(agg: Aggregate, aggregate: str) -> float | None:
    if aggregate in QUANTILE_OF:
        return agg.quantile(QUANTILE_OF[aggregate])
    if aggregate == "throughput":
        return agg.throughput_per_s
    if aggregate in CALIBRATION_AGGREGATES:
        return None if agg.calibration is None else agg.calibration[aggregate]
    return getattr(agg, aggregate)


class PolicyWatch:
    """Level state of one policy on one series."""

    def __init__(self, policy: Policy):
        self.policy = policy
        self.level = "ok"
        self.candidate: str | None = None
        self.streak = 0
        self.last_value: float | None = None
        self.evaluated_until = 0

    def observe(self, value: float | None) -> tuple[str, str] | None:
        """Feed one closed window's value; return (old, new) when the level changes."""
        self.last_value = value
        level = self.policy.level(value)
        if level is None:
            return None
        if level == self.level:
            self.candidate, self.streak = None, 0
            return None
        if level == self.candidate:
            self.streak += 1
        else:
            self.candidate, self.streak = level, 1
        if self.streak < self.policy.consecutive:
            return None
        previous, self.level = self.level, level
        self.candidate, self.streak = None, 0
        return previous, level

    def conditions(self, series_labels: dict[str, str]) -> list[Condition]:
        p = self.policy
        labels = {**series_labels, "alertname": BREACH_ALERT, "service": p.service, "policy": p.name}
        value = "n/a" if self.last_value is None else f"{self.last_value:g}"
        out = []
        for severity in ("warning", "critical"):
            limit = getattr(p, severity)
            if limit is None:
                continue
            notes = {
                "summary": f"{p.service} {p.metric} {p.aggregate} is {value} ({severity} {p.direction} {limit:g})",
                "description": f"Policy {p.name}: {p.aggregate} of {p.metric} over {p.window_s}s windows is "
                               f"{value}, {severity} when {p.direction} {limit:g} for {p.consecutive} window(s).",
                "value": value,
            }
            if p.runbook_url:
                notes["runbook_url"] = p.runbook_url
            out.append(Condition({**labels, "severity": severity}, self.level == severity, notes))
        return out

    def to_state(self) -> dict:
        return {"level": self.level, "candidate": self.candidate, "streak": self.streak,
                "last_value": self.last_value, "evaluated_until": self.evaluated_until}

    @classmethod
    def from_state(cls, policy: Policy, state: dict) -> PolicyWatch:
        watch = cls(policy)
        watch.level = state["level"]
        watch.candidate = state["candidate"]
        watch.streak = state["streak"]
        watch.last_value = state["last_value"]
        watch.evaluated_until = state["evaluated_until"]
        return watch
