"""Ten thousand series through the real broker: every window once, every count exact."""

import random
import re
import time

import orjson
import pytest

from tests.conftest import consume
from tests.integration.streams import PARTITIONS, read_sli, send_records, truth_of

SERIES = 10_000
T0 = 1_790_000_000 // 60 * 60
REJECTED_AHEAD = re.compile(rb'^slostream_ingest_measurements_rejected_total\{reason="bad_timestamp"\} (\S+)$', re.M)
COUNTERS = re.compile(rb"^(slostream_(?:ingest_[a-z_]+|sli_events|checkpoints)_total)(\{[^}]*\})? ([0-9.e+]+)$", re.M)


def _differences(events: dict, truth: dict) -> str:
    """A short account of how two {(service, window): count} maps differ, never the maps themselves."""
    missing = sorted(set(truth) - set(events))
    extra = sorted(set(events) - set(truth))
    wrong = sorted(k for k in set(truth) & set(events) if truth[k] != events[k])
    return (f"{len(missing)} windows missing {missing[:5]}, {len(extra)} extra {extra[:5]}, "
            f"{len(wrong)} with a wrong count {[(k, events[k], truth[k]) for k in wrong[:5]]}")


def test_ten_thousand_unkeyed_series_give_exact_windows(kafka, make_worker):
    """Unkeyed, zstd-compressed records of 1,000 measurements from a fleet of 10,000 series, one
    measurement per series every 20 s over three minutes; the idle tick closes the last windows."""
    worker = make_worker(SLOSTREAM_PARTITIONS=str(PARTITIONS), SLOSTREAM_GRACE_S="1",
                         SLOSTREAM_IDLE_AFTER_S="2").start()
    rng = random.Random(5)
    items = [{"service": f"svc-{i}", "metric": "latency_ms", "value": round(rng.lognormvariate(4, 0.5), 3),
              "ok": rng.random() > 0.1, "ts": T0 + step * 20 + i % 20}
             for step in range(9) for i in range(SERIES)]
    records = [(None, orjson.dumps(items[i:i + 1000])) for i in range(0, len(items), 1000)]
    send_records(kafka.bootstrap, f"{make_worker.prefix}measurements", records, compression="zstd")
    truth = truth_of(items)
    assert len(truth) == 3 * SERIES
    started = time.monotonic()
    events = read_sli(kafka.bootstrap, make_worker.prefix, truth, timeout=240)
    waited = time.monotonic() - started
    if events != truth:
        counters = b"; ".join(b"%s%s=%s" % m.groups(b"") for m in COUNTERS.finditer(worker.get("/metrics")[1]))
        pytest.fail(f"after {waited:.0f} s: {_differences(events, truth)}; worker counters: {counters.decode()}; "
                    f"log {worker.log_path}")


def test_a_burst_of_rejected_batched_records_is_dead_lettered_while_metrics_answer(kafka, make_worker):
    """Unkeyed, zstd-compressed records of 1,000 measurements whose clock runs two hours ahead:
    every element is rejected. Each letter carries its element alone, all arrive, and /metrics
    answers throughout (Worker.get gives up after 5 s)."""
    worker = make_worker(SLOSTREAM_PARTITIONS=str(PARTITIONS)).start()
    ahead = time.time() + 7200
    records = [(None, orjson.dumps([{"service": f"svc-{i}", "metric": "latency_ms", "value": 1.0, "ts": ahead + k}
                                    for i in range(1000)])) for k in range(50)]
    expected = 50 * 1000
    scrapes: list[float] = []
    rejected = 0.0
    send_records(kafka.bootstrap, f"{make_worker.prefix}measurements", records, compression="zstd")
    deadline = time.monotonic() + 120
    while rejected < expected and time.monotonic() < deadline:
        started = time.monotonic()
        _, body = worker.get("/metrics")
        scrapes.append(time.monotonic() - started)
        found = REJECTED_AHEAD.search(body)
        rejected = float(found.group(1)) if found else 0.0
        time.sleep(0.25)
    assert rejected == expected, f"{rejected} of {expected} rejected after {len(scrapes)} scrapes"
    letters = consume(kafka.bootstrap, f"{make_worker.prefix}deadletter", lambda ev: len(ev) >= expected, timeout=120)
    assert len(letters) == expected and {e["data"]["reason"] for e in letters} == {"bad_timestamp"}
    assert max(e["data"]["value_size"] for e in letters) < 200, "a letter carries more than its element"
    assert worker.process.poll() is None
    print(f"{len(scrapes)} scrapes, longest {max(scrapes):.2f} s")
