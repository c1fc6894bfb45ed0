"""Control commands in the worker. The worker that owns measurement partition 0 judges every
command of the control topic once, at the wall time it reads it, and writes its audit event
(applied or refused, ``pipeline.envelopes.audit_event``) to the audit topic; every worker applies
to its partitions what the audit topic says (``PartitionProcessor.apply_control``).

What was judged lives in partition 0's state (the control offset it reached, the ids of recent
signed commands, the silences) and moves with partition 0 through the changelog: its next owner
first applies the audit events written since that state's checkpoint, then judges on from there.
So a command is audited once for the whole group, and a restart re-judges nothing (no command is
refused later as expired). Each partition persists the audit offset it applied up to; the reader
starts from the lowest of them, so it holds no log of commands and reads only what some partition
has not applied.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from slostream.config import Settings
from slostream.core.control import ControlAuth, ControlLimits
from slostream.io.fencing import guard_client
from slostream.io.ingest import IngestService, source_record
from slostream.io.security import kafka_client_options
from slostream.pipeline.partition import PartitionProcessor
from slostream.pipeline.types import SourceRecord

log = logging.getLogger("slostream")

JUDGE_PARTITION = 0  # the owner of this measurement partition judges the commands
IDLE_S = 0.5  # how often a worker that does not judge, or has nothing to apply, looks again
RETRY_S = 2.0  # after the broker failed a request
READ_MAX_RECORDS = 500


def control_consumer(settings: Settings) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(bootstrap_servers=settings.broker_hosts, enable_auto_commit=False,
                            auto_offset_reset="earliest", fetch_max_wait_ms=settings.fetch_max_wait_ms,
                            **kafka_client_options(settings))


def audit_producer(settings: Settings) -> AIOKafkaProducer:
    # Each audit event is sent alone and awaited: its offset is known, and every batch is of one
    # record (Tansu reports a partition's end from the first record of its last batch).
    return AIOKafkaProducer(bootstrap_servers=settings.broker_hosts, acks="all", linger_ms=0,
                            max_request_size=settings.max_output_bytes, **kafka_client_options(settings))


class ControlService:
    """The judge (while this worker owns partition 0) and the reader of the audit topic."""

    def __init__(self, ingest: IngestService, settings: Settings):
        self.ingest = ingest
        self.settings = settings
        self.auth = ControlAuth(settings.control_keys)
        self.limits = ControlLimits(settings.max_silence_s, settings.max_silences)
        self.control = TopicPartition(settings.topic("control"), 0)
        self.audit = TopicPartition(settings.topic("audit"), 0)
        self.judged: Counter[tuple[str, str]] = Counter()  # (outcome, reason) of the commands judged here
        # The processor of partition 0 judged with (a new one: this worker became the judge), and
        # the end of the audit topic it must have applied before it judges.
        self._judging: PartitionProcessor | None = None
        self._audit_end = 0
        if not self.auth.enabled:
            log.warning("control_keys is not set: control commands are applied unsigned, so anyone who can write "
                        "%s can silence every alert (see README, Signed control commands)", self.control.topic)

    async def judge(self) -> None:
        """Judge the control topic while this worker owns partition 0, from where its state ends."""
        consumer, producer = control_consumer(self.settings), audit_producer(self.settings)
        guard_client(producer.client, self.ingest.lease)  # a fenced worker's verdicts never reach the broker
        await consumer.start()
        await producer.start()
        try:
            consumer.assign([self.control])
            while True:
                try:
                    await self._judge_batch(consumer, producer)
                except KafkaError as exc:  # the broker is away: nothing was judged that is not audited
                    log.warning("control commands: %r; judging again in %g s", exc, RETRY_S)
                    self._judging = None  # read the audit topic's end, and seek, again
                    await asyncio.sleep(RETRY_S)
        finally:
            await producer.stop()
            await consumer.stop()

    async def _judge_batch(self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer) -> None:
        proc = self.ingest.processors.get(JUDGE_PARTITION)
        if proc is not self._judging and proc is not None:  # (again) the owner: apply what was audited first
            self._audit_end = (await consumer.end_offsets([self.audit]))[self.audit]
            consumer.seek(self.control, proc.control_offset + 1)
        self._judging = proc
        if proc is None or proc.audit_offset + 1 < self._audit_end:
            await asyncio.sleep(IDLE_S)
            return
        batch = await consumer.getmany(self.control, timeout_ms=1000, max_records=READ_MAX_RECORDS)
        for record in batch.get(self.control, []):
            end = await self._judge_one(producer, proc, record)
            if end is None:  # partition 0 moved: its next judge seeks for itself
                return
            self._audit_end = end
            if proc.audit_offset + 1 < end:  # partition 0 applies it when read back: judge the next after that
                consumer.seek(self.control, record.offset + 1)
                return

    async def _judge_one(self, producer: AIOKafkaProducer, proc: PartitionProcessor,
                         record: ConsumerRecord) -> int | None:
        """Judge and audit one command; the audit topic's end after it (None: partition 0 moved, so
        nothing was judged). A command at or before the offset partition 0 has applied was judged
        already; offsets may skip (retention, transaction markers). The lock is held until the audit
        event is written: a revoke of partition 0 waits for it, so its next owner sees it."""
        async with self.ingest.lock:
            if self.ingest.processors.get(JUDGE_PARTITION) is not proc or not self.ingest.writing():
                return None
            if record.offset <= proc.control_offset:
                return self._audit_end
            key, event = proc.judge_control(
                source_record(record.topic, record.partition, record.offset, record.timestamp, record.key,
                              record.value, ()), time.time(), self.auth, self.limits)
            value = orjson.dumps(event)
            written = await producer.send_and_wait(self.audit.topic, value, key=key, headers=self.ingest.outputs.writer)
            data = event["data"]
            self.judged["applied" if data["reason"] is None else "refused", data["reason"] or ""] += 1
            if data["reason"] is not None:
                log.warning("control command at offset %d refused (%s): %s", record.offset, data["reason"],
                            data["message"])
            if proc.audit_offset + 1 == written.offset:  # in sequence: partition 0 applies it now, not when read
                await self._apply(proc, source_record(self.audit.topic, 0, written.offset, written.timestamp, key,
                                                      value, ()))
            return written.offset + 1

    async def apply_audited(self) -> None:
        """Apply the audit topic to every partition of this worker, from the oldest position among them."""
        consumer = control_consumer(self.settings)
        await consumer.start()
        try:
            consumer.assign([self.audit])
            while True:
                try:
                    await self._apply_batch(consumer)
                except KafkaError as exc:
                    log.warning("audit topic: %r; reading again in %g s", exc, RETRY_S)
                    await asyncio.sleep(RETRY_S)
        finally:
            await consumer.stop()

    async def _apply_batch(self, consumer: AIOKafkaConsumer) -> None:
        processors = self.ingest.processors
        if not processors:
            await asyncio.sleep(IDLE_S)
            return
        needed = min(proc.audit_offset for proc in processors.values()) + 1
        if await consumer.position(self.audit) != needed:
            consumer.seek(self.audit, needed)
        batch = await consumer.getmany(self.audit, timeout_ms=1000, max_records=READ_MAX_RECORDS)
        records = [source_record(r.topic, r.partition, r.offset, r.timestamp, r.key, r.value, ())
                   for r in batch.get(self.audit, [])]
        if records:
            async with self.ingest.lock:
                for record in records:
                    for proc in list(self.ingest.processors.values()):
                        await self._apply(proc, record)

    async def _apply(self, proc: PartitionProcessor, record: SourceRecord) -> None:
        """One audit record to one partition (under the processing lock): a recommend over many
        series comes in slices, with the event loop free between them."""
        await self.ingest.emit_parts(proc, proc.apply_control(record))
