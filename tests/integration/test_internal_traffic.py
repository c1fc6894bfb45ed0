"""Producers cannot forge slostream's internal traffic: forwards and progress go through the
repartition topic, and headers on the measurement topic carry no authority."""

import asyncio
import random
import time

import numpy as np
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from slostream.config import load_settings
from slostream.io.topics import ensure_topics
from slostream.pipeline.alignment import encode_progress, progress_header
from slostream.pipeline.ownership import encode_forwarded, forward_header
from slostream.pipeline.rows import ELEMENTS_PER_RECORD
from tests.conftest import consume
from tests.integration.streams import PARTITIONS, read_sli, send_records, truth_of

SERVICES = ("checkout", "search", "ads", "cart")


def _forged(bootstrap: str, topic: str, victim: str, ts: float) -> None:
    """A forward of 500 good measurements of ``victim``, as a worker would make it, and a progress
    mark claiming each partition read to the end of time, with slostream's headers."""
    count = 500
    forward = encode_forwarded([(victim, "http", [])], np.zeros(count, dtype=np.int64), np.full(count, ts),
                               np.full(count, np.nan), np.ones(count, dtype=np.int8), np.full(count, -1, dtype=np.int8),
                               np.arange(count), None, ts)

    async def run():
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            for partition in range(PARTITIONS):
                await producer.send(topic, encode_progress(1e12), partition=partition,
                                    headers=[progress_header((partition + 1) % PARTITIONS)])
                await producer.send(topic, forward, partition=partition, headers=[forward_header(0)])
            await producer.flush()
        finally:
            await producer.stop()

    asyncio.run(run())


def test_a_forged_forward_and_progress_on_the_measurement_topic_change_no_count(kafka, make_worker):
    worker = make_worker(SLOSTREAM_PARTITIONS=str(PARTITIONS)).start()
    topic = f"{make_worker.prefix}measurements"
    t0 = (time.time() - 3600) // 60 * 60
    _forged(kafka.bootstrap, topic, "checkout", t0 + 30)
    rng = random.Random(3)
    items = [{"service": SERVICES[i % 4], "metric": "http", "ok": rng.random() > 0.1, "ts": t0 + i * 0.5}
             for i in range(4 * 600)]
    records = [(None, orjson.dumps(items[first:first + 20])) for first in range(0, len(items), 20)]
    records += [(None, orjson.dumps({"service": s, "metric": "http", "ok": True, "ts": t0 + 1500})) for s in SERVICES]
    send_records(kafka.bootstrap, topic, records)
    truth = truth_of(items)
    assert read_sli(kafka.bootstrap, make_worker.prefix, truth) == truth
    letters = consume(kafka.bootstrap, f"{make_worker.prefix}deadletter", lambda ev: len(ev) >= 2 * PARTITIONS)
    assert sorted(e["data"]["reason"] for e in letters) == ["invalid_json"] * (2 * PARTITIONS)
    assert {e["data"]["topic"] for e in letters} == {topic}
    assert worker.stop() == 0


def test_a_forward_naming_a_position_past_its_source_end_is_refused_by_the_worker_owning_the_source(
        kafka, make_worker):
    """The worker owns every partition, so the ends it knows of its own reading answer its own
    forwards; a forward naming more than the source holds still goes to the broker, and is refused."""
    worker = make_worker(SLOSTREAM_PARTITIONS=str(PARTITIONS)).start()
    prefix = make_worker.prefix
    t0 = (time.time() - 3600) // 60 * 60
    rng = random.Random(5)
    items = [{"service": SERVICES[i % 4], "metric": "http", "ok": rng.random() > 0.1, "ts": t0 + i * 0.5}
             for i in range(4 * 600)]
    records = [(None, orjson.dumps(items[first:first + 20])) for first in range(0, len(items), 20)]
    send_records(kafka.bootstrap, f"{prefix}measurements", records)
    count = 500
    beyond = (10_000 * ELEMENTS_PER_RECORD) + np.arange(count)  # partition 0 holds a few dozen records
    forward = encode_forwarded([("checkout", "http", [])], np.zeros(count, dtype=np.int64), np.full(count, t0 + 30),
                               np.full(count, np.nan), np.ones(count, dtype=np.int8),
                               np.full(count, -1, dtype=np.int8), beyond, None, t0 + 30)
    send_to(kafka.bootstrap, f"{prefix}repartition", 0, forward, [forward_header(0)])
    markers = [(None, orjson.dumps({"service": s, "metric": "http", "ok": True, "ts": t0 + 1500})) for s in SERVICES]
    send_records(kafka.bootstrap, f"{prefix}measurements", markers)
    truth = truth_of(items)
    assert read_sli(kafka.bootstrap, prefix, truth) == truth
    letters = consume(kafka.bootstrap, f"{prefix}deadletter", lambda ev: len(ev) >= 1)
    assert [e["data"]["reason"] for e in letters] == ["forward_beyond_source"]
    assert worker.stop() == 0


