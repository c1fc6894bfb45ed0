"""Drift through the partition pipeline: closed report windows feed each series' drift watches;
a step is detected and a steady series is not; a crash and restore in the middle changes nothing."""

import orjson

from slostream.core.drift_rules import DriftRule, DriftRules
from slostream.core.events import rfc3339
from slostream.pipeline.partition import PartitionProcessor
from slostream.pipeline.types import SourceRecord
from tests.drift_streams import STEP_AT, seasonal_items
from tests.pipeline_sim import WALL, make_config
from tests.schemas import validator

# Four days at six requests a minute: at the default 0.5 false detections a series-week, two series
# would see one now and then; a stricter setting keeps the wiring's test exact.
CONFIG = make_config(grace_s=5.0, idle_after_s=2.0, drift=DriftRules(DriftRule(false_per_week=0.05)))


def _fleet_records(per_record: int = 600) -> list[SourceRecord]:
    """``seasonal_items`` in records of ``per_record``, one partition."""
    items = seasonal_items()
    return [SourceRecord("m", 0, n, items[min(i + per_record, len(items)) - 1]["ts"], None,
                         orjson.dumps(items[i:i + per_record]))
            for n, i in enumerate(range(0, len(items), per_record))]


def _drift_events(proc: PartitionProcessor, records: list[SourceRecord]) -> list[dict]:
    events = []
    for record in records:
        events += [event for _, event in proc.process([record], WALL).drift]
    return events


def test_a_step_is_detected_a_steady_series_is_not_and_a_restore_changes_nothing():
    records = _fleet_records()
    events = _drift_events(PartitionProcessor(0, CONFIG, WALL), records)
    found = [(e["data"]["service"], e["data"]["aggregate"], e["data"]["direction"]) for e in events]
    assert found == [("stepped", "p95", "up")], found
    data = events[0]["data"]
    assert STEP_AT < data["detected_at"] <= STEP_AT + 15 * 60  # within 15 minutes of event time
    assert abs(data["changed_at"] - STEP_AT) <= 10 * 60 and 0.6 < data["relative_change"] < 1.4
    validator("drift-event.schema.json").validate(events[0])
    assert orjson.loads(events[0]["subject"]) == ["stepped", "latency_ms", {}]

    # A crash after a checkpoint: the restored partition replays from the commit and finds the same.
    proc = PartitionProcessor(0, CONFIG, WALL)
    half = len(records) // 2 + 3
    before = _drift_events(proc, records[:half])
    writes, (offset, _) = proc.checkpoint(final=True)
    restored = PartitionProcessor.restore(0, CONFIG, dict(writes).items(), WALL)
    after = _drift_events(restored, records[offset + 1:])
    assert before + after == events


def test_drift_rules_choose_aggregates_and_switch_series_off():
    rules = DriftRules(overrides=(DriftRule("stead*", "*", False, None, None, None, None, None),
                                  DriftRule("*", "latency_ms", None, ("p50", "error_ratio"), "page_hinkley",
                                            {"threshold": 20.0}, None, None)))
    proc = PartitionProcessor(0, make_config(grace_s=5.0, drift=rules), WALL)
    proc.process(_fleet_records(per_record=50)[:3], WALL)
    watched = {s.service: s.drift for s in proc.series.values()}
    assert watched["steady"] is None
    stepped = watched["stepped"].watches
    assert sorted(stepped) == ["error_ratio", "p50"]
    assert stepped["p50"].detector_name == "page_hinkley" and stepped["p50"].params == {"threshold": 20.0}
    assert stepped["p50"].warmup_windows == 120  # the default's, where the override leaves it


def _drift_and_alerts(proc: PartitionProcessor, records: list[SourceRecord]) -> tuple[list[dict], list[dict]]:
    drift, alerts = [], []
    for record in records:
        out = proc.process([record], WALL)
        drift += [event for _, event in out.drift]
        alerts += [event for _, event in out.alerts]
    return drift, alerts


def test_a_drift_rule_with_an_alert_fires_at_the_detection_and_resolves_after_the_cooldown():
    config = make_config(grace_s=5.0, drift=DriftRules(DriftRule(alert="warning", cooldown_s=1800.0)))
    records = _fleet_records()
    drift, alerts = _drift_and_alerts(PartitionProcessor(0, config, WALL), records)
    assert len(drift) == 1
    detected_at = drift[0]["data"]["detected_at"]
    assert [(a["type"], a["time"]) for a in alerts] == [
        ("slostream.alert.firing", rfc3339(detected_at)),
        ("slostream.alert.resolved", rfc3339(detected_at + 1800.0))]  # the first window at the cooldown's end
    labels = alerts[0]["data"]["labels"]
    assert labels == {"alertname": "SLIDrift", "service": "stepped", "metric": "latency_ms", "aggregate": "p95",
                      "severity": "warning"}
    assert "moved up" in alerts[0]["data"]["annotations"]["summary"]

    # Restored while the alert fires: the same alert events, the resolution included.
    cut = next(n for n, r in enumerate(records) if r.timestamp > detected_at + 600)
    proc = PartitionProcessor(0, config, WALL)
    before = _drift_and_alerts(proc, records[:cut])
    in_progress = proc.snapshot(kinds=("drift",)).statuses["drift"]
    assert [(s["service"], s["aggregate"], s["settles_at"], s["alert"]) for s in in_progress] == [
        ("stepped", "p95", detected_at + 1800.0, "warning")]
    writes, (offset, _) = proc.checkpoint(final=True)
    restored = PartitionProcessor.restore(0, config, dict(writes).items(), WALL)
    after = _drift_and_alerts(restored, records[offset + 1:])
    assert before[0] + after[0] == drift and before[1] + after[1] == alerts
