"""Explicit topic creation: the embedded broker is memory-only and auto-creates 4 partitions."""

from __future__ import annotations

import contextlib
import logging

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from slostream.config import ConfigError, Settings
from slostream.io.producer import WRITER_HEADER, writer_id
from slostream.io.security import kafka_client_options
from slostream.pipeline.state_keys import fence_key

TOPIC_NAMES = ("measurements", "repartition", "sli", "deadletter", "alerts", "breaches", "drift", "recommendations",
               "control", "audit")
# Operator commands need one total order, so every worker applies them alike; so do their judgements.
SINGLE_PARTITION = ("control", "audit")
# The topics workers write, besides the state changelog.
WRITTEN_TOPICS = ("repartition", "sli", "deadletter", "alerts", "breaches", "drift", "recommendations", "audit")
STATE_TABLE = "sli-state"  # the Faust table of the pipeline's state

log = logging.getLogger("slostream")


def changelog_topic(settings: Settings) -> str:
    """The state table's changelog, as Faust names it."""
    return f"{settings.app_id}-{STATE_TABLE}-changelog"


async def ensure_topics(settings: Settings) -> str:
    """Create missing topics; return the cluster id (Tansu calls itself ``tansu_cluster``). The state
    changelog is made here as Faust would make it (compacted, co-partitioned), so that its record
    size limit is checked before anything is processed."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker_hosts, request_timeout_ms=10_000,
                                **kafka_client_options(settings))
    await admin.start()
    try:
        cluster_id = (await admin.describe_cluster()).get("cluster_id") or ""
        existing = set(await admin.list_topics())
        missing = [NewTopic(settings.topic(name), 1 if name in SINGLE_PARTITION else settings.partitions,
                            settings.replication_factor)
                   for name in TOPIC_NAMES if settings.topic(name) not in existing]
        if changelog_topic(settings) not in existing:
            missing.append(NewTopic(changelog_topic(settings), settings.partitions, settings.replication_factor,
                                    topic_configs={"cleanup.policy": "compact"}))
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
        for name in ("measurements", "repartition"):
            topic = settings.topic(name)
            if topic not in existing:
                continue
            count = len((await admin.describe_topics([topic]))[0]["partitions"])
            if count == settings.partitions:
                continue
            fix = (f"set partitions: {count} (state is co-partitioned with the topic)" if name == "measurements" else
                   f"delete topic {topic} while no worker runs; it is made again with as many partitions as the "
                   f"measurements (it is co-partitioned with them)")
            raise ConfigError(f"field 'partitions' is {settings.partitions} but topic {topic} has {count} "
                              f"partitions. Fix: {fix}.")
        await _check_message_limits(admin, settings)
        return cluster_id
    finally:
        await admin.close()


async def fence_changelog(settings: Settings) -> None:
    """End each state changelog partition with a one-record batch before Faust recovers it. Tansu
    reports a partition's end from the first record of its last batch, and Faust recovers only up to
    that end; every checkpoint ends with such a fence, but a worker that stopped while the broker was
    frozen can leave its last changelog batch on the wire, to land without one when the broker
    resumes: its successor then restored that partition without its state. Restore ignores fences."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.broker_hosts, linger_ms=0, **kafka_client_options(settings))
    await producer.start()
    try:
        writer = [(WRITER_HEADER, f"{writer_id()}/-1".encode())]  # before any generation
        for partition in range(settings.partitions):
            await producer.send_and_wait(changelog_topic(settings), b"", key=fence_key(partition).encode(),
                                         partition=partition, headers=writer)
    finally:
        await producer.stop()


async def _check_message_limits(admin: AIOKafkaAdminClient, settings: Settings) -> None:
    """Stop start-up when a topic the workers write takes smaller records than ``max_output_bytes``:
    the broker would refuse an output at a checkpoint, where a batch does not say which record it
    refused, and the worker would stop there instead of dead-lettering it."""
    topics = [settings.topic(name) for name in WRITTEN_TOPICS] + [changelog_topic(settings)]
    try:
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t) for t in topics])
    except KafkaError as exc:  # a broker that does not say: max_output_bytes is the operator's word
        log.info("could not read the topics' max.message.bytes (%r); max_output_bytes is %d", exc,
                 settings.max_output_bytes)
        return
    # resources: (error code, message, type, name, entries); entries: (name, value, ...)
    limits = {resource[3]: int(entry[1]) for response in responses for resource in response.resources
              for entry in resource[4] if entry[0] == "max.message.bytes" and entry[1]}
    for topic, limit in sorted(limits.items()):
        if limit < settings.max_output_bytes:
            raise ConfigError(f"field 'max_output_bytes' is {settings.max_output_bytes} but topic {topic} takes "
                              f"records of at most {limit} bytes (max.message.bytes). Fix: set max_output_bytes: "
                              f"{limit} (and max_deadletter_bytes at most {(limit - 4096) // 5}), or raise the "
                              f"topic's max.message.bytes.")