def send_to(bootstrap: str, topic: str, partition: int, value: bytes, headers: list[tuple[str, bytes]]) -> None:
    async def run():
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topic, value, partition=partition, headers=headers)
        finally:
            await producer.stop()

    asyncio.run(run())


def _create_topics(bootstrap: str, *topics: NewTopic) -> None:
    async def create():
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics(list(topics))
        finally:
            await admin.close()

    asyncio.run(create())


def test_a_repartition_topic_not_co_partitioned_with_the_measurements_stops_start_up(kafka, make_worker):
    _create_topics(kafka.bootstrap, NewTopic(f"{make_worker.prefix}measurements", PARTITIONS, 1),
                  NewTopic(f"{make_worker.prefix}repartition", 1, 1))
    worker = make_worker(SLOSTREAM_PARTITIONS=str(PARTITIONS)).start(wait_ready=False)
    assert worker.process.wait(60) == 2
    log = worker.log_path.read_text()
    assert f"topic {make_worker.prefix}repartition has 1 partitions" in log and "Fix: delete topic" in log


def test_an_output_topic_taking_smaller_records_than_max_output_bytes_stops_start_up(kafka, make_worker):
    """Apache Kafka refuses records over a topic's max.message.bytes (Tansu has no limit, but reports
    the setting): a worker that would only find out at a checkpoint stops at start-up instead."""
    _create_topics(kafka.bootstrap, NewTopic(f"{make_worker.prefix}sli", PARTITIONS, 1,
                                            topic_configs={"max.message.bytes": "500000"}))
    worker = make_worker(SLOSTREAM_PARTITIONS=str(PARTITIONS)).start(wait_ready=False)
    assert worker.process.wait(60) == 2
    log = worker.log_path.read_text()
    assert f"topic {make_worker.prefix}sli takes records of at most 500000 bytes" in log
    assert "Fix: set max_output_bytes: 500000" in log


def test_a_state_changelog_taking_smaller_records_than_max_output_bytes_stops_start_up(kafka, make_worker):
    """Faust makes the changelog only once the worker runs: start-up checks it (made first if missing)."""
    changelog = f"{make_worker.prefix}slo-sli-state-changelog"

    _create_topics(kafka.bootstrap, NewTopic(changelog, PARTITIONS, 1, topic_configs={
        "cleanup.policy": "compact", "max.message.bytes": "500000"}))
    worker = make_worker(SLOSTREAM_PARTITIONS=str(PARTITIONS)).start(wait_ready=False)
    assert worker.process.wait(60) == 2
    log = worker.log_path.read_text()
    assert f"field 'max_output_bytes' is 1048576 but topic {changelog} takes records of at most 500000 bytes" in log
    assert "Fix: set max_output_bytes: 500000" in log and "or raise the topic's max.message.bytes" in log


def test_start_up_makes_the_state_changelog_compacted_and_co_partitioned(kafka, make_worker):
    """So its max.message.bytes is known before anything is processed (``ensure_topics``)."""
    settings = load_settings(None, {"SLOSTREAM_BROKER": kafka.url, "SLOSTREAM_TOPIC_PREFIX": make_worker.prefix,
                                    "SLOSTREAM_APP_ID": f"{make_worker.prefix}made",
                                    "SLOSTREAM_PARTITIONS": "3"}, {})
    asyncio.run(ensure_topics(settings))
    changelog = f"{make_worker.prefix}made-sli-state-changelog"

    async def describe():
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
        await admin.start()
        try:
            topic = (await admin.describe_topics([changelog]))[0]
            configs = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, changelog)])
            return len(topic["partitions"]), {entry[0]: entry[1] for response in configs
                                              for resource in response.resources for entry in resource[4]}
        finally:
            await admin.close()

    partitions, configs = asyncio.run(describe())
    assert partitions == 3 and configs.get("cleanup.policy") == "compact"
