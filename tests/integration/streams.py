"""Producing like real services and reading SLI windows back, shared by the integration tests."""

import asyncio

from aiokafka import AIOKafkaProducer

from tests.conftest import consume

PARTITIONS = 4


def send_records(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]], compression: str | None = None,
          pause_every: int = 0, pause_s: float = 0.0) -> None:
    """Produce (key, value) records in order; unkeyed ones go where aiokafka's partitioner puts them
    (a random partition), keyed ones to murmur2(key) as with any Kafka client."""

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
