"""Kill a worker with SIGKILL mid-stream; its successor's windows come out exact."""

import random
import re
import signal
import threading
import time

import orjson
import pytest

from tests.conftest import consume, produce

T0 = 1_790_000_000 // 60 * 60
SERVICES = ("checkout", "search", "ads")


def _records(n_records, per_record, unkeyed=False, seed=5):
    rng = random.Random(seed)
    records, items = [], []
    for r in range(n_records):
        batch = []
        for j in range(per_record):
            i = r * per_record + j
            # Keyed: one service per record, keyed by it. Unkeyed: services mixed in every record.
            service = SERVICES[i % 3] if unkeyed else SERVICES[r % 3]
            batch.append({"service": service, "metric": "latency_ms",
                          "value": round(rng.lognormvariate(4, 0.5), 3), "ok": rng.random() > 0.05,
                          "ts": T0 + i * 0.02})
        items.extend(batch)
        records.append((None if unkeyed else SERVICES[r % 3].encode(), orjson.dumps(batch)))
    return records, items


@pytest.mark.parametrize("keying", ["by_service", "unkeyed"])
def test_sigkill_mid_stream_loses_and_doubles_nothing(kafka, make_worker, keying):
    records, items = _records(3000, 10, unkeyed=keying == "unkeyed")
    topic = f"{make_worker.prefix}measurements"
    env = {"SLOSTREAM_CHECKPOINT_INTERVAL_S": "0.2", "SLOSTREAM_PARTITIONS": "4"}
    first = make_worker(**env).start()

    def feed(chunk):
        produce(kafka.bootstrap, topic, [], keyed=chunk)

    feeder = threading.Thread(target=lambda: [feed(records[i:i + 100]) or time.sleep(0.2)
                                              for i in range(0, 2000, 100)])
    feeder.start()
    # Killed once series state is durable: an SLI window out (a series is written once something
    # was emitted from it), then two checkpoints; the feeder still sending.
    deadline = time.monotonic() + 30
    body = first.get("/metrics")[1]
    while time.monotonic() < deadline and _metric(body, "slostream_sli_events_total") == 0:
        time.sleep(0.1)
        body = first.get("/metrics")[1]
    durable = _metric(body, "slostream_checkpoints_total") + 2
    while time.monotonic() < deadline and _metric(body, "slostream_checkpoints_total") < durable:
        time.sleep(0.1)
        body = first.get("/metrics")[1]
    assert _metric(body, "slostream_checkpoints_total") >= durable, "no state was made durable"
    assert feeder.is_alive()  # killed mid-stream
    first.stop(signal.SIGKILL)
    feeder.join()
    second = make_worker(**env).start()
    feed(records[2000:])
    closer = [{"service": s, "metric": "latency_ms", "ok": True, "ts": T0 + 3000 * 10 * 0.02 + 70} for s in SERVICES]
    feed([(None if keying == "unkeyed" else s["service"].encode(), orjson.dumps(s)) for s in closer])

    truth = {}
    for m in items:
        key = (m["service"], int(m["ts"] // 60 * 60))
        truth[key] = truth.get(key, 0) + 1
    events = consume(kafka.bootstrap, f"{make_worker.prefix}sli",
                     lambda ev: len({e["id"] for e in ev}) >= len(truth), timeout=120)
    latest = {}
    for event in events:
        latest[event["id"]] = event["data"]
    counts = {(d["service"], d["window_start"]): d["count"] for d in latest.values()}
    letters = consume(kafka.bootstrap, f"{make_worker.prefix}deadletter", lambda ev: False, timeout=2)
    assert [(d["data"]["reason"], d["data"]["message"]) for d in letters][:3] == []
    assert counts == truth
    restored = re.findall(rb"restored (\d+) series and \d+ SLOs, resuming after offset (-?\d+)",
                          second.log_path.read_bytes())
    assert any(int(n) > 0 and int(offset) > 0 for n, offset in restored)
    assert second.stop() == 0


def _metric(body: bytes, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$".encode(), body, re.M)
    assert match, name
    return float(match.group(1))
