"""Skip record batches that cannot be decoded, instead of crash-looping on them.

aiokafka decodes a fetched batch lazily, inside ``getmany``. A corrupt batch (bad CRC) or one
compressed with a codec it cannot read raises there, and it raises again at the same offset after
every restart. Worse, the records of other partitions drained in the same call are lost with the
exception. This replaces aiokafka's per-partition record iterator with one that decodes batch by
batch, skips a batch that fails, and reports it (topic, partition, offsets, error), so the
partition moves on past it and every other partition keeps working.

A compressed batch is inflated with a cap (``max_batch_bytes``): aiokafka inflates a batch whole,
so a small batch that inflates to gigabytes (a decompression bomb) would take the worker's memory.
One over the cap is skipped as too large, having held at most the cap.

Every consumer in the process skips such batches, but only the worker's own reads report them: a
consumer that reads a topic again (the read-back of a forward's source record) fetches inside
``unreported()``, or the batch would be counted and dead-lettered twice.

It also builds the records of slostream's own input topics (measurements, repartition) with a factory of the caller's
instead of aiokafka's ``ConsumerRecord`` (a dataclass of eleven fields, about a microsecond each:
a fifth of the cost of a one-measurement record).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import struct
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import cramjam
import numpy as np
from aiokafka import codec
from aiokafka.consumer import fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record import default_records
from aiokafka.record._crecords import default_records as c_default_records

log = logging.getLogger("slostream")

# gzip is inflated this many bytes at a time.
INFLATE_CHUNK_BYTES = 1 << 20
# (topic, partition, first offset, next offset, error, whether it was too large)
SkipReport = Callable[[str, int, int, int, str, bool], None]
# (topic, partition, offset, timestamp in ms, key, value, headers) -> the record handed on
RecordFactory = Callable[[str, int, int, int, Any, Any, tuple], Any]

# Whether a skipped batch is reported: aiokafka decodes a batch in the task that calls getmany.
_reporting: contextvars.ContextVar[bool] = contextvars.ContextVar("reporting_undecodable", default=True)


@contextlib.contextmanager
def unreported() -> Iterator[None]:
    """Batches this task's fetches skip are logged but not reported: a second read of what the
    worker's consumer reads (and reports) already."""
    token = _reporting.set(False)
    try:
        yield
    finally:
        _reporting.reset(token)


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
                if SkippingPartitionRecords.report is not None and _reporting.get():
                    SkippingPartitionRecords.report(tp.topic, tp.partition, first, after, str(exc),
                                                    isinstance(exc, BatchTooLarge))
                self.next_fetch_offset = after
                continue
            for record in decoded:
                self.next_fetch_offset = record.offset + 1
                yield record
            self.next_fetch_offset = batch.next_offset


class BatchTooLarge(ValueError):
    """A compressed batch inflates to more than ``max_batch_bytes``."""


class _Inflate:
    """Bounded replacements of aiokafka's batch decompressors (``codec``), each raising
    ``BatchTooLarge`` once the output would pass ``limit`` bytes, having held at most that."""

    limit = 64 << 20

    @classmethod
    def _too_large(cls, codec_name: str) -> BatchTooLarge:
        return BatchTooLarge(f"{codec_name} batch inflates to more than max_batch_bytes ({cls.limit} bytes)")

    @classmethod
    def gzip(cls, payload) -> bytes:
        """Every gzip member in turn (as Python's GzipFile reads them), at most ``limit`` bytes, in
        chunks (zlib's own output buffer would hold the output twice while it joins its blocks)."""
        parts, size, data = [], 0, bytes(payload)
        while data:
            inflater = zlib.decompressobj(wbits=47)  # a gzip or zlib header
            while not inflater.eof:
                part = inflater.decompress(data, INFLATE_CHUNK_BYTES)
                size += len(part)
                if size > cls.limit:
                    raise cls._too_large("gzip")
                parts.append(part)
                data = inflater.unconsumed_tail
                if not part and not data:
                    raise zlib.error("gzip stream ends early")
            data = inflater.unused_data
        return b"".join(parts)

    @classmethod
    def _into(cls, codec_name: str, payload) -> bytes:
        """lz4 and zstd frames: into a buffer of ``limit`` bytes (its pages only touched as written)."""
        out = np.empty(cls.limit + 1, dtype=np.uint8)
        try:
            size = getattr(cramjam, codec_name).decompress_into(bytes(payload), out)
        except cramjam.DecompressionError as exc:
            if "whole buffer" in str(exc):
                raise cls._too_large(codec_name) from None
            raise
        if size > cls.limit:
            raise cls._too_large(codec_name)
        return out[:size].tobytes()

    @classmethod
    def lz4(cls, payload) -> bytes:
        return cls._into("lz4", payload)

    @classmethod
    def zstd(cls, payload) -> bytes:
        return cls._into("zstd", payload)

    @classmethod
    def snappy(cls, payload) -> bytes:
        """Snappy blocks state their inflated length: their sum is checked before any is inflated."""
        data = memoryview(payload)
        if codec._detect_xerial_stream(data):
            size, at = 0, 16
            while at + 4 <= len(data):
                block = struct.unpack_from("!i", data, at)[0]
                size += cramjam.snappy.decompress_raw_len(bytes(data[at + 4:at + 4 + block]))
                at += 4 + block
        else:
            size = cramjam.snappy.decompress_raw_len(bytes(data))
        if size > cls.limit:
            raise cls._too_large("snappy")
        return codec.snappy_decode(payload)


def install(report: SkipReport, own_topics: tuple[str, ...], make_record: RecordFactory,
            max_batch_bytes: int) -> None:
    """Make aiokafka's fetcher use the skipping iterator, with ``make_record`` building the records
    of ``own_topics``, and its batches inflate to at most ``max_batch_bytes`` (process-wide: one
    worker per process)."""
    SkippingPartitionRecords.report = staticmethod(report)
    SkippingPartitionRecords.own_topics = frozenset(own_topics)
    SkippingPartitionRecords.make_record = staticmethod(make_record)
    fetcher.PartitionRecords = SkippingPartitionRecords
    _Inflate.limit = max_batch_bytes
    # Both record batch implementations (the C extension and pure Python) look these up by name.
    for module in (default_records, c_default_records):
        module.gzip_decode, module.lz4_decode = _Inflate.gzip, _Inflate.lz4
        module.zstd_decode, module.snappy_decode = _Inflate.zstd, _Inflate.snappy
