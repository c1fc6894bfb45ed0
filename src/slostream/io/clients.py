"""``slostream produce``, ``slostream tail`` and ``slostream control``: a way in and out without kcat.

The embedded broker (Tansu 0.6) refuses librdkafka clients (kcat, confluent-kafka, Vector, Fluent
Bit), so these two commands, on aiokafka, feed measurements and read events on any broker.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from typing import IO

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from slostream.config import Settings
from slostream.io.security import kafka_client_options


def read_measurements(stream: IO[bytes]) -> Iterator[tuple[bytes | None, bytes]]:
    """(key, value) per measurement from JSON lines (each an object or an array) or one JSON
    array. A measurement with a string ``service`` is keyed by it; anything else is passed on as it
    was read, unkeyed, so the daemon dead-letters it with the reason instead of it vanishing here."""
    data = stream.read()
    try:
        documents = [orjson.loads(data)] if data.lstrip().startswith(b"[") else None
    except orjson.JSONDecodeError:
        documents = None
    if documents is None:
        documents = []
        for line in data.splitlines():
            if not line.strip():
                continue
            try:
                documents.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                yield None, line
    for document in documents:
        for element in document if isinstance(document, list) else [document]:
            service = element.get("service") if isinstance(element, dict) else None
            if isinstance(service, str) and service:
                yield service.encode(), orjson.dumps(element)
            else:
                yield None, orjson.dumps(element)


def batch_by_key(pairs: Iterator[tuple[bytes | None, bytes]],
                 per_record: int) -> Iterator[tuple[bytes | None, bytes, int]]:
    """(key, value, measurements): one key's measurements as JSON arrays of up to ``per_record``;
    unkeyed ones alone."""
    pending: dict[bytes, list[bytes]] = {}
    for key, value in pairs:
        if key is None:
            yield None, value, 1
            continue
        group = pending.setdefault(key, [])
        group.append(value)
        if len(group) >= per_record:
            yield key, b"[" + b",".join(group) + b"]", len(group)
            del pending[key]
    for key, group in pending.items():
        yield key, b"[" + b",".join(group) + b"]", len(group)


async def produce(settings: Settings, stream: IO[bytes], per_record: int, compression: str) -> tuple[int, int]:
    """Send every measurement of ``stream`` to the measurement topic; return (records, measurements)."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.broker_hosts, linger_ms=20, acks="all",
                                compression_type=None if compression == "none" else compression,
                                max_request_size=max(settings.max_record_bytes, 1 << 20),
                                **kafka_client_options(settings))
    await producer.start()
    records = measurements = 0
    try:
        for key, value, count in batch_by_key(read_measurements(stream), per_record):
            await producer.send(settings.topic("measurements"), value, key=key)
            records += 1
            measurements += count
        await producer.flush()
    finally:
        await producer.stop()
    return records, measurements


async def tail(settings: Settings, topic: str, from_beginning: bool, count: int | None, idle_exit_s: float | None,
               out: IO[str] = sys.stdout) -> int:
    """Print the events of ``topic`` (an output topic's short name, or a full name), one JSON per line."""
    name = topic if topic.startswith(settings.topic_prefix) else settings.topic(topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.broker_hosts, enable_auto_commit=False,
                                auto_offset_reset="earliest" if from_beginning else "latest",
                                **kafka_client_options(settings))
    await consumer.start()
    printed = 0
    try:
        partitions = consumer.partitions_for_topic(name)
        if not partitions:
            await consumer.force_metadata_update()
            partitions = consumer.partitions_for_topic(name)
        if not partitions:
            raise SystemExit(f"slostream tail: topic {name} does not exist")
        assigned = [TopicPartition(name, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        if from_beginning:
            await consumer.seek_to_beginning(*assigned)
        else:
            await consumer.seek_to_end(*assigned)
        last = time.monotonic()
        while count is None or printed < count:
            batches = await consumer.getmany(timeout_ms=500)
            for batch in batches.values():
                for record in batch:
                    out.write((record.value or b"").decode("utf-8", "replace") + "\n")
                    printed += 1
                    last = time.monotonic()
            out.flush()
            if idle_exit_s is not None and time.monotonic() - last >= idle_exit_s:
                break
    finally:
        await consumer.stop()
    return printed


def run_produce(settings: Settings, path: str | None, per_record: int, compression: str) -> int:
    stream = sys.stdin.buffer if path in (None, "-") else open(path, "rb")  # noqa: SIM115 (closed below, stdin too)
    with stream:
        records, measurements = asyncio.run(produce(settings, stream, per_record, compression))
    print(f"slostream produce: {measurements} measurement(s) in {records} record(s) to "
          f"{settings.topic('measurements')}", file=sys.stderr)
    return 0


def run_tail(settings: Settings, topic: str, from_beginning: bool, count: int | None, idle_exit_s: float | None) -> int:
    asyncio.run(tail(settings, topic, from_beginning, count, idle_exit_s))
    return 0


def command_producer(settings: Settings) -> AIOKafkaProducer:
    return AIOKafkaProducer(bootstrap_servers=settings.broker_hosts, acks="all", **kafka_client_options(settings))


async def send_command(settings: Settings, command: dict) -> int:
    """Send one control command; the control topic's offset it got."""
    producer = command_producer(settings)
    await producer.start()
    try:
        sent = await producer.send_and_wait(settings.topic("control"), orjson.dumps(command),
                                            key=str(command.get("id", "")).encode())
    finally:
        await producer.stop()
    return sent.offset


def run_control(settings: Settings, command: dict) -> int:
    offset = asyncio.run(send_command(settings, command))
    print(f"slostream control: {command['command']} {command['id']} sent to {settings.topic('control')} at offset "
          f"{offset}; its outcome is on {settings.topic('audit')}", file=sys.stderr)
    return 0
