"""Producing like real services and reading SLI windows back, shared by the integration tests."""

import asyncio

import orjson
from aiokafka import AIOKafkaProducer

from slostream.config import load_settings, pipeline_config
from slostream.pipeline.partition import PartitionProcessor
from slostream.pipeline.types import SourceRecord
from tests.conftest import consume
from tests.pipeline_sim import WALL

PARTITIONS = 4


def send_records(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]], compression: str | None = None,
          pause_every: int = 0, pause_s: float = 0.0, wait=None) -> None:
    """Produce (key, value) records in order; unkeyed ones go where aiokafka's partitioner puts them
    (a random partition), keyed ones to murmur2(key) as with any Kafka client. Every ``pause_every``
    records: flushed, then ``pause_s`` of sleep, and ``wait(records sent)`` (a blocking call) if given."""

    async def run():
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, compression_type=compression, linger_ms=5,
                                    max_request_size=8 << 20)
        await producer.start()
        try:
            for number, (key, value) in enumerate(records):
                await producer.send(topic, value, key=key)
                if pause_every and number % pause_every == pause_every - 1:
                    await producer.flush()
                    await asyncio.sleep(pause_s)
                    if wait is not None:
                        await asyncio.to_thread(wait, number + 1)
            await producer.flush()
        finally:
            await producer.stop()

    asyncio.run(run())


def _windows(events: list[dict]) -> dict:
    by_id: dict[str, dict] = {}
    for event in events:
        assert by_id.setdefault(event["id"], event) == event, "two payloads under one event id"
    counts: dict = {}
    for data in (e["data"] for e in by_id.values()):
        key = (data["service"], data["window_start"])
        assert key not in counts, f"two SLI events for one window {key}"
        counts[key] = data["count"]
    return counts


def truth_of(items: list[dict]) -> dict:
    truth: dict = {}
    for m in items:
        key = (m["service"], int(m["ts"] // 60 * 60))
        truth[key] = truth.get(key, 0) + 1
    return truth


def read_sli(bootstrap: str, prefix: str, truth: dict, timeout: float = 90) -> dict:
    """The SLI windows, read until every window of ``truth`` is there. A window after its service's
    last one in ``truth`` is left out: the closers' own windows, which the worker closes once it has
    been idle, and which come before the rest when the broker is slow to take the output."""
    def complete(events: list[dict]) -> bool:
        return set(truth) <= {(e["data"]["service"], e["data"]["window_start"]) for e in events}

    windows = _windows(consume(bootstrap, f"{prefix}sli", complete, timeout=timeout))
    last: dict = {}
    for service, start in truth:
        last[service] = max(last.get(service, start), start)
    return {key: n for key, n in windows.items() if key[1] <= last.get(key[0], key[1])}


def in_process_events(items: list[dict], env: dict[str, str], output: str, per_record: int) -> dict[str, dict]:
    """The events of one output (``Output`` field ``output``) of an uninterrupted run of ``items`` in
    process, with the worker's settings from ``env`` on one partition, by id: what a worker must
    emit when every series is read by its owner alone."""
    settings = load_settings(env={**env, "SLOSTREAM_PARTITIONS": "1"})
    proc = PartitionProcessor(0, pipeline_config(settings), WALL)
    events = {}
    for i in range(0, len(items), per_record):
        chunk = items[i:i + per_record]
        record = SourceRecord("m", 0, i, chunk[-1]["ts"], None, orjson.dumps(chunk))
        events.update((event["id"], event) for _, event in getattr(proc.process([record], WALL), output))
    return events
