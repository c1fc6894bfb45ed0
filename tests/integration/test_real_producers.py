"""Real producers through the real broker: any keying, services flushing a minute at a time, a
clock running ahead, a five-hour backlog, every compression codec, a corrupt batch."""

import random
import re
import signal
import subprocess
import sys
import time

import orjson
import pytest

from slostream.pipeline.ownership import owner_of
from tests.conftest import consume
from tests.integration.streams import PARTITIONS, read_sli, send_records, truth_of


def _letters(bootstrap: str, prefix: str) -> list[dict]:
    return consume(bootstrap, f"{prefix}deadletter", lambda ev: False, timeout=2)


SERVICES = ["payments", "search", "ads", "cart", "login", "feed"]
SLO_YAML = """slos:
  - name: payments-availability
    service: payments
    metric: http
    objective: 0.99
    window: 1d
    good: ok
    alerting:
      tiers: [{severity: page, long: 2m, short: 30s, burn_rate: 14.4}]
      no_data: off
"""


def _incident(t0: float, seed: int = 7) -> list[dict]:
    """Eight minutes of six services at 4/s each; payments fails half its requests in minutes 3-4."""
    rng = random.Random(seed)
    items = []
    for step in range(8 * 60 * 4):
        ts = t0 + step / 4
        for service in SERVICES:
            failing = service == "payments" and 180 <= step / 4 < 300
            items.append({"service": service, "metric": "http", "ok": rng.random() > (0.5 if failing else 0.002),
                          "ts": round(ts + rng.random() / 4, 3)})
    return items


def _closers(t_end: float) -> list[dict]:
    return [{"service": s, "metric": "http", "ok": True, "ts": t_end + 90} for s in SERVICES]


@pytest.mark.parametrize("keying", ["by_service", "unkeyed", "by_host"])
def test_any_keying_gives_the_exact_windows_and_a_single_alert_episode(kafka, make_worker, tmp_path, keying):
    definitions = tmp_path / "slo.yaml"
    definitions.write_text(SLO_YAML)
    worker = make_worker(SLOSTREAM_PARTITIONS=str(PARTITIONS), SLOSTREAM_DEFINITION_FILES=str(definitions)).start()
    t0 = (time.time() - 3600) // 60 * 60
    items = _incident(t0)
    records: list[tuple[bytes | None, bytes]] = []
    for first in range(0, len(items), 60):  # ten seconds of every service per flush, as a shipper would
        chunk = items[first:first + 60]
        if keying == "by_service":
            for service in SERVICES:
                records.append((service.encode(), orjson.dumps([m for m in chunk if m["service"] == service])))
        else:
            key = None if keying == "unkeyed" else f"host-{first // 60 % 5}".encode()
            records.append((key, orjson.dumps(chunk)))
    records += [(None if keying != "by_service" else m["service"].encode(), orjson.dumps(m))
                for m in _closers(t0 + 480)]
    send_records(kafka.bootstrap, f"{make_worker.prefix}measurements", records, pause_every=6, pause_s=0.05)
    truth = truth_of(items)
    assert read_sli(kafka.bootstrap, make_worker.prefix, truth) == truth
    assert _letters(kafka.bootstrap, make_worker.prefix) == []
    alerts = consume(kafka.bootstrap, f"{make_worker.prefix}alerts",
                     lambda ev: any(e["type"] == "slostream.alert.resolved" for e in ev), timeout=60)
    kinds = sorted({e["id"]: e["type"] for e in alerts}.values())
    assert kinds == ["slostream.alert.firing", "slostream.alert.resolved"]
    assert {e["data"]["labels"]["slo"] for e in alerts} == {"payments-availability"}
    _, body = worker.get("/metrics")
    forwarded = float(re.search(rb"^slostream_ingest_measurements_forwarded_total (\S+)$", body, re.M).group(1))
    assert (forwarded == 0) == (keying == "by_service")
    assert worker.stop() == 0


def _flushes(services: list[str], t0: float, minutes: int, stagger_s: float) -> tuple[list, list[dict]]:
    """Every service sends its last minute at once, every minute, the services in turn."""
    rng = random.Random(3)
    flushes, items = [], []
    for minute in range(1, minutes + 1):
        for i, service in enumerate(services):
            end = t0 + minute * 60 + i * stagger_s
            batch = [{"service": service, "metric": "http", "ok": rng.random() > 0.1, "ts": round(end - 60 + k / 2, 3)}
                     for k in range(120)]
            flushes.append((end, service, batch))
            items += batch
    flushes.sort(key=lambda flush: flush[0])
    return flushes, items


