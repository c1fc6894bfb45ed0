"""Drift of every series' SLIs: a ``DriftWatch`` per aggregate its rule chooses (``SeriesDrift``),
fed each closed report window in event time, its detections as ``slostream.drift.detected``
events.

The error ratio is pooled over consecutive windows until they hold ``ERROR_RATIO_REQUESTS``
requests: at a few requests a minute, or one error in a thousand, one window's ratio is mostly 0
and now and then a large multiple of the usual, which reads as drift every few hours (seen: 20
false detections in four days at 6 requests a minute). Pooled, a point says something."""

from __future__ import annotations

import struct
from collections.abc import Iterable

from slostream.core.alerts import SEVERITIES, Condition
from slostream.core.calibration import CalibrationWeeks
from slostream.core.drift import Detection, DriftWatch
from slostream.core.drift_rules import AGGREGATE_FIELDS, DriftRule
from slostream.pipeline.alerting import Alerting
from slostream.pipeline.envelopes import drift_event
from slostream.pipeline.evaluators import Closes, Evaluator
from slostream.pipeline.series import Series
from slostream.pipeline.types import Output, PipelineConfig

STATE_VERSION = 2  # 2: bytes (1 was JSON in the series' header)
_HEAD = struct.Struct("<BqqB")  # version, pooled requests and errors, watches
# An aggregate name's size, its watch state's size, and its alert's severity (0: none firing; else
# its place in SEVERITIES, plus one).
_WATCH = struct.Struct("<BIB")
ERROR_RATIO_REQUESTS = 500
DRIFT_ALERT = "SLIDrift"


class SeriesDrift:
    __slots__ = ("pooled", "watches", "alert", "firing", "weeks", "recent")

    def __init__(self, watches: dict[str, DriftWatch], alert: str = "off", pooled: tuple[int, int] = (0, 0)):
        self.watches = watches
        self.alert = alert  # "off", or the severity each detection fires an alert with
        # Aggregates whose alert fires (until their change's cooldown ends), with its severity.
        self.firing: dict[str, str] = {}
        self.pooled = pooled  # requests and errors of the windows not yet fed to the error-ratio watch
        self.weeks: CalibrationWeeks | None = None  # weekly calibration, once a window had outcomes
        # The detections of the close being judged, for the evaluators after this one (not state:
        # what they do with a detection is in their own state).
        self.recent: list[tuple[str, Detection]] = []

    @classmethod
    def of_rule(cls, rule: DriftRule) -> SeriesDrift:
        share = rule.false_per_week / len(rule.aggregates)  # the rate asked is the series', all its watches'
        return cls({aggregate: DriftWatch(rule.detector, rule.params, rule.warmup_windows, rule.cooldown_s, share)
                    for aggregate in rule.aggregates}, rule.alert)

    def settling(self, ts: float) -> list[str]:
        """The aggregates whose detected change is still settling at event time ``ts``."""
        return [aggregate for aggregate in self.watches if self.in_progress(aggregate, ts)]

    def in_progress(self, aggregate: str, ts: float) -> bool:
        """Whether a change of ``aggregate`` detected before event time ``ts`` is still settling:
        ``ts`` is within the cooldown after it."""
        return ts < self.watches[aggregate].quiet_until

    def update(self, window: dict) -> list[tuple[str, Detection]]:
        """One closed report window (an SLI event's data): the detections it makes. An aggregate the
        window lacks (no values, or no ``ok``) is skipped."""
        found = []
        for aggregate, watch in self.watches.items():
            if aggregate == "error_ratio":
                requests, value = self._pool(window["ok"] + window["errors"], window["errors"])
            else:
                requests, value = None, window[AGGREGATE_FIELDS[aggregate]]
            if value is not None:
                detection = watch.update(float(window["window_end"]), value, requests)
                if detection is not None:
                    found.append((aggregate, detection))
        self.recent.extend(found)
        return found

    def _pool(self, requests: int, errors: int) -> tuple[int, float | None]:
        """The requests pooled and their error ratio, once they are ``ERROR_RATIO_REQUESTS``."""
        requests, errors = self.pooled[0] + requests, self.pooled[1] + errors
        if requests < ERROR_RATIO_REQUESTS:
            self.pooled = (requests, errors)
            return requests, None
        self.pooled = (0, 0)
        return requests, errors / requests

    def to_state(self) -> bytes:
        """The head, each watch (its aggregate, whether its alert fires, its state), then the weekly
        calibration's state, if any."""
        parts = [_HEAD.pack(STATE_VERSION, *self.pooled, len(self.watches))]
        for aggregate, watch in self.watches.items():
            state = watch.to_state()
            firing = SEVERITIES.index(self.firing[aggregate]) + 1 if aggregate in self.firing else 0
            parts += (_WATCH.pack(len(aggregate), len(state), firing), aggregate.encode(), state)
        if self.weeks is not None:
            parts.append(self.weeks.to_state())
        return b"".join(parts)

    @classmethod
    def from_state(cls, state: bytes, rule: DriftRule, weekly_alpha: float) -> SeriesDrift:
        """The drift of a series as saved, under its rule now: a watch the rule no longer asks for is
        dropped, one it asks for anew, with other settings, or saved by another version, starts
        afresh; another ``false_per_week`` re-aims a watch's thresholds."""
        if state[:1] != bytes((STATE_VERSION,)):
            raise ValueError(f"unsupported series drift state version {state[0] if state else None!r} "
                             f"(this version reads {STATE_VERSION})")
        fresh = cls.of_rule(rule)
        _, requests, errors, count = _HEAD.unpack_from(state)
        at = _HEAD.size
        for _ in range(count):
            name_size, state_size, firing = _WATCH.unpack_from(state, at)
            at += _WATCH.size
            aggregate = state[at:at + name_size].decode()
            saved = state[at + name_size:at + name_size + state_size]
            at += name_size + state_size
            try:
                watch = DriftWatch.from_state(saved)
            except ValueError:  # a watch of another version starts afresh, not the series
                continue
            wanted = fresh.watches.get(aggregate)
            if wanted is not None and _kept(watch.settings()) == _kept(wanted.settings()):
                if watch.false_per_week != wanted.false_per_week:
                    watch.aim(wanted.false_per_week)
                fresh.watches[aggregate] = watch
                if firing:
                    fresh.firing[aggregate] = SEVERITIES[firing - 1]
        fresh.pooled = (requests, errors)
        if at < len(state):
            fresh.weeks = CalibrationWeeks.from_state(state[at:], weekly_alpha)
        return fresh


