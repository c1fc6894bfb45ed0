"""Catch-up after an outage: a day of unkeyed traffic over four partitions, written while no worker
ran (each record stamped with when its producer wrote it), then a worker starts. It must report
every window exactly, with nothing ``too_late``; the figure is how fast it catches up."""

from __future__ import annotations

import asyncio
import random
import time

import orjson
from aiokafka import AIOKafkaProducer

from slostream.bench.common import (
    UNKEYED_PARTITIONS,
    BenchBroker,
    _create_topics,
    _last_sli_time,
    _metric,
    _scrape,
    _start_worker,
    _wait_ready,
    counted_from,
)

CATCHUP_SERVICES = 20
CATCHUP_HOSTS = 3
CATCHUP_MINUTES = 24 * 60


def backlog(t0: float, minutes: int, services: int, hosts: int, seed: int = 7) -> list[tuple[float, list[dict]]]:
    """(written at, measurements) records: every minute each host sends an array of two
    measurements of every service from that minute, written at its end."""
    rng = random.Random(seed)
    records = []
    for minute in range(minutes):
        for _ in range(hosts):
            items = [{"service": f"svc-{s}", "metric": "http", "ok": rng.random() > 0.05,
                      "value": round(rng.lognormvariate(4, 0.5), 3), "ts": t0 + minute * 60 + rng.uniform(0, 59)}
                     for s in range(services) for _ in range(2)]
            records.append((t0 + minute * 60 + 60, items))
    return records


async def send_backlog(broker: BenchBroker, topic: str, records: list[tuple[float, list[dict]]]) -> None:
    """Unkeyed (aiokafka's partitioner: a random partition each), stamped with when they were written."""
    producer = broker.client(AIOKafkaProducer, linger_ms=20)
    await producer.start()
    try:
        for written, items in records:
            await producer.send(topic, orjson.dumps(items), timestamp_ms=int(written * 1000))
        await producer.flush()
    finally:
        await producer.stop()


def catchup(broker: BenchBroker) -> dict:
    prefix = f"{broker.namespace}catchup"
    t0 = (time.time() - CATCHUP_MINUTES * 60 - 900) // 60 * 60
    records = backlog(t0, CATCHUP_MINUTES, CATCHUP_SERVICES, CATCHUP_HOSTS)
    # Every series says once more, a while later, that it lives: its last backlog window then closes.
    end = t0 + CATCHUP_MINUTES * 60 + 300
    records += [(end, [{"service": f"svc-{s}", "metric": "http", "ok": True, "ts": end}
                       for s in range(CATCHUP_SERVICES)])] * UNKEYED_PARTITIONS
    windows = CATCHUP_SERVICES * CATCHUP_MINUTES
    measurements = sum(len(items) for _, items in records)
    asyncio.run(_create_topics(broker, (prefix,), {prefix: UNKEYED_PARTITIONS}))
    asyncio.run(send_backlog(broker, f"{prefix}.measurements", records))
    launched = time.time()
    worker, port = _start_worker(broker, f"{prefix}.", UNKEYED_PARTITIONS, {})
    try:
        ready_at = _wait_ready(port, worker)
        last = asyncio.run(_last_sli_time(broker, f"{prefix}.sli", windows, timeout=600))
        seconds = last - counted_from(launched, ready_at, last)
        page, _ = _scrape(port)
    finally:
        worker.terminate()
        worker.wait(30)
    return {"partitions": UNKEYED_PARTITIONS, "event_time_h": CATCHUP_MINUTES / 60, "measurements": measurements,
            "windows": windows, "seconds": round(seconds, 2),
            "measurements_per_s": round(measurements / seconds),
            "too_late": int(_metric(page, 'slostream_ingest_measurements_rejected_total{reason="too_late"}')),
            "rejected": int(_metric(page, "slostream_ingest_measurements_rejected_total{"))}
