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

from slostream.config import RECORD_OVERHEAD_BYTES
from slostream.io.fencing import Fenced, GroupLease, guard_client

log = logging.getLogger("slostream")

# How long a batch may wait for the broker before it fails (aiokafka has no separate delivery
# timeout: its request timeout is also each batch's lifetime). Through a broker outage the outputs
# wait; a worker cut off for longer than its session timeout is fenced (``io.fencing``) and drops
# them instead, so this only needs to outlast any outage (it fits the protocol's int32 milliseconds).
DELIVERY_TIMEOUT_MS = 7 * 24 * 3600 * 1000
# How long a stopping worker waits for batches already on the wire (queued ones fail at once): an
# unresponsive broker (up, but not answering) would hold them for the delivery timeout. None of them
# is covered by a commit, so the next owner sends them again.
STOP_TIMEOUT_S = 5.0
# Every output and changelog record names the worker that wrote it and its group generation,
# ``host/pid/generation`` (a zombie's writes can be told).
WRITER_HEADER = "slostream-writer"


def writer_id() -> str:
    """This worker's process, as its records name it (``WRITER_HEADER``: this, a slash, its generation)."""
    return f"{socket.gethostname()}/{os.getpid()}"
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

    def __init__(self, hosts: list[str], lone_forwards: bool, client_options: dict[str, Any], max_output_bytes: int,
                 lease: GroupLease, **kwargs: Any):
        """``client_options``: security keyword arguments for both producers (``security.kafka_client_options``);
        ``lease``: while it is held, this worker may write (``io.fencing``)."""
        super().__init__(**kwargs)
        self.hosts = hosts
        self.client_options = client_options
        self.lone_forwards = lone_forwards
        self.lease = lease
        self._writer_id = writer_id()
        self._writer: tuple[int, list[tuple[str, bytes]]] = (-2, [])
        self.max_output_bytes = max_output_bytes
        # (topic, key, value) of each record not sent because it is over max_output_bytes; the
        # caller replaces each with a dead letter naming it (``take_refused``).
        self._refused: list[tuple[str, bytes | None, bytes]] = []
        self._outputs_topics: set[str] = set()
        self._forward_topics: set[str] = set()
        self.producer: AIOKafkaProducer | None = None
        self.forwards: AIOKafkaProducer | None = None
        # (topic, the lease's lapses when the send began, delivery) of the sends since the last flush
        self._unconfirmed: list[tuple[str, int, asyncio.Future]] = []

    async def on_start(self) -> None:
        # aiokafka binds to the running loop, so the producers are made here.
        # No batch, and no request, is larger than the broker takes (max_output_bytes): a record
        # larger than max_batch_size gets a batch of its own, and no record is larger (``_fits``).
        batch_size = min(1 << 20, self.max_output_bytes)
        self.producer = AIOKafkaProducer(bootstrap_servers=self.hosts, linger_ms=2, acks="all",
                                         max_batch_size=batch_size, max_request_size=self.max_output_bytes,
                                         request_timeout_ms=DELIVERY_TIMEOUT_MS, **self.client_options)
        self.forwards = AIOKafkaProducer(bootstrap_servers=self.hosts, linger_ms=2, acks="all",
                                         max_batch_size=64 if self.lone_forwards else batch_size,
                                         max_request_size=self.max_output_bytes, request_timeout_ms=DELIVERY_TIMEOUT_MS,
                                         **self.client_options)
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
        try:
            await asyncio.wait_for(asyncio.gather(self.producer.stop(), self.forwards.stop()), STOP_TIMEOUT_S)
        except TimeoutError:
            log.warning("output batches still unanswered %.0f s into the stop (the broker does not answer): "
                        "dropped; the next owner sends them again", STOP_TIMEOUT_S)

    def _fits(self, topic: str, key: bytes | None, value: bytes | None) -> bool:
        """Whether a record is small enough for the broker; one that is not is kept to be refused."""
        if len(key or b"") + len(value or b"") + RECORD_OVERHEAD_BYTES <= self.max_output_bytes:
            return True
        log.error("output to %s of %d bytes is over max_output_bytes (%d): not sent, dead-lettered", topic,
                  len(value or b""), self.max_output_bytes)
        self._refused.append((topic, key, value or b""))
        return False

    def take_refused(self) -> list[tuple[str, bytes | None, bytes]]:
        """The records not sent for their size since the last call: (topic, key, value)."""
        refused, self._refused = self._refused, []
        return refused

    async def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        lapses = self._lease_lapses()
        if self._fits(topic, key, value):
            self._unconfirmed.append((topic, lapses, await self.producer.send(topic, value, key=key,
                                                                              headers=self.writer)))

    async def send_keyed(self, topic: str, records: Iterable[tuple[bytes, bytes]]) -> None:
        """Records, each to the partition Kafka's default partitioner gives its key (``send_batches``)."""
        lapses = self._lease_lapses()
        partitions = sorted(await self.producer.partitions_for(topic))
        deliveries = await self.send_batches(topic, ((partitions[key_hash(key) % len(partitions)], key, value)
                                                     for key, value in records))
        self._unconfirmed += ((topic, lapses, delivery) for delivery in deliveries)

    async def send_batches(self, topic: str, records: Iterable[tuple[int, bytes, bytes | None]],
                           tombstone_refused: bool = False) -> list[asyncio.Future]:
        """Records (partition, key, value; a None value is a tombstone), appended in order to one
        batch per partition rather than sent one by one (a send and a future each cost more than the
        record itself): the futures of the batches' delivery. Values made as ``records`` is read
        are freed once appended: orjson's results each hold a 4-8 kB buffer, and a list of them
        costs four times the encoding in page faults. A record over ``max_output_bytes`` is not
        sent (``take_refused``); with ``tombstone_refused`` (state) a tombstone goes in its place,
        so that a restore starts its key afresh rather than from an older value."""
        self._lease_lapses()
        batches: dict[int, Any] = {}
        sent = []
        writer = self.writer
        for number, (partition, key, value) in enumerate(records, 1):
            if value is not None and not self._fits(topic, key, value):
                if not tombstone_refused:
                    continue
                value = None
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
        if self._fits(topic, None, value):
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