def test_services_flushing_a_minute_at_a_time_with_the_default_grace_lose_nothing(kafka, make_worker):
    make_worker(SLOSTREAM_PARTITIONS=str(PARTITIONS), SLOSTREAM_GRACE_S="30").start()
    services = [f"svc-{i:02d}" for i in range(12)]
    assert len({owner_of(s, PARTITIONS) for s in services}) == PARTITIONS  # shared partitions, all in use
    t0 = (time.time() - 1800) // 60 * 60
    flushes, items = _flushes(services, t0, minutes=6, stagger_s=4.5)
    records = [(service.encode(), orjson.dumps(batch)) for _, service, batch in flushes]
    records += [(s.encode(), orjson.dumps({"service": s, "metric": "http", "ok": True, "ts": t0 + 7 * 60 + 120}))
                for s in services]
    send_records(kafka.bootstrap, f"{make_worker.prefix}measurements", records, pause_every=12, pause_s=0.1)
    truth = truth_of(items)
    assert read_sli(kafka.bootstrap, make_worker.prefix, truth) == truth
    assert _letters(kafka.bootstrap, make_worker.prefix) == []  # no too_late at all


def test_a_producer_clock_five_minutes_ahead_leaves_its_neighbours_exact(kafka, make_worker):
    make_worker(SLOSTREAM_PARTITIONS="1", SLOSTREAM_GRACE_S="30").start()
    now = time.time()
    t0 = (now - 900) // 60 * 60
    rng = random.Random(4)
    neighbours = [{"service": s, "metric": "http", "ok": rng.random() > 0.05, "ts": t0 + k / 4}
                  for k in range(10 * 60 * 4) for s in ("a", "b", "c")]
    # Its ts run 290 s ahead of the others (within max_future_skew_s of the record time, so accepted).
    ahead = [{"service": "skewed", "metric": "http", "ok": True, "ts": t0 + k + 290} for k in range(10 * 60)]
    mixed = sorted(neighbours + ahead, key=lambda m: m["ts"] - (290 if m["service"] == "skewed" else 0))
    records = [(None, orjson.dumps(mixed[i:i + 50])) for i in range(0, len(mixed), 50)]
    records += [(None, orjson.dumps({"service": s, "metric": "http", "ok": True, "ts": t0 + 10 * 60 + 90}))
                for s in ("a", "b", "c")]
    send_records(kafka.bootstrap, f"{make_worker.prefix}measurements", records)
    truth = {key: n for key, n in truth_of(neighbours).items()}
    got = read_sli(kafka.bootstrap, make_worker.prefix, truth)
    assert {key: n for key, n in got.items() if key[0] != "skewed"} == truth
    assert _letters(kafka.bootstrap, make_worker.prefix) == []


def test_a_five_hour_backlog_gives_every_window_exactly(kafka, make_worker):
    worker = make_worker().start()
    t0 = (time.time() - 6 * 3600) // 60 * 60
    rng = random.Random(5)
    items = [{"service": "backfill", "metric": "latency_ms", "value": round(rng.lognormvariate(3, 0.5), 3),
              "ok": rng.random() > 0.01, "ts": t0 + k / 2} for k in range(5 * 3600 * 2)]
    records = [(b"backfill", orjson.dumps(items[i:i + 500])) for i in range(0, len(items), 500)]
    records.append((b"backfill", orjson.dumps({"service": "backfill", "metric": "latency_ms", "value": 1.0,
                                               "ts": t0 + 5 * 3600 + 90})))
    send_records(kafka.bootstrap, f"{make_worker.prefix}measurements", records)
    truth = truth_of(items)
    assert len(truth) == 300
    assert read_sli(kafka.bootstrap, make_worker.prefix, truth, timeout=120) == truth
    assert _letters(kafka.bootstrap, make_worker.prefix) == []
    assert worker.process.poll() is None


CODECS = ["gzip", "snappy", "lz4", "zstd"]


def test_compressed_records_are_read_exactly(kafka, make_worker):
    """Every codec through one worker: each codec's records carry series of their own
    (``<codec>-<k>``), so each codec's windows are checked on their own."""
    make_worker().start()
    t0 = (time.time() - 1200) // 60 * 60
    truths = {}
    for codec in CODECS:
        rng = random.Random(6)
        items = [{"service": f"{codec}-{k % 3}", "metric": "http", "ok": rng.random() > 0.1, "ts": t0 + k / 10}
                 for k in range(5 * 60 * 10)]
        records = [(None, orjson.dumps(items[i:i + 200])) for i in range(0, len(items), 200)]
        records += [(None, orjson.dumps({"service": f"{codec}-{k}", "metric": "http", "ok": True, "ts": t0 + 400}))
                    for k in range(3)]
        send_records(kafka.bootstrap, f"{make_worker.prefix}measurements", records, compression=codec)
        truths[codec] = truth_of(items)
    got = read_sli(kafka.bootstrap, make_worker.prefix, {k: n for truth in truths.values() for k, n in truth.items()})
    for codec, truth in truths.items():
        assert {key: n for key, n in got.items() if key[0].startswith(f"{codec}-")} == truth, codec
    assert {key[0].split("-")[0] for key in got} == set(CODECS)


