"""The CloudEvents slostream emits, with their keys and deterministic ids: SLI windows, breaches,
alerts, drift detections, dead letters and the audit of control commands. A replay, batched
however, makes the same ids."""

from __future__ import annotations

import base64
import hashlib
import math
from typing import Any

import numpy as np
import orjson

from slostream.core.alerts import AlertEvent
from slostream.core.buckets import COUNT, MAX, MIN, OK, OK_KNOWN, SUM, VALUES
from slostream.core.closed import Closed
from slostream.core.control import APPLIED, REFUSED, Command, CommandError
from slostream.core.drift import Detection
from slostream.core.events import cloud_event, event_id, event_id_of_text
from slostream.core.measurement import MAX_PLAUSIBLE_TS, Rejection
from slostream.core.policy import PolicyWatch
from slostream.pipeline.series import Series, held_json
from slostream.pipeline.types import PipelineConfig, SourceRecord

QUANTILE_NAMES, QUANTILE_LEVELS = ("p50", "p90", "p95", "p99"), (0.5, 0.9, 0.95, 0.99)


def sli_windows(closed: Closed, report_s: int, series_of: dict[int, Series],
                source: str) -> list[tuple[Series, dict, tuple[bytes, dict], np.ndarray | None]]:
    """The completed report windows among ``closed``: each one's series, SLI data, event, and
    calibration sums (None: no outcomes in it). Each series' newest report is kept on it
    (``last_report``, with the value count and sum that the summary on /metrics needs and the
    event does not carry)."""
    chosen = np.flatnonzero(closed.lengths == report_s)
    if not chosen.size:
        return []
    stats, quantiles = closed.stats[chosen], closed.quantiles[chosen]
    count, ok_known, ok, n_values = (stats[:, column] for column in (COUNT, OK_KNOWN, OK, VALUES))
    with np.errstate(invalid="ignore", divide="ignore"):
        error_ratio = np.where(ok_known > 0, (ok_known - ok) / ok_known, np.nan)
        mean = np.where(n_values > 0, stats[:, SUM] / n_values, np.nan)
    no_values = n_values == 0
    low, high = np.where(no_values, np.nan, stats[:, MIN]), np.where(no_values, np.nan, stats[:, MAX])
    columns = zip(chosen.tolist(), closed.owners[chosen].tolist(), closed.starts[chosen].tolist(),
                  count.astype(np.int64).tolist(), ok.astype(np.int64).tolist(),
                  (ok_known - ok).astype(np.int64).tolist(), _nullable(error_ratio),
                  (count / report_s).tolist(), _nullable(mean), _nullable(low), _nullable(high),
                  n_values.astype(np.int64).tolist(), _nullable(stats[:, SUM]), *map(_nullable, quantiles.T))
    p50, p90, p95, p99 = QUANTILE_NAMES
    windows = []
    for i, owner, start, n, good, bad, ratio, throughput, avg, lowest, highest, value_count, value_sum, q50, q90, \
            q95, q99 in columns:
        series = series_of[owner]
        end = start + report_s
        data = {"service": series.service, "metric": series.metric, "labels": series.labels,
                "window_start": start, "window_end": end, "count": n, "ok": good, "errors": bad,
                "error_ratio": ratio, "throughput_per_s": throughput, "mean": avg, "min": lowest, "max": highest,
                p50: q50, p90: q90, p95: q95, p99: q99}
        calibration = closed.calibration.get(i)
        if calibration is not None:
            data["calibration"] = calibration[0]
        series.last_report = held_json({**data, "value_count": value_count, "value_sum": value_sum})
        event = cloud_event("slostream.sli.window", source, event_id_of_text(f"sli\x1f{series.key}\x1f{start}"), end,
                            data, subject=series.key)
        sums = None if calibration is None else calibration[1]
        windows.append((series, data, (series.service.encode(), event), sums))
    return windows


def breach_event(series: Series, watch: PolicyWatch, transition: tuple[str, str], end: int,
                 source: str) -> tuple[bytes, dict]:
    policy = watch.policy
    previous, level = transition
    kind = "recovered" if level == "ok" else "started"
    data = {
        "policy": policy.name,
        "service": series.service,
        "metric": series.metric,
        "labels": series.labels,
        "aggregate": policy.aggregate,
        "direction": policy.direction,
        "warning": policy.warning,
        "critical": policy.critical,
        "consecutive": policy.consecutive,
        "level": level,
        "previous_level": previous,
        "value": watch.last_value,
        "window_start": end - policy.window_s,
        "window_end": end,
    }
    event = cloud_event(f"slostream.breach.{kind}", source, event_id("breach", policy.name, series.key, end, level),
                        end, data, subject=series.key)
    return series.service.encode(), event


