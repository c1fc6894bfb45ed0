"""Which partition owns a series, and forwarded records between partitions.

Every series of a service, and every SLO on it, is owned by one partition::

    owner(service) = (murmur2(utf8(service)) & 0x7fffffff) % partitions

which is what Kafka's default partitioner (the Java client, kafka-python, aiokafka; librdkafka
with ``partitioner=murmur2_random``) does with the service as the record key. Records keyed that
way are read by their owner and take the fast path. Every other measurement (unkeyed records,
records keyed by host, a record read on the wrong partition) is forwarded to its owner, even when
that is the partition it was read on, through the internal repartition topic (``<prefix>repartition``,
as many partitions as the measurement topic, co-partitioned with it: its partition p is read by
the owner of measurement partition p; only workers write it, as Kafka Streams' repartition topics),
in a record marked with the header ``slostream-forwarded-from`` (the source partition) whose value
is ``Forwarded``:
columns in msgpack, decoded without JSON or an object per measurement. Each measurement carries its
source position (offset * 2**24 + index in its array); the receiver applies it only if that is
above the highest it has applied from that partition, so a source that replays after a crash (and
forwards again, perhaps cut differently) adds nothing twice.

Headers on the measurement topic carry no authority: a producer writing one of these headers there
writes an ordinary measurement record. A forward naming a source position that its source
partition does not hold yet is refused. The owner keeps a replay mark per series for each of its
two logs (the measurement partition and the repartition partition), so a replay of either after a
crash adds nothing twice.

>>> owner_of("checkout", 8), owner_of("checkout", 1)
(2, 0)
"""

from __future__ import annotations

import msgspec
import numpy as np

from slostream.core.measurement import MAX_ABS_VALUE, MAX_PLAUSIBLE_TS

FORWARD_HEADER = "slostream-forwarded-from"
FORMAT_VERSION = 1
# Forwarded records stay well under a broker's default 1 MB message limit.
MAX_FORWARD_BYTES = 512 << 10
# An owner applies a forwarded record at once, and its cost grows with the series in it (a bucket
# opened and a window closed each): 2,000 series of sparse data are about a quarter of a second with
# its event loop held. Dense series (many measurements each) are not cut by it. A series is counted
# in the forward holding its first measurement of the batch.
MAX_FORWARD_SERIES = 2000


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
    """``owner_of`` memoised per service (a batch repeats a few services many times), for at most
    ``MEMO_LIMIT`` services: the memo starts afresh when full, so services long gone (evicted, or
    owned elsewhere) are not kept for ever."""

    __slots__ = ("partitions", "_known")
    MEMO_LIMIT = 1 << 16

    def __init__(self, partitions: int):
        self.partitions = partitions
        self._known: dict[str, int] = {}

    def __call__(self, service: str) -> int:
        owner = self._known.get(service)
        if owner is None:
            if len(self._known) >= self.MEMO_LIMIT:
                self._known.clear()
            owner = self._known[service] = owner_of(service, self.partitions)
        return owner

    def __len__(self) -> int:
        return len(self._known)


class Forwarded(msgspec.Struct, frozen=True):
    """The measurements of one forwarded record, as columns (msgpack; numbers as little-endian
    arrays): the owner reads them without decoding JSON or making an object per measurement.
    ``keys`` are the distinct series (service, metric, values of the label keys); ``series`` each
    measurement's index into them; ``positions`` each one's source position (offset * 2**24 + index
    in its record's array); ``value`` NaN and ``ok``/``outcome`` -1 where absent."""

    keys: list[tuple[str, str, list[str]]]
    series: bytes
    ts: bytes
    value: bytes
    ok: bytes
    outcome: bytes
    positions: bytes
    ids: list[str | None] | None = None
    written: float | None = None  # when the newest of its source records was written (alignment)
    v: int = FORMAT_VERSION

    def columns(self) -> dict[str, np.ndarray]:
        return {
            "series": np.frombuffer(self.series, dtype="<i4").astype(np.int64),
            "ts": np.frombuffer(self.ts, dtype="<f8"),
            "value": np.frombuffer(self.value, dtype="<f8"),
            "ok": np.frombuffer(self.ok, dtype=np.int8),
            "outcome": np.frombuffer(self.outcome, dtype=np.int8),
            "positions": np.frombuffer(self.positions, dtype="<i8"),
        }


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(Forwarded)


