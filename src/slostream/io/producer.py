"""The worker's output producer: events keyed as Kafka's default partitioner would, forwarded
measurements to their owner's partition, and a flush that reports what the broker refused."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
from collections.abc import Iterable
from typing import Any

import mode
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

from slostream.io.fencing import Fenced, GroupLease, guard_client

log = logging.getLogger("slostream")

# How long a batch may wait for the broker before it fails (aiokafka has no separate delivery
# timeout: its request timeout is also each batch's lifetime). Through a broker outage the outputs
# wait; a worker cut off for longer than its session timeout is fenced (``io.fencing``) and drops
# them instead, so this only needs to outlast any outage (it fits the protocol's int32 milliseconds).
DELIVERY_TIMEOUT_MS = 7 * 24 * 3600 * 1000
# Every output and changelog record names the worker that wrote it and its group generation,
# ``host/pid/generation`` (a zombie's writes can be told).
WRITER_HEADER = "slostream-writer"
# A checkpoint yields to the event loop after this many state writes (about 0.1 s of serialising).
YIELD_EVERY_WRITES = 500


@functools.lru_cache(maxsize=1 << 18)
def key_hash(key: bytes) -> int:
    """Kafka's default partitioner's hash of a record key (murmur2, positive); the same keys recur
    on every window. The cache holds more keys than a worker's 100,000 series (an LRU cache cycled
    through more keys than it holds misses every time), about 200 bytes each."""
    return murmur2(key) & 0x7FFFFFFF


class NotDelivered(Exception):
    """The broker refused output events (after aiokafka's retries)."""


class OutputProducer(mode.Service):
    """Producers for the output topics and the state changelog (fenced at each checkpoint), and
    for forwarded measurements.

    Tansu reports a partition's end offset from the first record of its last batch and then holds
    each fetch for the whole wait: with ``lone_forwards`` every forwarded record (many measurements
    already) goes in a batch of its own, so the owner reading them is not stalled by that quirk.

    Every topic either producer writes is tracked by its client from the start (``track``).
    aiokafka's client asks for metadata of the topics it tracks only, and a send to a topic already
    in its metadata does not track it: once a newer topic (the changelog, made after the producer
    started) was tracked, the next refresh dropped the output topics from the metadata, and their
    pending batches waited for a leader until they expired, 40 s later (seen on Tansu as stalled
    checkpoints, late SLI events and lost dead letters).
    """

    def __init__(self, hosts: list[str], lone_forwards: bool, lease: GroupLease, **kwargs: Any):
        super().__init__(**kwargs)
        self.hosts = hosts
        self.lone_forwards = lone_forwards
        self.lease = lease
        self._writer_id = f"{socket.gethostname()}/{os.getpid()}"
        self._writer: tuple[int, list[tuple[str, bytes]]] = (-2, [])
        self._outputs_topics: set[str] = set()
        self._forward_topics: set[str] = set()
        self.producer: AIOKafkaProducer | None = None
        self.forwards: AIOKafkaProducer | None = None
        # (topic, the lease's lapses when the send began, delivery) of the sends since the last flush
        self._unconfirmed: list[tuple[str, int, asyncio.Future]] = []

    async def on_start(self) -> None:
        # aiokafka binds to the running loop, so the producers are made here.
        self.producer = AIOKafkaProducer(bootstrap_servers=self.hosts, linger_ms=2, acks="all",
                                         max_batch_size=1 << 20, max_request_size=4 << 20,
                                         request_timeout_ms=DELIVERY_TIMEOUT_MS)
        # A record larger than max_batch_size gets a batch of its own.
        self.forwards = AIOKafkaProducer(bootstrap_servers=self.hosts, linger_ms=2, acks="all",
                                         max_batch_size=64 if self.lone_forwards else 1 << 20,
                                         max_request_size=4 << 20, request_timeout_ms=DELIVERY_TIMEOUT_MS)
        guard_client(self.producer.client, self.lease)
        guard_client(self.forwards.client, self.lease)
        await self.producer.start()
        await self.forwards.start()
        for topic in self._outputs_topics:
            self.producer.client.add_topic(topic)
        for topic in self._forward_topics:
            self.forwards.client.add_topic(topic)
        await asyncio.gather(self.producer.client.force_metadata_update(), self.forwards.client.force_metadata_update())

    @property
    def writer(self) -> list[tuple[str, bytes]]:
        """The ``WRITER_HEADER`` of this worker's records now (made once per generation)."""
        generation = self.lease.generation
        if self._writer[0] != generation:
            self._writer = (generation, [(WRITER_HEADER, f"{self._writer_id}/{generation}".encode())])
        return self._writer[1]

    def track(self, outputs: Iterable[str], forwards: Iterable[str]) -> None:
        """The topics the producers will write (before the service starts)."""
        self._outputs_topics.update(outputs)
        self._forward_topics.update(forwards)

    async def on_stop(self) -> None:
        # What the final checkpoint did not cover is replayed by the next owner anyway; through a
        # broker outage, stopping must not wait for it (batches in flight fail with the lease).
        self.abandon()
        await self.producer.stop()
        await self.forwards.stop()

    async def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        lapses = self._lease_lapses()
        self._unconfirmed.append((topic, lapses, await self.producer.send(topic, value, key=key, headers=self.writer)))

    async def send_keyed(self, topic: str, records: Iterable[tuple[bytes, bytes]]) -> None:
        """Records, each to the partition Kafka's default partitioner gives its key (``send_batches``)."""
        lapses = self._lease_lapses()
        partitions = sorted(await self.producer.partitions_for(topic))
        deliveries = await self.send_batches(topic, ((partitions[key_hash(key) % len(partitions)], key, value)
                                                     for key, value in records))
        self._unconfirmed += ((topic, lapses, delivery) for delivery in deliveries)

    async def send_batches(self, topic: str,
                           records: Iterable[tuple[int, bytes, bytes | None]]) -> list[asyncio.Future]:
        """Records (partition, key, value; a None value is a tombstone), appended in order to one
        batch per partition rather than sent one by one (a send and a future each cost more than the
        record itself): the futures of the batches' delivery. Values made as ``records`` is read
        are freed once appended: orjson's results each hold a 4-8 kB buffer, and a list of them
        costs four times the encoding in page faults."""
        self._lease_lapses()
        batches: dict[int, Any] = {}
        sent = []
        writer = self.writer
        for number, (partition, key, value) in enumerate(records, 1):
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = self.producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None, headers=writer) is None:  # full
                sent.append(await self.producer.send_batch(batch, topic, partition=partition))
                batch = batches[partition] = self.producer.create_batch()
                batch.append(key=key, value=value, timestamp=None, headers=writer)
            if number % YIELD_EVERY_WRITES == 0:
                await asyncio.sleep(0)
        for partition, batch in batches.items():
            sent.append(await self.producer.send_batch(batch, topic, partition=partition))
        return sent

    async def forward(self, topic: str, partition: int, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        lapses = self._lease_lapses()
        self._unconfirmed.append((topic, lapses, await self.forwards.send(topic, value, partition=partition,
                                                                          headers=headers)))

    def _lease_lapses(self) -> int:
        """The lease's lapses as a send begins; without the lease it is refused at once (``Fenced``):
        a send that waited through an outage must not go out in the lease's next term."""
        if not self.lease.held():
            raise Fenced("this worker's group lease ran out")
        return self.lease.lapses

    def abandon(self) -> None:
        """Fail every output still queued (``Fenced``): the lease ran out, so their partitions' new
        owner replays and sends them. A batch in flight is left to the sender: a retry is refused by
        the guarded client, which fails it too."""
        for producer in (self.producer, self.forwards):
            accumulator = producer._message_accumulator
            queued = [batch for queue in accumulator._batches.values() for batch in queue]
            accumulator._batches.clear()
            for batch in queued:
                batch.failure(Fenced("this worker's group lease ran out"))
        for _, _, delivery in self._unconfirmed:
            if delivery.done():
                delivery.exception()  # seen: nobody waits for these any more
        self._unconfirmed = []

    async def flush(self) -> None:
        """Wait until every output sent since the last flush is delivered; raise ``NotDelivered`` if
        the broker refused any (aiokafka's own flush waits but does not say). A send begun before the
        lease last ran out is not counted: it came from state the fence dropped (it may have waited
        in aiokafka through a whole outage, and failed only after the rejoin)."""
        sent, self._unconfirmed = self._unconfirmed, []  # sends made while this waits: the next flush's
        await self.producer.flush()
        await self.forwards.flush()
        lapses = self.lease.lapses
        failed = [(topic, future.exception()) for topic, began, future in sent
                  if future.exception() is not None and began == lapses]
        if failed:
            raise NotDelivered(f"{len(failed)} of {len(sent)} output sends failed, the first to {failed[0][0]} "
                               f"with {failed[0][1]!r}")
