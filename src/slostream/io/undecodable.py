"""Skip record batches that cannot be decoded, instead of crash-looping on them.

aiokafka decodes a fetched batch lazily, inside ``getmany``. A corrupt batch (bad CRC) or one
compressed with a codec it cannot read raises there, and it raises again at the same offset after
every restart. Worse, the records of other partitions drained in the same call are lost with the
exception. This replaces aiokafka's per-partition record iterator with one that decodes batch by
batch, skips a batch that fails, and reports it (topic, partition, offsets, error), so the
partition moves on past it and every other partition keeps working.

It also builds the records of slostream's own input topics (measurements, repartition) with a factory of the caller's
instead of aiokafka's ``ConsumerRecord`` (a dataclass of eleven fields, about a microsecond each:
a fifth of the cost of a one-measurement record).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiokafka.consumer import fetcher
from aiokafka.errors import CorruptRecordException

log = logging.getLogger("slostream")

# (topic, partition, first offset, next offset, error)
SkipReport = Callable[[str, int, int, int, str], None]
# (topic, partition, offset, timestamp in ms, key, value, headers) -> the record handed on
RecordFactory = Callable[[str, int, int, int, Any, Any, tuple], Any]


class SkippingPartitionRecords(fetcher.PartitionRecords):
    """aiokafka's iterator for one partition's fetched records (read_uncommitted, as slostream reads),
    decoding each batch whole before yielding it, so a batch that fails is skipped as a unit."""

    report: SkipReport | None = None
    own_topics: frozenset[str] = frozenset()
    make_record: RecordFactory | None = None

    def _unpack_records(self):
        tp = self._tp
        records = self._records
        while records.has_next():
            batch = records.next_batch()
            try:
                if self._check_crcs and not batch.validate_crc():
                    raise CorruptRecordException(f"Invalid CRC - {tp}")
                if batch.is_control_batch:
                    self.next_fetch_offset = batch.next_offset
                    continue
                if tp.topic in SkippingPartitionRecords.own_topics:
                    make, topic, partition = SkippingPartitionRecords.make_record, tp.topic, tp.partition
                    decoded = [make(topic, partition, record.offset, record.timestamp, record.key, record.value,
                                    tuple(record.headers))
                               for record in batch if record.offset >= self.next_fetch_offset]
                else:
                    decoded = [self._consumer_record(tp, record) for record in batch
                               if record.offset >= self.next_fetch_offset]
            except Exception as exc:
                first, after = batch.base_offset, batch.next_offset
                log.error("skipping undecodable record batch of %s partition %d, offsets %d-%d: %s",
                          tp.topic, tp.partition, first, after - 1, exc)
                if SkippingPartitionRecords.report is not None:
                    SkippingPartitionRecords.report(tp.topic, tp.partition, first, after, str(exc))
                self.next_fetch_offset = after
                continue
            for record in decoded:
                self.next_fetch_offset = record.offset + 1
                yield record
            self.next_fetch_offset = batch.next_offset


def install(report: SkipReport, own_topics: tuple[str, ...], make_record: RecordFactory) -> None:
    """Make aiokafka's fetcher use the skipping iterator, with ``make_record`` building the records
    of ``own_topics`` (process-wide: one worker per process)."""
    SkippingPartitionRecords.report = staticmethod(report)
    SkippingPartitionRecords.own_topics = frozenset(own_topics)
    SkippingPartitionRecords.make_record = staticmethod(make_record)
    fetcher.PartitionRecords = SkippingPartitionRecords
