"""``outage``: how long after the broker returns a worker is processing again, after a broker
restart and after a 3-minute outage, with Tansu on S3 storage (a local moto server, so topics and
offsets survive); and that nothing was lost: every SLI window of the run is exact. It stops and
starts that broker itself, so it cannot run against an external one (``slostream bench --broker``)."""

from __future__ import annotations

import asyncio
import collections
import os
import subprocess
import sys
import tempfile
import time

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from slostream.bench.common import BenchBroker, _metric, _scrape, _wait_ready
from slostream.config import Settings
from slostream.io.broker import EmbeddedBroker, S3Server, free_port

OUTAGE_S = 180.0
OUTAGE_SERVICES = 20
OUTAGE_SECONDS_OF_TRAFFIC = 600  # event time of each half, one measurement a second a service


def _half(t0: float, start: int) -> list[tuple[bytes, bytes]]:
    return [(f"svc{s}".encode(), orjson.dumps({"service": f"svc{s}", "metric": "latency_ms", "value": float(t % 97),
                                               "ts": t0 + t}))
            for t in range(start, start + OUTAGE_SECONDS_OF_TRAFFIC) for s in range(OUTAGE_SERVICES)]


def _start_worker(broker: BenchBroker, prefix: str, log_path: str) -> tuple[subprocess.Popen, int]:
    """A worker on 4 partitions, its log kept (what it says through the outage is part of the result)."""
    port = free_port()
    with open(log_path, "ab") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "slostream", "run", "--broker", broker.url, "--topic-prefix", prefix,
             "--partitions", "4", "--web-port", str(port), "--app-id", f"bench-{prefix.strip('.')}"],
            env=broker.worker_env({"SLOSTREAM_LOG_LEVEL": "info", "SLOSTREAM_CHECKPOINT_INTERVAL_S": "0.2"}),
            stdout=log, stderr=subprocess.STDOUT)
    return worker, port


async def _produce(broker: BenchBroker, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = broker.client(AIOKafkaProducer, linger_ms=5)
    await producer.start()
    try:
        for key, value in records:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def _sli_counts(broker: BenchBroker, topic: str, expected: int, timeout: float) -> dict:
    consumer = broker.client(AIOKafkaConsumer, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or {0}])
        payloads: dict[str, set[bytes]] = collections.defaultdict(set)
        counts = {}
        deadline = time.monotonic() + timeout
        while len(counts) < expected and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                for record in batch:
                    event = orjson.loads(record.value)
                    payloads[event["id"]].add(orjson.dumps(event["data"], option=orjson.OPT_SORT_KEYS))
                    counts[event["data"]["service"], event["data"]["window_start"]] = event["data"]["count"]
        return {"counts": counts, "ids_with_two_payloads": sum(len(p) > 1 for p in payloads.values())}
    finally:
        await consumer.stop()


def _reconnect(down_s: float) -> dict:
    """One worker; half the traffic, the broker stopped for ``down_s`` (0: a restart), the other
    half sent as soon as it is back; the seconds until the worker read again."""
    prefix = f"outage{int(down_s)}."
    t0 = float(int(time.time()) // 60 * 60 - 2 * OUTAGE_SECONDS_OF_TRAFFIC - 600)
    first, second = _half(t0, 0), _half(t0, OUTAGE_SECONDS_OF_TRAFFIC)
    closer = [(f"svc{s}".encode(), orjson.dumps({"service": f"svc{s}", "metric": "latency_ms", "value": 1.0,
                                                 "ts": t0 + 2 * OUTAGE_SECONDS_OF_TRAFFIC + 120}))
              for s in range(OUTAGE_SERVICES)]
    truth = collections.Counter((orjson.loads(v)["service"], int(orjson.loads(v)["ts"] // 60 * 60))
                                for _, v in first + second)
    workdir = tempfile.mkdtemp(prefix="slostream-outage-")
    log_path = os.path.join(workdir, "worker.log")
    with S3Server() as storage, EmbeddedBroker(storage=storage) as embedded:
        broker = BenchBroker(Settings(broker=embedded.url), workdir)
        worker, port = _start_worker(broker, prefix, log_path)
        try:
            _wait_ready(port, worker)
            asyncio.run(_produce(broker, f"{prefix}measurements", first))
            time.sleep(5)  # read and checkpointed
            embedded.stop()
            time.sleep(down_s)
            before = _metric(_scrape(port)[0], "slostream_ingest_records_total")
            embedded.start()
            back_at = time.monotonic()
            asyncio.run(_produce(broker, f"{prefix}measurements", second[:1]))
            while worker.poll() is None and _metric(_scrape(port)[0], "slostream_ingest_records_total") <= before:
                time.sleep(0.05)
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited ({worker.returncode}) after the outage; see {log_path}")
            reading_after_s = time.monotonic() - back_at
            asyncio.run(_produce(broker, f"{prefix}measurements", second[1:] + closer))
            seen = asyncio.run(_sli_counts(broker, f"{prefix}sli", len(truth), 300))
            wrong = {f"{service} {start}": [seen["counts"].get((service, start)), count]
                     for (service, start), count in truth.items() if seen["counts"].get((service, start)) != count}
            page = _scrape(port)[0]
            return {"down_s": down_s, "reading_again_after_s": round(reading_after_s, 2),
                    "windows": len(truth), "windows_exact": len(truth) - len(wrong),
                    "windows_wrong_first": dict(list(wrong.items())[:5]),  # window: [counted, sent]
                    "rejected": _metric(page, "slostream_ingest_measurements_rejected_total{"),
                    "fenced": _metric(page, "slostream_fenced_total"),
                    "ids_with_two_payloads": seen["ids_with_two_payloads"], "worker_alive": worker.poll() is None,
                    "worker_log": log_path}
        finally:
            worker.terminate()
            worker.wait(30)


def reconnect_after_outages() -> dict:
    return {"restart": _reconnect(0.0), "outage_3min": _reconnect(OUTAGE_S)}
