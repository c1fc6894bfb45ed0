"""Threshold recommendations through the real broker: eight days of latency in unkeyed zstd records
sent at once (a replay: every record stamped when sent) over four partitions make exactly the
recommendation events of an in-process run with one partition; a control command asks for more;
the API and /metrics show them."""

import shutil
import subprocess
import time

import orjson

from tests.conftest import consume, produce
from tests.integration.streams import in_process_events, send_records
from tests.schemas import validator
from tests.threshold_streams import POLICY_YAML, SLO_YAML, latency_bursts, latency_items


def test_recommendations_end_to_end(kafka, make_worker, tmp_path):
    definitions = tmp_path / "policies.yaml"
    definitions.write_text(POLICY_YAML)
    items = latency_items(8)
    env = {"SLOSTREAM_GRACE_S": "5", "SLOSTREAM_DEFINITION_FILES": str(definitions)}
    expected = in_process_events(items, env, "recommendations", 500)
    assert sorted(e["data"]["target"]["level"] for e in expected.values()) == ["critical", "warning"]
    worker = make_worker("recommend", **env).start()
    prefix = make_worker.prefix
    records = [(None, orjson.dumps(items[i:i + 500])) for i in range(0, len(items), 500)]
    send_records(kafka.bootstrap, f"{prefix}measurements", records, compression="zstd")
    topic = f"{prefix}recommendations"
    events = consume(kafka.bootstrap, topic, lambda ev: len(ev) >= len(expected), timeout=120)
    by_id: dict[str, dict] = {}
    for event in events:
        assert by_id.setdefault(event["id"], event) == event, "two recommendation events under one id differ"
    assert by_id == expected
    check = validator("recommendation-event.schema.json")
    for event in events:
        check.validate(event)

    produce(kafka.bootstrap, f"{prefix}control", [b'{"command": "recommend", "policy": "api-p95", "by": "ana"}'],
            key=b"ops")
    events = consume(kafka.bootstrap, topic, lambda ev: len(ev) >= len(expected) + 2, timeout=60)
    asked = [e["data"] for e in events if e["data"]["trigger"].startswith("control command")]
    assert sorted(d["target"]["level"] for d in asked) == ["critical", "warning"]
    assert all(d["trigger"].endswith("by ana") for d in asked)

    status, body = worker.get("/api/recommendations")
    latest = {d["target"]["level"]: d for d in orjson.loads(body)["recommendations"]}
    assert status == 200 and set(latest) == {"warning", "critical"}
    assert latest["warning"]["trigger"].startswith("control command")
    status, metrics = worker.get("/metrics")
    line = (b'slostream_threshold_recommended{kind="policy",level="warning",metric="latency_ms",service="api",'
            b'target="api-p95"} '
            + repr(latest["warning"]["recommended"]).encode())
    assert line in metrics
    check = subprocess.run([shutil.which("promtool"), "check", "metrics"], input=metrics, capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr
    dead = consume(kafka.bootstrap, f"{prefix}deadletter", lambda ev: False, timeout=2)
    assert dead == []
    assert worker.stop() == 0


# Records sent between two waits for the worker (``_reached``): four records of eight minutes, as
# live producers flushing every few minutes would send them.
LIVE_EVERY = 4


def _reached(worker, event_time: float, timeout: float = 60.0) -> None:
    """Until the worker's newest watermark has reached ``event_time``: a live producer's records are
    read as they come, while days of event time are sent in seconds here (sent at once, they are a
    replay: the other test)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, metrics = worker.get("/metrics")
        marks = [float(line.rsplit(b" ", 1)[1]) for line in metrics.splitlines()
                 if line.startswith(b"slostream_watermark_seconds{")]
        if marks and max(marks) >= event_time:
            return
        time.sleep(0.02)
    raise AssertionError(f"the worker did not reach event time {event_time}")


def test_live_unkeyed_producers_get_policy_and_slo_recommendations_across_a_restart(kafka, make_worker, tmp_path):
    """Three hosts' latency, unkeyed lz4 records of eight minutes each, fed live over four
    partitions; the service slows 2.5-fold on day 3.4 for good. A policy (per host) and a threshold
    SLO (over the hosts) with the aggressive strategy, a day's cycle and horizon: recommendations
    on schedule and after the drift, scores a day later, exactly those of an in-process run with one
    partition, though the worker is stopped and another takes over half-way. A models: entry (p50,
    no policy) gets levels too."""
    definitions = tmp_path / "definitions.yaml"
    definitions.write_text(POLICY_YAML + SLO_YAML + "models:\n  - {name: api-p50, service: api, metric: latency_ms, "
                           "aggregate: p50}\n")
    items = latency_bursts(4.3, per_burst=9, hosts=3, shift_at_day=3.4, shift=2.5)
    env = {"SLOSTREAM_GRACE_S": "5", "SLOSTREAM_DEFINITION_FILES": str(definitions), "SLOSTREAM_LABEL_KEYS": "host",
           "SLOSTREAM_RECOMMEND_STRATEGY": "aggressive", "SLOSTREAM_RECOMMEND_EVERY_S": "86400",
           "SLOSTREAM_RECOMMEND_HORIZON_S": "86400"}
    expected = in_process_events(items, env, "recommendations", 36)
    made = [e["data"] for e in expected.values() if e["type"] == "slostream.recommendation"]
    assert {(d["target"]["kind"], d["trigger"]) for d in made} == {
        ("policy", "schedule"), ("policy", "drift"), ("slo", "schedule"), ("slo", "drift"), ("model", "schedule"),
        ("model", "drift")}
    assert any(e["type"] == "slostream.recommendation.scored" and e["data"]["target"]["kind"] == "slo"
               for e in expected.values())
    prefix = make_worker.prefix
    records = [(None, orjson.dumps(items[i:i + 36])) for i in range(0, len(items), 36)]
    newest = [items[min(i + 36, len(items)) - 1]["ts"] - 10 for i in range(0, len(items), 36)]
    half = len(records) // 2
    first = make_worker("recommend", **env).start()
    send_records(kafka.bootstrap, f"{prefix}measurements", records[:half], compression="lz4", pause_every=LIVE_EVERY,
                 wait=lambda sent: _reached(first, newest[sent - 1]))
    _reached(first, newest[half - 1])
    assert first.stop() == 0
    second = make_worker("recommend", **env).start()
    send_records(kafka.bootstrap, f"{prefix}measurements", records[half:], compression="lz4", pause_every=LIVE_EVERY,
                 wait=lambda sent: _reached(second, newest[half + sent - 1]))
    topic = f"{prefix}recommendations"
    events = consume(kafka.bootstrap, topic, lambda ev: {e["id"] for e in ev} >= set(expected), timeout=120)
    by_id: dict[str, dict] = {}
    for event in events:
        assert by_id.setdefault(event["id"], event) == event, "two recommendation events under one id differ"
    assert by_id == expected
    checks = {kind: validator(f"{kind}.schema.json") for kind in ("recommendation-event",
                                                                  "recommendation-scored-event")}
    for event in events:
        checks["recommendation-event" if event["type"] == "slostream.recommendation"
               else "recommendation-scored-event"].validate(event)

    produce(kafka.bootstrap, f"{prefix}control", [b'{"command": "recommend", "slo": "api-fast", "by": "ana"}'],
            key=b"ops")
    events = consume(kafka.bootstrap, topic, lambda ev: any(e["data"]["trigger"].startswith("control") for e in ev),
                     timeout=60)
    asked = [e["data"] for e in events if e["data"]["trigger"].startswith("control command")]
    assert [d["target"] for d in asked] == [{"kind": "slo", "name": "api-fast", "level": "threshold"}]
    status, body = second.get("/api/recommendations")
    latest = {(d["target"]["kind"], d["target"]["level"], d["labels"].get("host")): d
              for d in orjson.loads(body)["recommendations"]}
    assert status == 200 and latest["slo", "threshold", None]["trigger"].startswith("control command")
    assert {key[2] for key in latest if key[0] == "policy"} == {"h0", "h1", "h2"}
    _, metrics = second.get("/metrics")
    assert (b'slostream_threshold_recommended{kind="slo",level="threshold",metric="latency_ms",service="api",'
            b'target="api-fast"} ' + repr(latest["slo", "threshold", None]["recommended"]).encode()) in metrics
    dead = consume(kafka.bootstrap, f"{prefix}deadletter", lambda ev: False, timeout=2)
    assert dead == []
    assert second.stop() == 0
