"""SLO alerts, threshold breaches and control commands end to end: real broker, real workers."""

from __future__ import annotations

import asyncio
import collections
import shutil
import signal
import subprocess
import time

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from slostream.core.alerts import fingerprint
from tests.conftest import consume, produce
from tests.integration.alert_streams import DEFINITIONS, alerts_of, incident_history
from tests.integration.streams import read_sli, send_records, truth_of
from tests.schemas import validator


def _control(kafka, prefix: str, *commands: bytes) -> None:
    produce(kafka.bootstrap, f"{prefix}control", list(commands), key=b"ops")


def test_incident_fires_pages_resolves_once_across_a_restart(kafka, make_worker, tmp_path):
    definitions = tmp_path / "slos.yaml"
    definitions.write_text(DEFINITIONS)
    env = {"SLOSTREAM_DEFINITION_FILES": str(definitions)}
    prefix = make_worker.prefix
    alerts_topic = f"{prefix}alerts"
    worker = make_worker("alerts", **env).start()
    # Event time in the past, so the 30 minutes of recovery need no waiting: two hours good,
    # five minutes of total outage, then 40 minutes good again.
    base = float(int(time.time()) - 3 * 3600)
    outage = (7200, 7500)
    produce(kafka.bootstrap, f"{prefix}measurements", [], keyed=incident_history(base, 0, 7400, outage))
    events = consume(kafka.bootstrap, alerts_topic, lambda ev: len(alerts_of(ev, "firing", "page")) >= 1)
    page = alerts_of(events, "firing", "page")[0]
    alert = page["data"]
    assert alert["labels"] == {"alertname": "SLOErrorBudgetBurn", "service": "checkout",
                               "slo": "checkout-availability", "severity": "page"}
    assert alert["fingerprint"] == fingerprint(alert["labels"]) and alert["status"] == "firing"
    # With two hours of history the 6h window holds 7200 requests, so the 6x tier is first:
    # 6 x 0.1% x 7200 = 43.2 failures, one a second (the 1h tier needs 51.84). Judged at bucket
    # ends, both tiers may already hold when the page fires; it must be within a bucket of 43.2 s.
    assert alert["annotations"]["tier"] in ("page 6h/30m >= 6x", "page 1h/5m >= 14.4x")
    assert alert["annotations"]["runbook_url"] == "https://runbooks.example/checkout"
    assert float(alert["annotations"]["burn_rate_long"]) >= 6
    starts = _ts(alert["startsAt"]) - base - outage[0]
    assert 43.2 - 10 <= starts <= 43.2 + 10
    # The ticket tier (1x over 3d/6h) fired first and is inhibited by the page.
    assert alerts_of(events, "firing", "ticket") and alerts_of(events, "resolved", "ticket")
    for event in events:
        validator("alert-event.schema.json").validate(event)

    # Operators: acknowledge the page, silence the policy, and send two bad commands.
    _control(kafka, prefix,
             orjson.dumps({"command": "ack", "fingerprint": alert["fingerprint"], "by": "ana"}),
             orjson.dumps({"command": "silence", "matchers": {"policy": "checkout-p99"}, "for": "2h",
                           "by": "ana", "reason": "known slow dependency"}),
             b'{"command": "silence", "matchers": {}}', b"\xff not json")
    events = consume(kafka.bootstrap, alerts_topic,
                     lambda ev: alerts_of(ev, "acknowledged", "page") and alerts_of(ev, "silenced", "critical"))
    acked = alerts_of(events, "acknowledged", "page")[0]["data"]
    assert alerts_of(events, "silenced", "critical")[0]["data"]["labels"]["policy"] == "checkout-p99"
    assert acked["annotations"]["acknowledged_by"] == "ana" and acked["fingerprint"] == alert["fingerprint"]
    audit = consume(kafka.bootstrap, f"{prefix}audit", lambda ev: len(ev) >= 4)
    assert [e["type"].rsplit(".", 1)[1] for e in audit] == ["applied", "applied", "refused", "refused"]
    assert [e["data"]["reason"] for e in audit[2:]] == ["malformed", "malformed"]
    assert "matchers" in audit[2]["data"]["message"] and audit[3]["data"]["raw"].endswith(" not json")
    assert b"slostream_control_auth_enabled 0.0" in worker.get("/metrics")[1]  # no control_keys: unsigned
    status, body = worker.get("/api/alerts")
    listed = orjson.loads(body)
    assert status == 200 and any(a["fingerprint"] == alert["fingerprint"] and a["acknowledgedBy"] == "ana"
                                 for a in listed["alerts"])
    assert listed["silences"][0]["matchers"] == {"policy": "checkout-p99"}

    # Restart in the middle of the incident, then let it recover.
    assert worker.stop() == 0
    second = make_worker("alerts", **env).start()
    produce(kafka.bootstrap, f"{prefix}measurements", [], keyed=incident_history(base, 7400, 9900, outage))
    events = consume(kafka.bootstrap, alerts_topic, lambda ev: alerts_of(ev, "resolved", "page"), timeout=90)
    assert len(alerts_of(events, "firing", "page")) == 1 and len(alerts_of(events, "resolved", "page")) == 1
    assert len(alerts_of(events, "acknowledged", "page")) == 1
    ids = collections.Counter(e["id"] for e in events)
    assert max(ids.values()) == 1, "an alert event was emitted twice"
    # It resets once the 30m short window of the 6h tier holds under 6 x 0.1% x 1800 = 10.8 failures.
    resolved = alerts_of(events, "resolved", "page")[0]["data"]
    assert abs(_ts(resolved["endsAt"]) - base - (outage[1] + 1800 - 10.8)) <= 10
    assert resolved["status"] == "resolved" and resolved["fingerprint"] == alert["fingerprint"]

    # The policy breached (critical after two slow minutes) and recovered, silenced meanwhile.
    breaches = consume(kafka.bootstrap, f"{prefix}breaches",
                       lambda ev: any(e["type"] == "slostream.breach.recovered" for e in ev))
    kinds = [(e["type"], e["data"]["level"]) for e in breaches]
    assert ("slostream.breach.started", "critical") in kinds and ("slostream.breach.recovered", "ok") in kinds
    for event in breaches:
        validator("breach-event.schema.json").validate(event)

    # The last batch may still be in flight when the breach events are read: the status is
    # judged within 100 ms of a batch, so poll briefly for the final counts.
    deadline = time.monotonic() + 5
    while True:
        status, body = second.get("/api/slos")
        slo = orjson.loads(body)["slos"][0]
        if slo["events"] == 9900 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert slo["slo"] == "checkout-availability" and slo["events"] == 9900 and slo["bad_events"] == 300
    assert slo["error_budget"]["remaining_events"] == pytest.approx(0.001 * 9900 - 300)
    status, metrics = second.get("/metrics")
    assert b'slostream_slo_error_budget_remaining_ratio{service="checkout",slo="checkout-availability"}' in metrics
    assert b'slostream_slo_burn_rate{service="checkout",slo="checkout-availability",window="1h"}' in metrics
    check = subprocess.run([shutil.which("promtool"), "check", "metrics"], input=metrics, capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert second.stop() == 0


def _ts(text: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_a_rebalance_mid_incident_neither_repeats_nor_loses_alert_events(kafka, make_worker, tmp_path):
    """Two SLOs on services in different partitions; a second worker joins mid-incident,
    so one partition (and its alert book) moves to it."""
    definitions = tmp_path / "slos.yaml"
    definitions.write_text(DEFINITIONS.replace("policies:", "  - {name: cart-availability, service: cart, "
                                               "metric: http, objective: 0.999, window: 30d, good: ok}\npolicies:"))
    env = {"SLOSTREAM_DEFINITION_FILES": str(definitions)}
    prefix = make_worker.prefix
    base = float(int(time.time()) - 3 * 3600)
    outage = (7200, 7500)

    def both(start: int, stop: int) -> list[tuple[bytes, bytes]]:
        records = incident_history(base, start, stop, outage)
        cart = [(b"cart", value.replace(b'"checkout"', b'"cart"')) for _, value in records]
        return records + cart

    first = make_worker("rebalance", **env).start()
    produce(kafka.bootstrap, f"{prefix}measurements", [], keyed=both(0, 7400))
    consume(kafka.bootstrap, f"{prefix}alerts", lambda ev: len(alerts_of(ev, "firing", "page")) >= 2)
    second = make_worker("rebalance", **env).start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until the group has split the partitions
        owned = [orjson.loads(w.get("/ready")[1]).get("partitions", []) for w in (first, second)]
        if all(len(p) == 1 for p in owned):
            break
        time.sleep(0.5)
    assert all(len(p) == 1 for p in owned), owned
    produce(kafka.bootstrap, f"{prefix}measurements", [], keyed=both(7400, 9900))
    events = consume(kafka.bootstrap, f"{prefix}alerts", lambda ev: len(alerts_of(ev, "resolved", "page")) >= 2,
                     timeout=120)
    for slo in ("checkout-availability", "cart-availability"):
        mine = [e for e in events if e["data"]["labels"].get("slo") == slo]
        assert len(alerts_of(mine, "firing", "page")) == 1 and len(alerts_of(mine, "resolved", "page")) == 1, slo
    ids = collections.Counter(e["id"] for e in events)
    assert max(ids.values()) == 1, "an alert event was emitted twice"
    assert first.stop() == 0 and second.stop() == 0


def test_escalation_cooldown_and_unsilence_end_to_end(kafka, make_worker, tmp_path):
    definitions = tmp_path / "slos.yaml"
    definitions.write_text(
        "slos:\n  - {name: cart-errors, service: cart, metric: http, objective: 0.99, window: 1d, good: ok,\n"
        "     alerting: {tiers: [{severity: ticket, long: 5m, short: 30s, burn_rate: 14.4}], no_data: off}}\n")
    worker = make_worker("lifecycle", SLOSTREAM_DEFINITION_FILES=str(definitions),
                         SLOSTREAM_ESCALATE_AFTER_S="3", SLOSTREAM_ALERT_COOLDOWN_S="600").start()
    prefix = make_worker.prefix
    base = float(int(time.time()) - 3 * 3600)

    def traffic(start: int, stop: int, bad: tuple[int, int]) -> list[tuple[bytes, bytes]]:
        return [(b"cart", orjson.dumps({"service": "cart", "metric": "http", "ts": base + t,
                                        "ok": not bad[0] <= t < bad[1]})) for t in range(start, stop)]

    # 10 minutes good, then errors: the ticket fires.
    produce(kafka.bootstrap, f"{prefix}measurements", [], keyed=traffic(0, 660, (600, 720)))
    consume(kafka.bootstrap, f"{prefix}alerts", lambda ev: alerts_of(ev, "firing", "ticket"))
    # Errors go on as a live service sends them; unacknowledged for 3 s of wall time (escalation
    # runs on the wall clock, not on event time), the ticket escalates to a page.
    t = 660
    while not alerts_of(consume(kafka.bootstrap, f"{prefix}alerts", lambda ev: False, timeout=0.5), "firing",
                        "page"):
        assert t < 720, "no escalation within a minute of errors"
        produce(kafka.bootstrap, f"{prefix}measurements", [], keyed=traffic(t, t + 2, (600, 720)))
        t += 2
    # Good again: the page ends with the condition.
    produce(kafka.bootstrap, f"{prefix}measurements", [], keyed=traffic(t, 1200, (600, t)))
    events = consume(kafka.bootstrap, f"{prefix}alerts", lambda ev: alerts_of(ev, "resolved", "page"))
    page = alerts_of(events, "firing", "page")[0]["data"]
    assert page["labels"]["escalated_from"] == "ticket" and page["labels"]["slo"] == "cart-errors"
    assert [e["type"] for e in events].count("slostream.alert.firing") == 2

    # Errors again within the 600 s cooldown after the episode: no new episode.
    produce(kafka.bootstrap, f"{prefix}measurements", [], keyed=traffic(1200, 1500, (1210, 1250)))
    time.sleep(3)
    seen = consume(kafka.bootstrap, f"{prefix}alerts", lambda ev: False, timeout=3)
    timeline = [(e["type"], e["data"]["labels"]["severity"], _ts(e["time"]) - base) for e in seen]
    assert len(alerts_of(seen, "firing", "ticket")) == 1, timeline

    # After the cooldown a new episode fires; silence it, then lift the silence: firing again.
    produce(kafka.bootstrap, f"{prefix}measurements", [], keyed=traffic(1500, 2500, (2400, 2500)))
    events = consume(kafka.bootstrap, f"{prefix}alerts", lambda ev: len(alerts_of(ev, "firing", "ticket")) >= 2)
    second = alerts_of(events, "firing", "ticket")[1]["data"]
    assert _ts(second["startsAt"]) - base >= 2400
    _control(kafka, prefix, orjson.dumps({"command": "silence", "id": "maint", "matchers": {"slo": "cart-errors"},
                                          "for": "1h", "by": "ana"}))
    consume(kafka.bootstrap, f"{prefix}alerts", lambda ev: alerts_of(ev, "silenced", "ticket"))
    _control(kafka, prefix, orjson.dumps({"command": "unsilence", "silence_id": "maint", "by": "ana"}))
    events = consume(kafka.bootstrap, f"{prefix}alerts", lambda ev: len(alerts_of(ev, "firing", "ticket")) >= 3)
    assert alerts_of(events, "firing", "ticket")[2]["data"]["fingerprint"] == second["fingerprint"]
    assert worker.stop() == 0


def test_a_measurement_dated_centuries_ahead_leaves_the_silence_in_force_and_its_series_counted(
        kafka, make_worker, tmp_path):
    definitions = tmp_path / "slos.yaml"
    definitions.write_text(DEFINITIONS)
    worker = make_worker("future", SLOSTREAM_DEFINITION_FILES=str(definitions)).start()
    prefix = make_worker.prefix
    base = float(int(time.time()) // 60 * 60 - 3600)

    def slow(start: int, stop: int) -> list[dict]:  # the checkout-p99 policy's breach, every 10 s
        return [{"service": "checkout", "metric": "latency_ms", "value": 1000.0, "ts": base + t}
                for t in range(start, stop, 10)]

    before, after = slow(0, 600), slow(600, 600 + 18 * 60)
    produce(kafka.bootstrap, f"{prefix}measurements", [orjson.dumps(m) for m in before], key=b"checkout")
    consume(kafka.bootstrap, f"{prefix}alerts", lambda ev: alerts_of(ev, "firing", "critical"))
    _control(kafka, prefix, orjson.dumps({"command": "silence", "id": "maint", "matchers": {"policy": "checkout-p99"},
                                          "for": "2h", "by": "ana"}))
    consume(kafka.bootstrap, f"{prefix}alerts", lambda ev: alerts_of(ev, "silenced", "critical"))

    # Dated in the year 3237, and so is its record: only the worker's wall clock tells.
    year_3237 = 40_000_000_000
    forged = orjson.dumps({"service": "checkout", "metric": "latency_ms", "value": 1.0, "ts": year_3237})

    async def send_forged():
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(f"{prefix}measurements", forged, key=b"checkout",
                                         timestamp_ms=year_3237 * 1000)
        finally:
            await producer.stop()

    asyncio.run(send_forged())
    produce(kafka.bootstrap, f"{prefix}measurements", [orjson.dumps(m) for m in after], key=b"checkout")
    windows = read_sli(kafka.bootstrap, prefix, truth_of(before + after))
    assert windows == truth_of(before + after)  # the 18 windows after it counted whole
    letters = consume(kafka.bootstrap, f"{prefix}deadletter", lambda ev: len(ev) >= 1)
    assert [e["data"]["reason"] for e in letters] == ["bad_timestamp"]
    status, body = worker.get("/api/alerts")
    listed = orjson.loads(body)
    assert status == 200 and [s["id"] for s in listed["silences"]] == ["maint"]
    assert [a["silencedBy"] for a in listed["alerts"] if a["labels"]["severity"] == "critical"] == [["maint"]]
    events = consume(kafka.bootstrap, f"{prefix}alerts", lambda ev: False, timeout=2)
    assert len(alerts_of(events, "firing", "critical")) == 1  # never paged again past the silence
    assert worker.stop() == 0


def test_alerts_sent_again_after_a_sigkill_are_identical(kafka, make_worker, tmp_path):
    """The worker is killed after sending alerts and before any checkpoint: its successor replays
    the whole log in bigger batches, so it judges the SLO at other points within the buckets, and
    sends every alert event of the log again, each as it was first sent (unkeyed lz4 records, fed
    live, so the first worker judges partial buckets)."""
    definitions = tmp_path / "slos.yaml"
    definitions.write_text(DEFINITIONS)
    env = {"SLOSTREAM_DEFINITION_FILES": str(definitions), "SLOSTREAM_CHECKPOINT_INTERVAL_S": "3600"}
    prefix = make_worker.prefix
    base = float(int(time.time()) - 3 * 3600)
    outage = (7200, 7500)
    history = [value for _, value in incident_history(base, 0, 7800, outage)]
    records = [(None, b"[" + b",".join(history[i:i + 7]) + b"]") for i in range(0, len(history), 7)]
    first = make_worker("alerts", **env).start()
    before_outage = (7100 + 710) // 7  # the records of the first 7100 s: a request a second, latency every 10 s
    send_records(kafka.bootstrap, f"{prefix}measurements", records[:before_outage], compression="lz4")
    send_records(kafka.bootstrap, f"{prefix}measurements", records[before_outage:], compression="lz4",
                 pause_every=1, pause_s=0.05)
    consume(kafka.bootstrap, f"{prefix}alerts", lambda ev: alerts_of(ev, "resolved", "ticket")
            and alerts_of(ev, "firing", "page"))
    time.sleep(1)  # what the last batch judged is sent
    first.stop(signal.SIGKILL)
    sent = consume(kafka.bootstrap, f"{prefix}alerts", lambda ev: False, timeout=2)  # all the first worker sent
    second = make_worker("alerts", **env).start()

    def replayed(events: list[dict]) -> bool:
        counts = collections.Counter(e["id"] for e in events)
        return all(counts[e["id"]] >= 2 for e in sent)

    events = consume(kafka.bootstrap, f"{prefix}alerts", replayed, timeout=90)
    assert replayed(events), "an alert of the first worker was not sent again"
    assert {"page", "ticket", "critical"} <= {e["data"]["labels"]["severity"] for e in sent}
    by_id: dict[str, dict] = {}
    for event in events:
        assert by_id.setdefault(event["id"], event) == event, "two payloads under one alert id"
    assert second.stop() == 0