def _kept(settings: dict) -> dict:
    """The settings a saved watch must share with its rule's to go on (another rate of false
    detections only re-aims its thresholds)."""
    return {name: value for name, value in settings.items() if name != "false_per_week"}


class DriftEvaluator(Evaluator):
    kind = "drift"

    def __init__(self, config: PipelineConfig, alerting: Alerting):
        self.rules = config.drift
        self.source = config.source
        self.alerting = alerting
        self.bins = config.calibration_bins
        self.weekly_alpha = config.calibration_weekly_alpha

    def watch(self, series: Series) -> None:
        rule = self.rules.for_series(series.service, series.metric)
        series.drift = None if rule is None else SeriesDrift.of_rule(rule)

    def status(self, series: Iterable[Series]) -> list[dict]:
        """Every change in progress: detected, its cooldown not over at its series' newest event time."""
        return [{"service": s.service, "metric": s.metric, "labels": s.labels, "aggregate": aggregate,
                 "settles_at": watch.quiet_until, "alert": s.drift.firing.get(aggregate)}
                for s in series if s.drift is not None for aggregate, watch in s.drift.watches.items()
                if s.drift.in_progress(aggregate, s.max_ts)]

    def closed(self, closes: Closes, out: Output) -> None:
        for series in closes.series:
            if series.drift is not None and series.drift.recent:
                series.drift.recent = []
        for series, window, calibration in closes.reports:
            drift = series.drift
            if drift is None:
                continue
            end = float(window["window_end"])
            conditions = []
            for aggregate, severity in sorted(drift.firing.items()):
                if not drift.in_progress(aggregate, end):  # settled: its alert resolves
                    del drift.firing[aggregate]
                    conditions.append(_condition(series, aggregate, severity, None))
            for aggregate, detection in drift.update(window):
                watch = drift.watches[aggregate]
                out.drift.append(drift_event(self.source, series, aggregate, watch.detector_name, detection))
                if drift.alert != "off":
                    conditions.append(_condition(series, aggregate, drift.alert, detection))
                    drift.firing[aggregate] = drift.alert
            if calibration is not None:
                if drift.weeks is None or drift.weeks.bins != self.bins:
                    drift.weeks = CalibrationWeeks(self.bins, self.weekly_alpha)
                for aggregate, detection in drift.weeks.update(float(window["window_start"]), calibration):
                    out.drift.append(drift_event(self.source, series, aggregate, "weekly_delta", detection))
            if conditions:
                self.alerting.evaluate(end, conditions, out)


    def alert_labels(self, series: Series) -> list[dict[str, str]]:
        firing = {} if series.drift is None else series.drift.firing
        return [_condition(series, aggregate, severity, None).labels for aggregate, severity in firing.items()]

    def series_state(self, series: Series) -> bytes | None:
        return None if series.drift is None else series.drift.to_state()

    def restore_series(self, series: Series, state: bytes) -> None:
        if series.drift is not None:
            series.drift = SeriesDrift.from_state(state, self.rules.for_series(series.service, series.metric),
                                                  self.weekly_alpha)


def _condition(series: Series, aggregate: str, severity: str, detection: Detection | None) -> Condition:
    """The drift alert of an aggregate of a series: firing at a detection, resolved (None) once the
    change has settled."""
    labels = {**series.labels, "alertname": DRIFT_ALERT, "service": series.service, "metric": series.metric,
              "aggregate": aggregate, "severity": severity}
    if detection is None:
        return Condition(labels, False)
    change = f"{detection.relative_change:+.0%}" if detection.before else "from 0"
    notes = {"summary": f"{series.service} {series.metric} {aggregate} moved {detection.direction} {change} "
                        f"({detection.before:g} to {detection.after:g})",
             "description": f"A drift detector found a lasting change of the {aggregate} of {series.metric} "
                            f"on {series.service}, starting at {detection.changed_at:.0f} (Unix seconds); the "
                            "alert resolves when its cooldown ends.",
             "value": f"{detection.after:g}"}
    return Condition(labels, True, notes)