def alert_envelope(alert_event: AlertEvent, started_bucket: int, at_bucket: int, source: str) -> tuple[bytes, dict]:
    """An alert event, keyed by its service. Its id names base buckets (``started_bucket``,
    ``at_bucket``): a replay after a crash, batched differently, may judge a few seconds apart within
    the bucket but repeats the same id."""
    alert = alert_event.alert
    id_ = event_id("alert", alert_event.type, alert["fingerprint"], started_bucket, at_bucket)
    event = cloud_event(f"slostream.alert.{alert_event.type}", source, id_, alert_event.time, alert,
                        subject=alert["fingerprint"])
    return alert["labels"].get("service", "").encode(), event


def drift_event(source: str, series: Series, aggregate: str, detector: str, detection: Detection) -> tuple[bytes, dict]:
    """The ``slostream.drift.detected`` event of a detection, keyed by service; its id is the series,
    the aggregate and the window that made the detector fire, so a replay repeats it exactly."""
    relative = detection.relative_change
    data = {"service": series.service, "metric": series.metric, "labels": series.labels, "aggregate": aggregate,
            "detector": detector, "detected_at": detection.detected_at, "changed_at": detection.changed_at,
            "before": detection.before, "after": detection.after,
            "relative_change": relative if math.isfinite(relative) else None, "direction": detection.direction}
    id_ = event_id("drift", series.key, aggregate, detection.detected_at)
    return series.service.encode(), cloud_event("slostream.drift.detected", source, id_, detection.detected_at, data,
                                                subject=series.key)


def recommendation_event(source: str, service: str, subject: str, data: dict) -> tuple[bytes, dict]:
    """A ``slostream.recommendation``, keyed by service; ``subject``: the series key (a policy's) or
    the SLO's name. Its id is the subject, the target, the event time it was made at and what made
    it, so a replay repeats it exactly."""
    target = data["target"]
    id_ = event_id("recommendation", subject, target["kind"], target["name"], target["level"], data["made_at"],
                   data["trigger"])
    return service.encode(), cloud_event("slostream.recommendation", source, id_, data["made_at"], data,
                                         subject=subject)


def scored_event(source: str, service: str, subject: str, data: dict) -> tuple[bytes, dict]:
    """A ``slostream.recommendation.scored``: a recommendation's predictions against its horizon,
    keyed by service; its id names the recommendation it scores."""
    target = data["target"]
    id_ = event_id("scored", subject, target["kind"], target["name"], target["level"], data["made_at"],
                   data["trigger"])
    return service.encode(), cloud_event("slostream.recommendation.scored", source, id_, data["scored_at"],
                                         data, subject=subject)


def deadletter_event(config: PipelineConfig, record: SourceRecord, rejection: Rejection) -> tuple[bytes, dict]:
    """The dead-letter event of a rejected record or array element, keyed by the reason. A record's
    letter carries the record's bytes; an element's carries that element alone, encoded as JSON
    (a record of a thousand rejected elements must not become a thousand copies of itself). Every
    field holds at most ``max_deadletter_bytes`` of the input: the bytes and the key are cut, the
    message too, and an element whose JSON is longer is left out (its first bytes are in
    ``value_b64``)."""
    element, element_bytes = _element_json(rejection.element)
    raw = (record.value or b"") if rejection.index is None else element_bytes
    limit = config.max_deadletter_bytes
    data = {
        "reason": rejection.reason.value,
        "message": cut_text(rejection.message, limit),
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "index": rejection.index,
        "timestamp": record.timestamp,
        "key_b64": None if record.key is None else base64.b64encode(record.key[:limit]).decode(),
        "value_b64": base64.b64encode(raw[:limit]).decode(),
        "value_size": len(raw),
        "value_truncated": len(raw) > limit,
        "element": element if len(element_bytes) <= limit else None,
    }
    if record.key is not None and len(record.key) > limit:
        data["key_truncated"] = True
    event = cloud_event(
        "slostream.deadletter", config.source,
        event_id("deadletter", record.topic, record.partition, record.offset, rejection.index),
        min(max(record.timestamp, 0.0), MAX_PLAUSIBLE_TS), data,  # a record's timestamp is any int64 of ms
    )
    return rejection.reason.value.encode(), event


