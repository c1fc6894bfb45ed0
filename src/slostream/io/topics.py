"""Explicit topic creation: the embedded broker is memory-only and auto-creates 4 partitions."""

from __future__ import annotations

import contextlib

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from slostream.config import ConfigError, Settings
from slostream.io.security import kafka_client_options

TOPIC_NAMES = ("measurements", "repartition", "sli", "deadletter", "alerts", "breaches", "drift", "recommendations",
               "control", "audit")
# Operator commands need one total order, so every worker applies them alike; so do their judgements.
SINGLE_PARTITION = ("control", "audit")


async def ensure_topics(settings: Settings) -> str:
    """Create missing topics; return the cluster id (Tansu calls itself ``tansu_cluster``)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker_hosts, request_timeout_ms=10_000,
                                **kafka_client_options(settings))
    await admin.start()
    try:
        cluster_id = (await admin.describe_cluster()).get("cluster_id") or ""
        existing = set(await admin.list_topics())
        missing = [NewTopic(settings.topic(name), 1 if name in SINGLE_PARTITION else settings.partitions,
                            settings.replication_factor)
                   for name in TOPIC_NAMES if settings.topic(name) not in existing]
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
        return cluster_id
    finally:
        await admin.close()
