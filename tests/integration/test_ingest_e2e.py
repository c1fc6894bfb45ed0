"""Measurements in through Kafka, SLI and dead-letter events out through Kafka."""

import base64
import random
import shutil
import subprocess
import time

import numpy as np
import orjson
import pytest

from tests.conftest import consume, produce
from tests.schemas import validator

T0 = 1_790_000_000 // 60 * 60


def _stream(services=("checkout", "search"), minutes=3, per_record=10, seed=11):
    rng = random.Random(seed)
    records, items = [], []
    n = minutes * 60 * 4
    for i in range(n):
        m = {"service": services[i % len(services)], "metric": "latency_ms",
             "value": round(rng.lognormvariate(4, 0.5), 3), "ok": rng.random() > 0.05, "ts": T0 + i * 0.25}
        items.append(m)
    for i in range(0, len(items), per_record):
        records.append(orjson.dumps(items[i:i + per_record]))
    return records, items


def _truth(items):
    windows = {}
    for m in items:
        windows.setdefault((m["service"], int(m["ts"] // 60 * 60)), []).append(m)
    return windows


def test_measurements_yield_the_exact_sli_events(kafka, make_worker):
    worker = make_worker().start()
    records, items = _stream()
    closer = orjson.dumps({"service": "checkout", "metric": "latency_ms", "ok": True, "ts": T0 + 3 * 60 + 65})
    produce(kafka.bootstrap, f"{make_worker.prefix}measurements", [*records, closer])
    truth = _truth(items)
    events = consume(kafka.bootstrap, f"{make_worker.prefix}sli", lambda ev: len(ev) >= len(truth))
    by_key = {(e["data"]["service"], e["data"]["window_start"]): e for e in events}
    assert set(by_key) == set(truth)
    for key, members in truth.items():
        event = by_key[key]
        data = event["data"]
        values = np.array([m["value"] for m in members])
        assert event["specversion"] == "1.0" and event["type"] == "slostream.sli.window"
        assert data["count"] == len(members)
        assert data["ok"] == sum(m["ok"] for m in members)
        assert data["errors"] == len(members) - data["ok"]
        assert data["window_end"] - data["window_start"] == 60
        assert data["max"] == values.max() and data["min"] == values.min()
        assert data["p50"] == pytest.approx(np.quantile(values, 0.5, method="lower"), rel=0.01)
        assert data["p99"] == pytest.approx(np.quantile(values, 0.99, method="lower"), rel=0.01)
    assert len({e["id"] for e in events}) == len(events)
    sli_schema = validator("sli-event.schema.json")
    for event in events:
        sli_schema.validate(event)
    assert worker.stop() == 0


def test_every_dead_letter_reason_is_produced_and_the_worker_survives(kafka, make_worker):
    worker = make_worker(SLOSTREAM_MAX_RECORD_BYTES="65536").start()
    good = {"service": "api", "metric": "http", "ok": True, "ts": T0 + 600}
    bad = {
        "invalid_json": b'{"service": "api", ',
        "not_an_object": b'["just", "strings"]',
        "missing_field": b'{"service": "api", "value": 3}',
        "wrong_type": b'{"service": "api", "metric": "http", "ok": "yes"}',
        "non_finite_value": b'{"service": "api", "metric": "http", "value": NaN}',
        "bad_timestamp": b'{"service": "api", "metric": "http", "ok": true, "ts": "noon"}',
        "too_large": b"[" + b",".join([orjson.dumps(good)] * 2000) + b"]",
        "too_late": orjson.dumps({**good, "ts": T0}),
    }
    hostile = [b"", b"\xff\xfe\xfd", b"[" * 100_000 + b"]" * 100_000, b"1e999999", b"{" * 10,
               b"[" + b",".join([orjson.dumps(good)] * 150_000) + b"]"]  # ~10 MB
    produce(kafka.bootstrap, f"{make_worker.prefix}measurements", [orjson.dumps(good)])
    time.sleep(3)  # the series closes once both partitions have reported reading past it (a tick or two)
    produce(kafka.bootstrap, f"{make_worker.prefix}measurements", list(bad.values()) + hostile)
    expected = len(bad) + 1 + len(hostile)  # not_an_object rejects each of its two elements
    letters = consume(kafka.bootstrap, f"{make_worker.prefix}deadletter", lambda ev: len(ev) >= expected)
    reasons = [e["data"]["reason"] for e in letters]
    assert set(reasons) == set(bad)
    assert len(letters) == expected
    deadletter_schema = validator("deadletter-event.schema.json")
    for letter in letters:
        deadletter_schema.validate(letter)
    elements = sorted((e["data"]["index"], base64.b64decode(e["data"]["value_b64"]))
                      for e in letters if e["data"]["reason"] == "not_an_object" and e["data"]["index"] is not None)
    assert elements == [(0, b'"just"'), (1, b'"strings"')]  # each element alone, not the record twice
    truncated_json = base64.b64encode(bad["invalid_json"]).decode()
    invalid = next(e["data"] for e in letters if e["data"]["value_b64"] == truncated_json)
    assert invalid["reason"] == "invalid_json" and invalid["topic"] == f"{make_worker.prefix}measurements"
    assert isinstance(invalid["offset"], int) and invalid["message"]
    assert next(e["data"] for e in letters if e["data"]["reason"] == "too_large")["value_truncated"] is True
    _, body = worker.get("/metrics")
    text = body.decode()
    for reason in bad:
        assert f'slostream_ingest_measurements_rejected_total{{reason="{reason}"}}' in text
    assert 'slostream_ingest_measurements_rejected_total{reason="too_late"} 1.0' in text
    assert worker.process.poll() is None
    assert worker.get("/health")[0] == 200


def test_metrics_pass_promtool(kafka, make_worker, tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package 'prometheus') is required; scripts/test installs it"
    worker = make_worker().start()
    records, _ = _stream(minutes=2)
    closer = orjson.dumps({"service": "checkout", "metric": "latency_ms", "ok": True, "ts": T0 + 200})
    produce(kafka.bootstrap, f"{make_worker.prefix}measurements", [*records, closer])
    consume(kafka.bootstrap, f"{make_worker.prefix}sli", lambda ev: len(ev) >= 4)
    status, body = worker.get("/metrics")
    assert status == 200
    text = body.decode()
    for quantile in ("0.5", "0.9", "0.95", "0.99"):  # as client_python writes them: "0.5", not "0.50"
        assert f'slostream_sli_window_value{{metric="latency_ms",quantile="{quantile}",service="checkout"}}' in text
    assert 'slostream_sli_window_measurements{metric="latency_ms",service="checkout"} 120.0' in text
    check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()


def test_idle_series_still_has_its_last_window_closed(kafka, make_worker):
    worker = make_worker(SLOSTREAM_IDLE_AFTER_S="2").start()
    items = [{"service": "quiet", "metric": "http", "ok": i % 4 != 0, "ts": T0 + i} for i in range(119)]
    produce(kafka.bootstrap, f"{make_worker.prefix}measurements", [orjson.dumps(items)])
    started = time.monotonic()
    events = consume(kafka.bootstrap, f"{make_worker.prefix}sli", lambda ev: len(ev) >= 2, timeout=30)
    windows = sorted((e["data"]["window_start"], e["data"]["count"], e["data"]["errors"]) for e in events)
    # No later measurement ever arrives: only the idle tick can close [T0+60, T0+120).
    assert windows == [(T0, 60, 15), (T0 + 60, 59, 15)]
    assert time.monotonic() - started < 30
    assert worker.process.poll() is None


def test_per_series_metrics_stop_at_the_limit_and_count_the_rest(kafka, make_worker):
    worker = make_worker(SLOSTREAM_METRICS_SERIES_LIMIT="1").start()
    records, _ = _stream(minutes=2)
    closers = [orjson.dumps({"service": s, "metric": "latency_ms", "ok": True, "ts": T0 + 200})
               for s in ("checkout", "search")]
    produce(kafka.bootstrap, f"{make_worker.prefix}measurements", records + closers)
    consume(kafka.bootstrap, f"{make_worker.prefix}sli", lambda ev: len(ev) >= 4)
    _, body = worker.get("/metrics")
    text = body.decode()
    exported = {s for s in ("checkout", "search")
                if f'slostream_sli_window_measurements{{metric="latency_ms",service="{s}"}}' in text}
    assert len(exported) == 1
    assert "slostream_sli_series_omitted 1.0" in text
