"""Threshold recommendations through the real broker: eight days of latency in zstd records keyed
by service, over four partitions, make exactly the recommendation events of an in-process run
with one partition; a control command asks for more; the API and /metrics show them.

Keyed, because eight days of backlog sent at once without keys reach the owner through four
partitions read at different speeds, and what lags the newest by more than the base ring (about
an hour of event time) is dead-lettered as too late (``max_source_skew_s``, see README)."""

import shutil
import subprocess

import orjson

from tests.conftest import consume, produce
from tests.integration.streams import in_process_events, send_records
from tests.schemas import validator
from tests.threshold_streams import POLICY_YAML, latency_items


def test_recommendations_end_to_end(kafka, make_worker, tmp_path):
    definitions = tmp_path / "policies.yaml"
    definitions.write_text(POLICY_YAML)
    items = latency_items(8)
    env = {"SLOSTREAM_GRACE_S": "5", "SLOSTREAM_DEFINITION_FILES": str(definitions)}
    expected = in_process_events(items, env, "recommendations", 500)
    assert sorted(e["data"]["target"]["level"] for e in expected.values()) == ["critical", "warning"]
    worker = make_worker("recommend", **env).start()
    prefix = make_worker.prefix
    records = [(b"api", orjson.dumps(items[i:i + 500])) for i in range(0, len(items), 500)]
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
