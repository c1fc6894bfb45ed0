"""The drift evaluator of one series: a ``DriftWatch`` per aggregate its rule chooses, fed each
closed report window in event time, its detections as ``slostream.drift.detected`` events.

The error ratio is pooled over consecutive windows until they hold ``ERROR_RATIO_REQUESTS``
requests: at a few requests a minute, or one error in a thousand, one window's ratio is mostly 0
and now and then a large multiple of the usual, which reads as drift every few hours (seen: 20
false detections in four days at 6 requests a minute). Pooled, a point says something."""

from __future__ import annotations

import math
import struct

from slostream.core.drift import Detection, DriftWatch
from slostream.core.drift_rules import AGGREGATE_FIELDS, DriftRule
from slostream.core.events import cloud_event, event_id

STATE_VERSION = 2  # 2: bytes (1 was JSON in the series' header)
_HEAD = struct.Struct("<BqqB")  # version, pooled requests and errors, watches
_WATCH = struct.Struct("<BI")  # an aggregate name's size, its watch state's size
ERROR_RATIO_REQUESTS = 500


class SeriesDrift:
    __slots__ = ("pooled", "watches")

    def __init__(self, watches: dict[str, DriftWatch], pooled: tuple[int, int] = (0, 0)):
        self.watches = watches
        self.pooled = pooled  # requests and errors of the windows not yet fed to the error-ratio watch

    @classmethod
    def of_rule(cls, rule: DriftRule) -> SeriesDrift:
        return cls({aggregate: DriftWatch(rule.detector, rule.params, rule.warmup_windows, rule.cooldown_s)
                    for aggregate in rule.aggregates})

    def update(self, window: dict) -> list[tuple[str, Detection]]:
        """One closed report window (an SLI event's data): the detections it makes. An aggregate the
        window lacks (no values, or no ``ok``) is skipped."""
        found = []
        for aggregate, watch in self.watches.items():
            if aggregate == "error_ratio":
                value = self._pool(window["ok"] + window["errors"], window["errors"])
            else:
                value = window[AGGREGATE_FIELDS[aggregate]]
            if value is None:
                continue
            detection = watch.update(float(window["window_end"]), value)
            if detection is not None:
                found.append((aggregate, detection))
        return found

    def _pool(self, requests: int, errors: int) -> float | None:
        requests, errors = self.pooled[0] + requests, self.pooled[1] + errors
        if requests < ERROR_RATIO_REQUESTS:
            self.pooled = (requests, errors)
            return None
        self.pooled = (0, 0)
        return errors / requests

    def to_state(self) -> bytes:
        parts = [_HEAD.pack(STATE_VERSION, *self.pooled, len(self.watches))]
        for aggregate, watch in self.watches.items():
            state = watch.to_state()
            parts += (_WATCH.pack(len(aggregate), len(state)), aggregate.encode(), state)
        return b"".join(parts)

    @classmethod
    def from_state(cls, state: bytes, rule: DriftRule) -> SeriesDrift:
        """The drift of a series as saved, under its rule now: a watch the rule no longer asks for is
        dropped, one it asks for anew, or with other settings, starts afresh."""
        if state[:1] != bytes((STATE_VERSION,)):
            raise ValueError(f"unsupported series drift state version {state[0] if state else None!r} "
                             f"(this version reads {STATE_VERSION})")
        fresh = cls.of_rule(rule)
        _, requests, errors, count = _HEAD.unpack_from(state)
        at = _HEAD.size
        for _ in range(count):
            name_size, state_size = _WATCH.unpack_from(state, at)
            at += _WATCH.size
            aggregate = state[at:at + name_size].decode()
            watch = DriftWatch.from_state(state[at + name_size:at + name_size + state_size])
            at += name_size + state_size
            if aggregate in fresh.watches and watch.settings() == fresh.watches[aggregate].settings():
                fresh.watches[aggregate] = watch
        fresh.pooled = (requests, errors)
        return fresh


def drift_event(source: str, series_key: str, service: str, metric: str, labels: dict, aggregate: str,
                detector: str, detection: Detection) -> tuple[bytes, dict]:
    """The ``slostream.drift.detected`` event of a detection, keyed by service; its id is the series,
    the aggregate and the window that made the detector fire, so a replay repeats it exactly."""
    relative = detection.relative_change
    data = {"service": service, "metric": metric, "labels": labels, "aggregate": aggregate, "detector": detector,
            "detected_at": detection.detected_at, "changed_at": detection.changed_at,
            "before": detection.before, "after": detection.after,
            "relative_change": relative if math.isfinite(relative) else None, "direction": detection.direction}
    id_ = event_id("drift", series_key, aggregate, detection.detected_at)
    return service.encode(), cloud_event("slostream.drift.detected", source, id_, detection.detected_at, data,
                                         subject=series_key)