def test_an_undecodable_batch_is_skipped_counted_and_dead_lettered_and_the_rest_goes_on(kafka, make_worker):
    worker = make_worker().start()
    topic = f"{make_worker.prefix}measurements"
    t0 = (time.time() - 600) // 60 * 60
    good = orjson.dumps({"service": "after-corruption", "metric": "http", "ok": True, "ts": t0})
    subprocess.run([sys.executable, "-m", "tests.integration.corrupt_batch", kafka.bootstrap, topic, "0",
                    good.decode()], check=True, timeout=60)
    other = [(b"other", orjson.dumps({"service": "other", "metric": "http", "ok": True, "ts": t0 + k}))
             for k in range(0, 200, 5)]
    closer = {"service": "after-corruption", "metric": "http", "ok": True, "ts": t0 + 200}
    send_records(kafka.bootstrap, topic, other)
    subprocess.run([sys.executable, "-m", "tests.integration.corrupt_batch", kafka.bootstrap, topic, "0",
                    orjson.dumps(closer).decode()], check=True, timeout=60)
    letters = consume(kafka.bootstrap, f"{make_worker.prefix}deadletter", lambda ev: len(ev) >= 2, timeout=30)
    assert sorted(e["data"]["reason"] for e in letters) == ["undecodable_batch"] * 2
    assert {e["data"]["partition"] for e in letters} == {0} and all("offsets" in e["data"]["message"] for e in letters)
    events = consume(kafka.bootstrap, f"{make_worker.prefix}sli",
                     lambda ev: {e["data"]["service"] for e in ev} >= {"after-corruption", "other"}, timeout=90)
    assert {e["data"]["service"] for e in events} >= {"after-corruption", "other"}
    _, body = worker.get("/metrics")
    assert b"slostream_ingest_undecodable_batches_total 2.0" in body
    assert worker.process.poll() is None


def test_an_undecodable_batch_read_back_for_a_forward_is_not_reported_again(kafka, make_worker):
    """A forward's source record is read back by a consumer of its own; the worker's consumer reads
    (and reports) the same batch: one report, one dead letter."""
    topic = f"{make_worker.prefix}measurements"
    good = orjson.dumps({"service": "after-corruption", "metric": "http", "ok": True, "ts": time.time()})
    subprocess.run([sys.executable, "-m", "tests.integration.corrupt_batch", kafka.bootstrap, topic, "0",
                    good.decode()], check=True, timeout=60)
    read = subprocess.run([sys.executable, "-m", "tests.integration.read_back_batch", kafka.bootstrap,
                           make_worker.prefix], check=True, timeout=60, capture_output=True)
    assert orjson.loads(read.stdout) == {"read_back": 0, "consumer": 1}


def test_a_worker_frozen_while_unkeyed_bursts_arrive_loses_nothing(kafka, make_worker):
    """Two workers, one partition each; one is frozen (SIGSTOP: a long GC pause, a stalled VM) for
    longer than idle_after_s + grace_s while unkeyed bursts, each a minute of event time, land on
    both partitions. The other owner must hold its series until the frozen partition has been read
    and reported, not close them on its own share."""
    prefix = make_worker.prefix
    first = make_worker("frozen").start()
    second = make_worker("frozen").start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until the group has split the two partitions
        owned = [orjson.loads(w.get("/ready")[1]).get("partitions", []) for w in (first, second)]
        if all(len(p) == 1 for p in owned):
            break
        time.sleep(0.5)
    assert all(len(p) == 1 for p in owned), owned
    rng = random.Random(11)
    t0 = float(int(time.time()) // 60 * 60 - 3600)
    items = [{"service": SERVICES[i % 3], "metric": "http", "ok": rng.random() > 0.05, "ts": t0 + i / 12}
             for i in range(6 * 60 * 12)]  # six minutes, 4/s per service
    records = [(None, orjson.dumps(items[i:i + 24])) for i in range(0, len(items), 24)]
    second.process.send_signal(signal.SIGSTOP)
    try:
        # One minute of event time per burst, 1.5 s apart: 9 s frozen (idle 3 s, grace 2 s here).
        send_records(kafka.bootstrap, f"{prefix}measurements", records, pause_every=30, pause_s=1.5)
    finally:
        second.process.send_signal(signal.SIGCONT)
    closers = [(None, orjson.dumps(c)) for c in _closers(t0 + 360)[:3] for _ in range(PARTITIONS)]
    send_records(kafka.bootstrap, f"{prefix}measurements", closers)
    truth = truth_of(items)
    assert read_sli(kafka.bootstrap, prefix, truth) == truth
    assert _letters(kafka.bootstrap, prefix) == []
    for worker in (first, second):  # every partition reports again: alignment is recent
        aligned = re.findall(rb'^slostream_aligned_until_timestamp_seconds{partition="\d"} (\S+)$',
                             worker.get("/metrics")[1], re.M)
        assert len(aligned) == 1 and time.time() - 30 < float(aligned[0]) <= time.time()
    assert first.stop() == 0 and second.stop() == 0
