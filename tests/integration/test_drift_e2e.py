"""Drift through the real broker: a worker killed (SIGKILL) half way and its successor emit exactly
the drift events of an uninterrupted in-process run: one for the stepped series, none for the
steady one."""

import re
import signal
import time

import orjson

from tests.conftest import consume, produce
from tests.drift_streams import SERVICES, SPAN, T0, seasonal_items
from tests.integration.streams import in_process_events

ACCEPTED = re.compile(rb"^slostream_ingest_measurements_accepted_total (\S+)$", re.M)


def _records(items: list[dict], per_record: int = 360) -> list[tuple[bytes, bytes]]:
    """Each service's measurements in records of an hour, keyed by service, in event-time order."""
    records = []
    for service in SERVICES:
        mine = [m for m in items if m["service"] == service]
        records += [(mine[i]["ts"], service.encode(), orjson.dumps(mine[i:i + per_record]))
                    for i in range(0, len(mine), per_record)]
    return [(key, value) for _, key, value in sorted(records)]


def test_drift_events_survive_a_sigkill_exactly(kafka, make_worker):
    items = seasonal_items()
    # One partition in process: the records are keyed by service, so each series is read by its owner alone.
    expected = in_process_events(items, {"SLOSTREAM_GRACE_S": "5"}, "drift", 1000)
    assert [(e["data"]["service"], e["data"]["aggregate"]) for e in expected.values()] == [("stepped", "p95")]
    records = _records(items)
    topic = f"{make_worker.prefix}measurements"
    env = {"SLOSTREAM_CHECKPOINT_INTERVAL_S": "0.2", "SLOSTREAM_GRACE_S": "5"}
    first = make_worker(**env).start()
    half = len(records) * 6 // 10
    produce(kafka.bootstrap, topic, [], keyed=records[:half])
    sent = sum(len(orjson.loads(value)) for _, value in records[:half])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = ACCEPTED.search(first.get("/metrics")[1])
        if found and float(found.group(1)) >= sent:
            break
        time.sleep(0.5)
    first.stop(signal.SIGKILL)
    second = make_worker(**env).start()
    produce(kafka.bootstrap, topic, [], keyed=records[half:])
    last_window = T0 + SPAN - 60  # the barrier: both series' last windows closed (on idle) and out
    consume(kafka.bootstrap, f"{make_worker.prefix}sli",
            lambda ev: {(e["data"]["service"], e["data"]["window_start"]) for e in ev}
            >= {(s, last_window) for s in SERVICES}, timeout=180)
    events = consume(kafka.bootstrap, f"{make_worker.prefix}drift", lambda ev: False, timeout=3)
    by_id: dict[str, dict] = {}
    for event in events:
        assert by_id.setdefault(event["id"], event) == event, "two drift events under one id differ"
    assert by_id == expected
    # The step comes after the kill: the successor found it, and says so.
    _, body = second.get("/api/drift")
    assert [e["id"] for e in orjson.loads(body)["detections"]] == list(expected)
    counted = b'{aggregate="p95",direction="up",metric="latency_ms",service="stepped"} 1.0'
    assert b"slostream_drift_detections_total" + counted in second.get("/metrics")[1]
