"""Which partition owns a series, and forwarded records between partitions.

Every series of a service, and every SLO on it, is owned by one partition::

    owner(service) = (murmur2(utf8(service)) & 0x7fffffff) % partitions

which is what Kafka's default partitioner (the Java client, kafka-python, aiokafka; librdkafka
with ``partitioner=murmur2_random``) does with the service as the record key. Records keyed that
way are read by their owner and take the fast path. Every other measurement (unkeyed records,
records keyed by host, a record read on the wrong partition) is forwarded to its owner, even when
that is the partition it was read on, through the measurement topic itself, in a record marked with the header
``slostream-forwarded-from``: JSON ``{"partition": P, "offsets": [...]}``, the source partition and
each element's source position (offset * 2**24 + index in its array). The receiver applies a
forwarded element only if its position is above the highest it has applied from that partition, so
a source that replays after a crash (and forwards again, perhaps cut differently) adds nothing
twice.

Forwarding goes into the same topic, not a repartition topic of its own, so that each partition
has one log order: per-series lateness and SLO judgements depend on the order measurements arrive
in, and one log replays exactly as it was first read.

>>> owner_of("checkout", 8), owner_of("checkout", 1)
(1, 0)
"""

from __future__ import annotations

import orjson

FORWARD_HEADER = "slostream-forwarded-from"
# Forwarded records stay well under a broker's default 1 MB message limit.
MAX_FORWARD_BYTES = 512 << 10


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``), as a signed 32-bit int."""
    length = len(data)
    m, r = 0x5BD1E995, 24
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    tail = length % 4
    base = length - tail
    if tail >= 3:
        h ^= data[base + 2] << 16
    if tail >= 2:
        h ^= data[base + 1] << 8
    if tail >= 1:
        h ^= data[base]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def owner_of(service: str, partitions: int) -> int:
    """The partition that owns every series and SLO of ``service``."""
    return (murmur2(service.encode()) & 0x7FFFFFFF) % partitions


class Owners:
    """``owner_of`` memoised per service (a batch repeats a few services many times)."""

    __slots__ = ("partitions", "_known")

    def __init__(self, partitions: int):
        self.partitions = partitions
        self._known: dict[str, int] = {}

    def __call__(self, service: str) -> int:
        owner = self._known.get(service)
        if owner is None:
            owner = self._known[service] = owner_of(service, self.partitions)
        return owner


def forwarded_from(headers) -> tuple[int, list[int]] | None:
    """(source partition, source offset of each element) of a forwarded record, else None."""
    for key, value in headers or ():
        if key == FORWARD_HEADER:
            try:
                meta = orjson.loads(value)
                return int(meta["partition"]), [int(o) for o in meta["offsets"]]
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                return None
    return None


def forward_header(partition: int, offsets: list[int]) -> tuple[str, bytes]:
    return FORWARD_HEADER, orjson.dumps({"partition": partition, "offsets": offsets})