def encode_forwarded(keys: list[tuple[str, str, list[str]]], series: np.ndarray, ts: np.ndarray, value: np.ndarray,
                     ok: np.ndarray, outcome: np.ndarray, positions: np.ndarray, ids: list | None,
                     written: float | None) -> bytes:
    return _ENCODER.encode(Forwarded(
        keys, series.astype("<i4").tobytes(), ts.astype("<f8").tobytes(), value.astype("<f8").tobytes(),
        ok.astype(np.int8).tobytes(), outcome.astype(np.int8).tobytes(), positions.astype("<i8").tobytes(), ids,
        written))


def decode_versioned(decoder: msgspec.msgpack.Decoder, value: bytes | None, kind: str, version: int):
    """One of slostream's own records (a ``v`` field); ValueError when this version cannot read it."""
    try:
        decoded = decoder.decode(value or b"")
    except msgspec.DecodeError as exc:
        raise ValueError(f"not a slostream {kind} record: {exc}") from None
    if decoded.v != version:
        raise ValueError(f"{kind} record format {decoded.v} is not {version}")
    return decoded


def decode_forwarded(value: bytes | None) -> Forwarded:
    """Raises ValueError when the record is not a forward this version of slostream can read."""
    forwarded = decode_versioned(_DECODER, value, "forwarded", FORMAT_VERSION)
    n = len(forwarded.ts) // 8
    sizes = (len(forwarded.series) // 4, len(forwarded.value) // 8, len(forwarded.ok), len(forwarded.outcome),
             len(forwarded.positions) // 8)
    if any(size != n for size in sizes) or (forwarded.ids is not None and len(forwarded.ids) != n):
        raise ValueError("forwarded record columns differ in length")
    # What a worker forwards was checked when it was read; a record that only claims to be a forward
    # is held to the same bounds, so it cannot make a series, a window or an output out of range.
    columns = forwarded.columns()
    series, ts, values = columns["series"], columns["ts"], columns["value"]
    if n and (series.min() < 0 or series.max() >= len(forwarded.keys)):
        raise ValueError("forwarded record names a series it does not hold")
    if not ((ts > 0) & (ts < MAX_PLAUSIBLE_TS)).all() or (np.abs(values) > MAX_ABS_VALUE).any():
        raise ValueError("forwarded record holds a time or a value out of range")
    if not all(((flags >= -1) & (flags <= 1)).all() for flags in (columns["ok"], columns["outcome"])):
        raise ValueError("forwarded record holds an ok or an outcome that is not -1, 0 or 1")
    if forwarded.written is not None and forwarded.written != forwarded.written:
        raise ValueError("forwarded record's write time is NaN")
    return forwarded


class _Positions(msgspec.Struct):
    """A forward's positions alone: the rest of it is skipped unread."""

    positions: bytes = b""


_POSITIONS = msgspec.msgpack.Decoder(_Positions)


def last_source_offset(value: bytes | None) -> int | None:
    """The newest offset of its source partition that a forward names (None: unreadable or empty)."""
    try:
        positions = np.frombuffer(_POSITIONS.decode(value or b"").positions, dtype="<i8")
    except (msgspec.DecodeError, ValueError):
        return None
    return int(positions.max()) >> 24 if positions.size else None


def header_partition(headers, name: str) -> int | None:
    """The partition named by header ``name`` (the source of a forward or of progress), else None."""
    for key, value in headers or ():
        if key == name:
            # A partition number (at most 1024 partitions); anything else, a null value included, is none.
            return int(value) if isinstance(value, bytes) and value.isdigit() and len(value) <= 4 else None
    return None


def forward_header(partition: int) -> tuple[str, bytes]:
    return FORWARD_HEADER, str(partition).encode()