def audit_event(config: PipelineConfig, record: SourceRecord, verdict: Command | CommandError,
                judged_at: float) -> tuple[bytes, dict]:
    """The audit event of the control record ``record``, judged at wall time ``judged_at``: applied
    or refused (with the reason). Its id is the control record's position, so however often it is
    written it is one event. A command that is no JSON object is carried as text, cut at
    ``max_deadletter_bytes`` (as every refused command is cut: the record itself may be longer)."""
    doc = verdict.doc
    applied = isinstance(verdict, Command)
    data = {
        "command_id": _string_of(doc, "id"),
        "key_id": _string_of(doc, "key_id"),
        "by": _string_of(doc, "by"),
        "command": doc,
        "raw": None,
        "reason": None if applied else verdict.reason.value,
        "message": None if applied else verdict.message,
        "topic": record.topic,
        "offset": record.offset,
        "judged_at": judged_at,
    }
    if doc is None:
        data["raw"] = _text_within((record.value or b"")[:config.max_deadletter_bytes], config.max_deadletter_bytes)
    event = cloud_event(APPLIED if applied else REFUSED, config.source,
                        event_id("command", record.topic, record.offset), judged_at, data, subject=data["command_id"])
    return (b"applied" if applied else b"refused"), event


def _string_of(doc: dict | None, name: str) -> str | None:
    value = None if doc is None else doc.get(name)
    return value if isinstance(value, str) else None
def oversized_output_event(config: PipelineConfig, topic: str, key: bytes | None, value: bytes,
                           limit: int, now: float) -> tuple[bytes, dict]:
    """The dead letter that replaces an output too large for the broker (``limit``: the producer's
    ``max_output_bytes``): which topic, which event (its type, id and subject) or state key, its
    size, and its first bytes. Its id is the output's content, so a replay repeats it."""
    what = _event_head(value)
    cut = config.max_deadletter_bytes
    data = {
        "reason": "too_large",
        "message": cut_text(f"output to {topic} of {len(value)} bytes (key {len(key or b'')} bytes) is over "
                            f"max_output_bytes ({limit}) and was not sent: {what}", cut),
        "topic": topic,
        "partition": -1,
        "offset": -1,
        "index": None,
        "timestamp": now,
        "key_b64": None if key is None else base64.b64encode(key[:cut]).decode(),
        "value_b64": base64.b64encode(value[:cut]).decode(),
        "value_size": len(value),
        "value_truncated": len(value) > cut,
        "element": None,
    }
    id_ = event_id("deadletter", "oversized", topic, hashlib.sha256((key or b"") + b"\x1f" + value).hexdigest())
    return b"too_large", cloud_event("slostream.deadletter", config.source, id_, now, data)


def _event_head(value: bytes) -> str:
    """What an output is, for a dead letter naming it: a CloudEvent's type, id and subject."""
    try:
        event = orjson.loads(value)
    except orjson.JSONDecodeError:
        return "not JSON (a state record or a forward)"
    if not isinstance(event, dict):
        return "not an event"
    return ", ".join(f"{name} {str(event.get(name))[:512]}" for name in ("type", "id", "subject") if name in event)


def cut_text(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8 (a character split by the cut is dropped)."""
    encoded = text.encode("utf-8", "replace")
    return text if len(encoded) <= limit else encoded[:limit].decode("utf-8", "ignore") + "…"


def _element_json(element) -> tuple[Any, bytes]:
    """A rejected element as JSON-safe data and as JSON bytes (its repr where it is not JSON)."""
    if element is None:
        return None, b"null"
    try:
        encoded = orjson.dumps(element)
    except (TypeError, orjson.JSONEncodeError):
        try:
            text = repr(element)
        except RecursionError:  # nested deeper than Python's repr goes (orjson stops at 255 levels)
            text = f"<{type(element).__name__} nested too deeply to show>"
        encoded = orjson.dumps(text)
    return orjson.loads(encoded), encoded


def _nullable(column: np.ndarray) -> list[float | None]:
    """A float column as JSON values: NaN (no value) as null, and so anything not finite (values are
    bounded, ``MAX_ABS_VALUE``: only state from before that could hold one)."""
    return [x if math.isfinite(x) else None for x in column.tolist()]


def _text_within(raw: bytes, limit: int) -> str:
    """``raw`` as text whose JSON string takes at most ``limit`` bytes: undecodable bytes become
    U+FFFD (3 bytes) and control characters escapes (6), so the text is cut until it fits."""
    text = raw.decode("utf-8", "replace")
    while text and len(orjson.dumps(text)) > limit:
        text = text[:len(text) * limit // len(orjson.dumps(text))]
    return text
